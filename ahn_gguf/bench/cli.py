"""`ahn-gguf bench <what>`: one sub-subcommand per benchmark.

Each benchmark module exposes add_arguments(parser), run(args) -> dict and main(args);
its heavy imports (llama_cpp, torch) happen only when its subcommand runs, so
`ahn-gguf --help` stays fast. `bench all` (this module's own add_arguments / main) runs
op, runtime and formulas one after the other, each with its defaults (`bench serve` needs
llama.cpp's programs, `ahn-gguf build --tools`, and runs on its own).
"""

from __future__ import annotations

import argparse
import importlib

# (subcommand, module, one-line help)
BENCHMARKS = [
    ("op", "ahn_gguf.bench.op", "the native AHN memory op: kernels vs PyTorch vs memory bandwidth"),
    ("runtime", "ahn_gguf.bench.runtime",
     "the whole model in llama.cpp: stock full attention vs sinks + window (+ AHN fused / composed) vs context"),
    ("formulas", "ahn_gguf.bench.formulas", "the paper's FLOP and cache formulas next to what the runtime allocates"),
    ("serve", "ahn_gguf.bench.serve",
     "llama.cpp's llama-server, stock vs AHN: 1 / 4 / 16 concurrent conversations, throughput and memory per conversation"),
    ("memory", "ahn_gguf.bench.memory",
     "an F16 AHN memory against an F32 one at a large window: the bytes and the memory step's cost"),
    ("gpu", "ahn_gguf.bench.gpu",
     "the paper's setting on one NVIDIA GPU (no network): --pack here, --from-pack there; --cpu-check tests it here"),
    ("all", "ahn_gguf.bench.cli", "op + runtime + formulas, each with its defaults (reports in --out)"),
]

# the benchmarks `bench all` runs, in order
ALL = ("op", "runtime", "formulas")


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


# --- `bench all` ---------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--quick", action="store_true", help="the quick variant of each (runtime --quick, op --quick, "
                   "formulas with the 3B runtime check only)")
    p.add_argument("--out", default="reports", help="folder of the reports (default reports/)")
    p.add_argument("--threads", type=int, default=None, help="threads for all three (default: each one's own default)")


def main(args: argparse.Namespace) -> int:
    for name in ALL:
        mod = importlib.import_module(f"ahn_gguf.bench.{name}")
        sub = mod.default_args(out=args.out)
        if args.threads is not None:
            sub.threads = args.threads
        if name in ("op", "runtime"):
            sub.quick = args.quick
        elif args.quick:
            sub.runtime_models = "Qwen2.5-3B"
        print(f"=== ahn-gguf bench {name}{' --quick' if args.quick and name != 'formulas' else ''} ===", flush=True)
        rc = mod.main(sub)
        if rc:
            return rc
    return 0
