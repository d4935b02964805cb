"""`ahn-gguf bench memory`: an F16 AHN memory against an F32 one, in one process.

`ahn.memory_type = f16` (llama.cpp patches 0014-0015) stores the recurrent states and the per-token
write gates in F16: half the bytes the AHN costs beside the window. What it costs in time is the
question here. Three modes of the same AHN GGUF (SmolLM2-135M Q4_1 + its AHN-GDN, as `bench runtime`
builds it), the same prompt and checkpoints as `bench runtime`'s protocol (one pass per mode up to the
largest context, prefill in n_batch chunks, k greedy decode steps timed one by one at each
checkpoint, the median kept; passes interleaved and repeated, the best kept):

  window    the memory switched off (`ahn.memory_enabled = false`): sinks + window only
  ahn-f32   sinks + window + AHN, F32 memory (`ahn_memory_type="f32"`)
  ahn-f16   the same with an F16 memory (`ahn_memory_type="f16"`)

Derived at each checkpoint: the memory step's cost per mode (its time minus the window-only mode's),
the F16 / F32 ratio of that cost and of the whole step, and the bytes each memory holds (from
`Llama.ahn_memory()`). Large windows are where a per-cell cost of the F16 path would show: the
gate store grows with W, the states do not.

The F16 path converts each state in and out per ubatch (O(state)); before patch 0015 it also cast a
layer's whole gate store to F32 per ubatch (O(window cells)). To measure a build from before, point
`LLAMA_CPP_LIB_PATH` at its library folder: the report records which library ran.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import UsageError
from . import parsed_defaults
from .models import DEFAULT_SINKS, smollm2_model
from .runtime_measure import WINDOW, Mode, busy_warning, checkpoints_for, model_bytes, prompt_tokens, run_pass

AHN_F32, AHN_F16 = "ahn-f32", "ahn-f16"
MIB = 1024 * 1024


def memory_modes(flash_attn: bool) -> list[Mode]:
    fa = " (FA on)" if flash_attn else " (FA off)"
    return [
        Mode(WINDOW, "sinks + window only" + fa, ahn_file=True, memory=False, flash_attn=flash_attn),
        Mode(AHN_F32, "sinks + window + AHN, F32 memory" + fa, ahn_file=True, flash_attn=flash_attn, memory_type="f32"),
        Mode(AHN_F16, "sinks + window + AHN, F16 memory" + fa, ahn_file=True, flash_attn=flash_attn, memory_type="f16"),
    ]


def _best(recs: list[dict]) -> dict:
    """One checkpoint over passes: the fastest prefill and the lowest decode median."""
    pre = min(r["prefill_s"] for r in recs)
    medians = [statistics.median(r["decode_step_s"]) for r in recs]
    r0 = recs[0]
    mem = r0["ahn_memory"]
    return {"prefill_s": pre, "prefill_tok_s": r0["prefill_tokens"] / pre, "decode_ms": 1e3 * min(medians),
            "decode_runs_spread": max(medians) / min(medians) - 1 if len(medians) > 1 else None,
            "memory_bytes": mem["state_bytes"] + mem["gate_bytes"], "state_bytes": mem["state_bytes"],
            "gate_bytes": mem["gate_bytes"], "live_bytes": r0["cache_live_bytes"]}


def summarise(passes: dict[str, list[list[dict]]]) -> list[dict]:
    """Per checkpoint: each mode's best, the memory step's cost and the F16 / F32 ratios."""
    rows = []
    Ls = [r["L"] for r in passes[WINDOW][0]]
    for i, L in enumerate(Ls):
        row: dict[str, Any] = {"L": L}
        for m, ps in passes.items():
            row[m] = _best([p[i] for p in ps])
        w = row[WINDOW]
        for m in (AHN_F32, AHN_F16):
            row[m]["memory_decode_ms"] = row[m]["decode_ms"] - w["decode_ms"]
            row[m]["memory_prefill_s"] = row[m]["prefill_s"] - w["prefill_s"]
        a, b = row[AHN_F32], row[AHN_F16]
        row["f16_over_f32_decode"] = b["decode_ms"] / a["decode_ms"]
        row["f16_over_f32_prefill"] = b["prefill_s"] / a["prefill_s"]
        row["f16_over_f32_memory_bytes"] = b["memory_bytes"] / a["memory_bytes"] if a["memory_bytes"] else None
        rows.append(row)
    return rows


def run(args: argparse.Namespace, log: Callable[[str], None] = print) -> dict:
    import llama_cpp

    t0 = time.perf_counter()
    busy = busy_warning(args.threads)
    if busy:
        log(f"[bench] WARNING: {busy}")
    model = smollm2_model(args.window, args.sinks, log)
    mb = model_bytes(model.ahn_path)
    cps = checkpoints_for(args.window, [float(x) for x in str(args.multiples).split(",") if x.strip()])
    n_ctx = 256 * -(-(max(cps) + args.decode_tokens * (len(cps) + 1) + args.n_batch) // 256)
    prompt = prompt_tokens(max(cps) + args.n_batch, mb.n_vocab)
    ms = memory_modes(args.flash_attn == "on")
    passes: dict[str, list[list[dict]]] = {m.name: [] for m in ms}
    for rep in range(args.repeats):
        for m in ms:
            t1 = time.perf_counter()
            recs = run_pass(model, m, prompt, cps, n_ctx=n_ctx, n_batch=args.n_batch, n_decode=args.decode_tokens,
                            threads=args.threads, mbytes=mb)
            passes[m.name].append(recs)
            last = recs[-1]
            log(f"[bench] {m.name:8s} pass {rep + 1}/{args.repeats}: L<={cps[-1]} in {time.perf_counter() - t1:6.1f} s; "
                f"at L={last['L']}: decode {1e3 * statistics.median(last['decode_step_s']):6.2f} ms/token")
    lib = os.environ.get("LLAMA_CPP_LIB_PATH")
    return {
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "llama_cpp": getattr(llama_cpp, "__version__", "?"),
                    "library": lib or "the installed llama_cpp package's own", "load_avg_at_start": busy},
        "settings": {k: v for k, v in vars(args).items() if k != "func" and not callable(v)},
        "model": {"name": model.name, "description": model.description, "notes": model.notes,
                  "ahn_path": str(model.ahn_path), "window": args.window, "sinks": args.sinks, "n_ctx": n_ctx},
        "modes": {m.name: m.label for m in ms},
        "points": summarise(passes),
        "passes": passes,
        "seconds": time.perf_counter() - t0,
    }


def markdown(result: dict) -> str:
    s, mo = result["settings"], result["model"]
    lines = ["# An F16 AHN memory against an F32 one: bytes and time", "",
             f"Model: {mo['description']}, W = {mo['window']}, S = {mo['sinks']}; {s['threads']} thread(s), "
             f"n_batch = n_ubatch = {s['n_batch']}, F16 K/V, flash attention {s['flash_attn']}, "
             f"{s['decode_tokens']} decode steps per point, {s['repeats']} interleaved pass(es) per mode (best kept). "
             f"Library: {result['machine']['library']} (Python bindings: llama_cpp {result['machine']['llama_cpp']}).", ""]
    if result["machine"].get("load_avg_at_start"):
        lines += [f"**Warning**: {result['machine']['load_avg_at_start']}.", ""]
    lines += ["| L | memory F32 / F16 (MiB) | decode ms: window / F32 / F16 | memory step, decode ms: F32 / F16 | "
              "F16 / F32 decode | prefill tok/s: window / F32 / F16 | F16 / F32 prefill time |",
              "| ---: | --- | --- | --- | ---: | --- | ---: |"]
    for r in result["points"]:
        w, a, b = r[WINDOW], r[AHN_F32], r[AHN_F16]
        lines.append(f"| {r['L']} | {a['memory_bytes'] / MIB:.2f} / {b['memory_bytes'] / MIB:.2f} | "
                     f"{w['decode_ms']:.2f} / {a['decode_ms']:.2f} / {b['decode_ms']:.2f} | "
                     f"{a['memory_decode_ms']:+.2f} / {b['memory_decode_ms']:+.2f} | {r['f16_over_f32_decode']:.3f} | "
                     f"{w['prefill_tok_s']:.0f} / {a['prefill_tok_s']:.0f} / {b['prefill_tok_s']:.0f} | "
                     f"{r['f16_over_f32_prefill']:.3f} |")
    lines += ["", "Memory: the AHN's states + write gates (`Llama.ahn_memory()`: state_bytes + gate_bytes). "
              "Memory step: the mode's time minus the window-only mode's at the same point (noisy: a difference "
              "of two timings). Decode: the median of the timed steps, the lowest over passes.", "",
              f"Command: `{result.get('command', 'ahn-gguf bench memory')}`", ""]
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--window", type=int, default=4096, help="window W (default 4096: the gate store grows with W)")
    p.add_argument("--sinks", type=int, default=DEFAULT_SINKS, help=f"sink tokens S (default {DEFAULT_SINKS})")
    p.add_argument("--multiples", default="0.5,1.5,2", help="context lengths as multiples of W (default 0.5,1.5,2)")
    p.add_argument("--decode-tokens", type=int, default=16, help="greedy decode steps timed at each point (default 16)")
    p.add_argument("--n-batch", type=int, default=512, help="n_batch = n_ubatch (default 512)")
    p.add_argument("--threads", type=int, default=1, help="threads (default 1)")
    p.add_argument("--repeats", type=int, default=2, help="interleaved passes per mode (default 2; best kept)")
    p.add_argument("--flash-attn", choices=["on", "off"], default="on", help="flash attention (default on)")
    p.add_argument("--out", default="reports", help="folder of the report (default reports/)")
    p.add_argument("--name", default="bench-memory", help="file stem (default bench-memory)")


def default_args(**overrides: Any) -> argparse.Namespace:
    """The command line's defaults, for calling run() from Python."""
    return parsed_defaults(add_arguments, "memory", overrides)


def main(args: argparse.Namespace) -> int:
    import shlex
    import sys

    from ..atomic import write_text

    if min(args.threads, args.decode_tokens, args.repeats, args.window, args.n_batch) < 1 or args.sinks < 0:
        raise UsageError("--threads, --decode-tokens, --repeats, --window and --n-batch must be >= 1, --sinks >= 0")
    result = run(args)
    argv = sys.argv[1:]
    result["command"] = shlex.join(["ahn-gguf", *argv[argv.index("bench"):]]) if "bench" in argv else \
        "ahn-gguf bench memory (called from Python)"
    if os.environ.get("LLAMA_CPP_LIB_PATH"):
        result["command"] = f"LLAMA_CPP_LIB_PATH={shlex.quote(os.environ['LLAMA_CPP_LIB_PATH'])} " + result["command"]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    md = markdown(result)
    write_text(out / f"{args.name}.json", json.dumps(result, indent=1) + "\n")
    write_text(out / f"{args.name}.md", md)
    print(md)
    print(f"wrote {out / (args.name + '.md')}, {out / (args.name + '.json')}")
    return 0
