"""`ahn-gguf bench <what>`: one sub-subcommand per benchmark.

Each benchmark module exposes add_arguments(parser), run(args) -> dict and main(args);
it is imported only when its subcommand runs, so `ahn-gguf --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib

# (subcommand, module, one-line help)
BENCHMARKS = [
    ("op", "ahn_gguf.bench.op", "the native AHN memory op: kernels vs PyTorch vs memory bandwidth"),
]


def _lazy_main(module: str):
    def main(args: argparse.Namespace) -> int:
        return importlib.import_module(module).main(args)
    return main


def register(subparsers, name: str = "bench", help_text: str = "benchmarks") -> None:
    parser = subparsers.add_parser(name, help=help_text, description=help_text)
    sub = parser.add_subparsers(dest="bench_command", metavar="BENCHMARK")
    for cmd, module, text in BENCHMARKS:
        p = sub.add_parser(cmd, help=text, description=text)
        importlib.import_module(module).add_arguments(p)
        p.set_defaults(func=_lazy_main(module))
    parser.set_defaults(func=lambda args: parser.print_help() or 2)
