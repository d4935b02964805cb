"""`ahn-gguf bench runtime`: the whole model in llama.cpp, stock full attention against AHN.

One base GGUF, five ways, in one process (so that the ratios are fair):

  stock        the plain base GGUF (arch llama / qwen2: the patched build's unchanged path),
               flash attention off
  stock-fa     the same, flash attention on; "stock" in the ratios is the faster of the two
               at each point
  window       the AHN GGUF with its memory switched off (`{arch}.ahn.memory_enabled=false`):
               S sinks + W window only
  ahn          sinks + window + AHN memory, the fused GGML_OP_AHN_MEMORY
  ahn-composed the same memory step built from stock ggml ops (LLAMA_AHN_COMPOSED=1)

Protocol, per mode: ONE pass up to the largest context. The prompt is prefilled in n_batch
chunks; the cumulative prefill time is recorded at each checkpoint L, so the prefill rate at L
is L / time-to-L (exact for a causal model: the first L tokens cost the same whichever context
follows). At each checkpoint k greedy tokens are decoded, each timed alone (llm.eval of one
token, logits of the last position only), then the prefill continues. Checkpoints are context
lengths: the tokens decoded at earlier checkpoints are part of the context (they are prefilled
tokens' equals for every later step), and the prefill rate counts only prefilled tokens and time.

Repetition: the decode rate at a point is the median of its k steps (best and spread kept);
the short points (inside the window) are re-run `--short-repeats` times and the best kept,
because the "<= 5% slower inside the window" target is the one that noise can flip.
`--repeats` re-runs everything (best kept, spread reported).

Decode bandwidth bound at each point: the bytes one decode step must read (weights used per
token + K/V of the live tokens that attention reads + AHN states read and written) divided by
this machine's memory bandwidth, measured in the same run (`ahn-gguf bench op`'s STREAM-like
test); the fraction of that bound achieved is reported.

This module is the command line and the run that ties the parts together; the parts live in
`models` (the models measured, built once into the cache), `runtime_measure` (the passes, the
summaries and the ratios) and `runtime_report` (markdown, plots, the files written).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import parsed_defaults
from .models import DEFAULT_SINKS, MODEL_DEFAULTS, prepare_models
from .runtime_measure import AHN, COMPOSED, DEFAULT_MULTIPLES, STOCK, STOCK_FA, WINDOW, busy_warning, compare, run_model
from .runtime_report import markdown, write_report

# --- the run ----------------------------------------------------------------------------------


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    import llama_cpp

    from ahn_gguf.bench import op

    t0 = time.perf_counter()
    busy = busy_warning(args.threads)
    if busy:
        log(f"[bench] WARNING: {busy}")
    models = prepare_models(args, log)
    bw = op.measure_bandwidth(args.threads, args.quick)
    log(f"[bench] memory bandwidth: {bw['bound']:.1f} GB/s (in-place scale {bw['inplace_scale']:.1f}, "
        f"copy {bw['copy']:.1f}, triad {bw['triad']:.1f})")
    result: dict = {
        "machine": {"platform": platform.platform(), "processor": op.cpu_model(), "cpus": os.cpu_count(),
                    "llama_cpp": getattr(llama_cpp, "__version__", "?"),
                    "load_avg_at_start": os.getloadavg()},
        "settings": {k: v for k, v in vars(args).items() if k not in ("func",) and not callable(v)},
        "bandwidth_gbs": bw,
        "busy_warning": busy,
        "models": [],
    }
    for model in models:
        result["models"].append(run_model(model, args, bw["bound"], log))
    bw2 = op.measure_bandwidth(args.threads, True)
    result["bandwidth_gbs_at_end"] = bw2
    result["machine"]["load_avg_at_end"] = os.getloadavg()
    result["seconds"] = time.perf_counter() - t0
    return result


# --- command line --------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="smollm2-135m,qwen2.5-0.5b", help=f"comma-separated, from: {', '.join(MODEL_DEFAULTS)}")
    p.add_argument("--window", type=int, default=None,
                   help="window W for every model (default per model: " +
                   ", ".join(f"{k} {v['window']} ({v['quick_window']} with --quick)" for k, v in MODEL_DEFAULTS.items()) + ")")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help=f"sink tokens S (default {DEFAULT_SINKS})")
    p.add_argument("--multiples", default=DEFAULT_MULTIPLES, help=f"context lengths as multiples of W (default {DEFAULT_MULTIPLES})")
    p.add_argument("--decode-tokens", type=int, default=16, help="greedy decode steps timed at each point (default 16)")
    p.add_argument("--n-batch", type=int, default=512, help="n_batch = n_ubatch (default 512)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="threads (default: all CPUs)")
    p.add_argument("--repeats", type=int, default=1, help="passes over all points per mode (default 1; best kept)")
    p.add_argument("--short-repeats", type=int, default=3, help="passes over the points inside the window (default 3)")
    p.add_argument("--modes", default=",".join([STOCK, STOCK_FA, WINDOW, AHN, COMPOSED]), help="modes to run (default: all five)")
    p.add_argument("--ahn-flash-attn", choices=["on", "off"], default="on",
                   help="flash attention in the three AHN-file modes (default on)")
    p.add_argument("--qwen-type", default="q4_k_m", help="quantization of the Qwen2.5-0.5B-shaped model (default q4_k_m)")
    p.add_argument("--stock", default=None, help="your own base GGUF (with --ahn and --window instead of --models)")
    p.add_argument("--ahn", default=None, help="the same base with an AHN attached")
    p.add_argument("--quick", action="store_true",
                   help="small run (W = 128, k = 8, short points twice): validates the pipeline in minutes")
    p.add_argument("--out", default="reports", help="folder of the report (default reports/)")
    p.add_argument("--name", default=None, help="file stem (default bench-runtime, bench-runtime-quick with --quick)")
    p.add_argument("--from-json", default=None, metavar="JSON",
                   help="measure nothing: recompute the ratios and targets from a previous run's JSON and rewrite its "
                        "report (markdown, plots) into --out")


def default_args(**overrides: Any) -> argparse.Namespace:
    """The command line's defaults, for calling run() from Python."""
    return parsed_defaults(add_arguments, "runtime", overrides)


