"""`ahn-gguf` command line: one subcommand per user task.

Each subcommand lives in its own module, which exposes `register(subparsers)`; the
module is imported only when listed here, so `ahn-gguf --help` stays fast and a
missing optional dependency (torch) only affects the commands that need it.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from ahn_gguf.errors import AHNError

# (subcommand, module, one-line help) — the module's register() adds the parser
SUBCOMMANDS = [
    ("build", "ahn_gguf.build.llama_cpp", "build and install the patched llama-cpp-python (cached)"),
    ("convert", "ahn_gguf.convert.cli", "Hugging Face base + AHN checkpoint -> GGUF"),
    ("attach", "ahn_gguf.convert.cli", "merge an AHN sidecar GGUF into a base GGUF"),
    ("run", "ahn_gguf.cli.run", "generate from a prompt (default: the embedded SmolLM2 + AHN)"),
    ("chat", "ahn_gguf.cli.chat", "interactive chat in the terminal"),
    ("serve", "ahn_gguf.cli.serve", "OpenAI-compatible server"),
    ("distill", "ahn_gguf.distill.cli", "self-distil an AHN into a base model"),
    ("eval", "ahn_gguf.evaluate", "long-context perplexity and retrieval evaluation"),
    ("bench", "ahn_gguf.bench.cli", "benchmarks (op, runtime)"),
]


# the file system's answers to a path the user gave: their message names the path
USER_OS_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError, NotADirectoryError)
# optional dependencies, and how to get them (pyproject.toml [project.optional-dependencies])
OPTIONAL_MODULES = {
    "torch": "pip install 'ahn-gguf[torch]' (convert, distill, eval --engine reference)",
    "safetensors": "pip install 'ahn-gguf[torch]'",
    "transformers": "pip install 'ahn-gguf[torch]'",
    "uvicorn": "pip install 'ahn-gguf[server]' (serve)",
    "fastapi": "pip install 'ahn-gguf[server]' (serve)",
    "matplotlib": "pip install matplotlib (the plots of eval and bench)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ahn-gguf",
        description="Artificial Hippocampus Networks for llama.cpp / GGUF: constant-memory long context.",
    )
    from ahn_gguf import __version__

    parser.add_argument("--version", action="version", version=f"ahn-gguf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    registered = set()
    for name, module, help_text in SUBCOMMANDS:
        mod = importlib.import_module(module)
        if (module, name) in registered:
            continue
        mod.register(sub, name=name, help_text=help_text)
        registered.add((module, name))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (AHNError, *USER_OS_ERRORS) as e:
        # bad input and environment problems carry their own message: no traceback, unless asked;
        # anything else is a bug of ours and keeps its traceback
        if os.environ.get("AHN_GGUF_DEBUG"):
            raise
        print(f"ahn-gguf {args.command}: error: {e}", file=sys.stderr)
        print("(set AHN_GGUF_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1
    except ModuleNotFoundError as e:
        if e.name not in OPTIONAL_MODULES or os.environ.get("AHN_GGUF_DEBUG"):
            raise
        print(f"ahn-gguf {args.command}: error: this command needs {e.name}, an optional dependency: "
              f"{OPTIONAL_MODULES[e.name]}", file=sys.stderr)
        return 1