def _apply_quick(args: argparse.Namespace, argv_given: set[str] | None = None) -> None:
    if args.quick:
        if args.decode_tokens == 16:
            args.decode_tokens = 8
        if args.short_repeats == 3:
            args.short_repeats = 2


def _command_line(args: argparse.Namespace) -> str:
    import shlex
    import sys

    argv = sys.argv[1:]
    if "bench" in argv:
        return shlex.join(["ahn-gguf", *argv[argv.index("bench"):]])
    return "ahn-gguf bench runtime" + (" --quick" if args.quick else "") + " (called from Python)"


def rerender(path: str | Path, out_dir: Path, stem: str | None = None) -> tuple[Path, Path]:
    """Rewrite a report from its JSON (the measured points are all in it)."""
    path = Path(path)
    result = json.loads(path.read_text())
    for mr in result["models"]:
        mr.update(compare(mr))
    return write_report(result, out_dir, stem or path.stem)


def main(args: argparse.Namespace) -> int:
    if args.from_json:
        md, js = rerender(args.from_json, Path(args.out), args.name)
        print(f"wrote {md}, {js}")
        return 0
    if args.threads < 1 or args.decode_tokens < 1 or args.repeats < 1:
        raise UsageError("--threads, --decode-tokens and --repeats must be >= 1")
    _apply_quick(args)
    result = run(args)
    result["command"] = _command_line(args)
    stem = args.name or ("bench-runtime-quick" if args.quick else "bench-runtime")
    md, js = write_report(result, Path(args.out), stem)
    print(markdown(result, result.get("plots")))
    print(f"wrote {md}, {js}" + "".join(f", {Path(args.out) / f}" for f in result.get("plots", {}).values()))
    return 0
