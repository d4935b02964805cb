"""The measurement of `ahn-gguf bench runtime`: the five modes, the passes, what is derived from them.

What is here: the modes (`Mode`, `modes`, the names STOCK .. COMPOSED), the bytes a decode step
reads (`ModelBytes`, `model_bytes`, from the GGUF's tensor table), one timed pass of a mode
through the checkpoints (`run_pass`: contexts, prefill and decode timing, cache bytes read back
from the runtime), the summaries over passes (`summarise`: best runs, spreads, the memory
formula, the bandwidth bound) and the ratios and targets between modes (`compare`), and
`run_model`, which does all of it for one model. The protocol is described in `runtime`'s
docstring.

Separate from the models (`models`: built once, cached) and from the report (`runtime_report`:
formatting only): everything here works on measured numbers, and `compare` is also what a
report re-rendered from a previous run's JSON recomputes.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ahn_gguf import constants as C

from ..errors import UsageError
from .models import BenchModel

# --- modes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    ahn_file: bool          # runs the AHN GGUF (else the stock base GGUF)
    memory: bool = True     # AHN memory enabled (AHN file only)
    composed: bool = False  # LLAMA_AHN_COMPOSED=1
    flash_attn: bool = False
    memory_type: str | None = None  # ahn_memory_type: "f32" / "f16" (None: the file's)


STOCK, STOCK_FA, WINDOW, AHN, COMPOSED = "stock", "stock-fa", "window", "ahn", "ahn-composed"


def modes(ahn_flash_attn: bool) -> list[Mode]:
    fa = " (FA on)" if ahn_flash_attn else " (FA off)"
    return [
        Mode(STOCK, "stock full attention (FA off)", ahn_file=False, flash_attn=False),
        Mode(STOCK_FA, "stock full attention (FA on)", ahn_file=False, flash_attn=True),
        Mode(WINDOW, "sinks + window only" + fa, ahn_file=True, memory=False, flash_attn=ahn_flash_attn),
        Mode(AHN, "sinks + window + AHN, fused op" + fa, ahn_file=True, flash_attn=ahn_flash_attn),
        Mode(COMPOSED, "sinks + window + AHN, stock-op composition" + fa, ahn_file=True, composed=True,
             flash_attn=ahn_flash_attn),
    ]


# --- shapes and bytes -------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelBytes:
    """What a decode step reads, from the GGUF's own tensor table and metadata."""

    n_layer: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_vocab: int
    base_weight_bytes: int     # base weights a decode step reads (token_embd counted once if tied = output)
    ahn_weight_bytes: int      # AHN weights (read when the memory runs)
    file_bytes: int

    @property
    def kv_bytes_per_cell_f16(self) -> int:
        return self.n_layer * 2 * self.n_head_kv * self.head_dim * 2


def model_bytes(path: Path) -> ModelBytes:
    from ahn_gguf.gguf_io.contents import read_gguf

    g = read_gguf(path)
    arch = g.arch
    names = {t.name for t in g.tensors}
    tied = "output.weight" not in names
    base = ahn = 0
    for t in g.tensors:
        if ".ahn_" in t.name:
            ahn += t.nbytes
        elif t.name == "token_embd.weight" and not tied:
            base += t.nbytes // t.shape[0]  # untied: one row is read (the lookup)
        else:
            base += t.nbytes

    def key(k, default=None):
        v = g.get(f"{arch}.{k}", default)
        return int(v[0] if isinstance(v, list) else v) if v is not None else None

    n_embd, n_head = key("embedding_length"), key("attention.head_count")
    n_vocab = next(t.shape[0] for t in g.tensors if t.name == "token_embd.weight")
    return ModelBytes(key("block_count"), n_head, key("attention.head_count_kv", n_head),
                      key("attention.key_length", n_embd // n_head), n_vocab, base, ahn, path.stat().st_size)


# --- one pass -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _env(name: str, value: str | None):
    old = os.environ.get(name)
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def _open(model: BenchModel, mode: Mode, n_ctx: int, n_batch: int, threads: int):
    from ahn_gguf.runtime import Llama

    kw: dict[str, Any] = dict(n_ctx=n_ctx, n_batch=n_batch, n_ubatch=n_batch, n_threads=threads,
                              n_threads_batch=threads, logits_all=False, flash_attn=mode.flash_attn,
                              verbose=False, seed=0)
    if not mode.ahn_file:
        return Llama(str(model.stock_path), **kw)
    kw.update(ahn_window=model.window, ahn_sinks=model.sinks)
    if mode.memory_type:
        kw["ahn_memory_type"] = mode.memory_type
    if not mode.memory:
        from ahn_gguf.gguf_io.check import check_gguf_file

        arch = check_gguf_file(str(model.ahn_path)).arch
        kw["kv_overrides"] = {C.KEY_MEMORY_ENABLED.format(arch=arch): False}
    return Llama(str(model.ahn_path), **kw)


def _last_argmax(llm, n_vocab: int) -> int:
    ptr = llm._ctx.get_logits_ith(-1)
    return int(np.ctypeslib.as_array(ptr, shape=(n_vocab,)).argmax())


def run_pass(model: BenchModel, mode: Mode, prompt: list[int], checkpoints: list[int], *, n_ctx: int, n_batch: int,
             n_decode: int, threads: int, mbytes: ModelBytes) -> list[dict]:
    """One pass of `mode` through all `checkpoints` (context lengths); one record per checkpoint."""
    import llama_cpp

    with _env("LLAMA_AHN_COMPOSED", "1" if mode.composed else None):
        llm = _open(model, mode, n_ctx, n_batch, threads)
        try:
            n_vocab = llm.n_vocab()
            # warm-up: page the weights in, build and allocate the graphs of both shapes
            llm.reset()
            llm.eval(prompt[:n_batch])
            llm.eval([_last_argmax(llm, n_vocab)])
            llm.reset()

            out = []
            pos = 0                     # prompt tokens consumed
            prefill_s = 0.0
            for L in checkpoints:
                while llm.n_tokens < L:
                    chunk = prompt[pos: pos + min(n_batch, L - llm.n_tokens)]
                    if not chunk:
                        raise UsageError(f"prompt too short for checkpoint {L}")
                    t0 = time.perf_counter()
                    llm.eval(chunk)
                    prefill_s += time.perf_counter() - t0
                    pos += len(chunk)
                rec = {"L": L, "prefill_tokens": pos, "prefill_s": prefill_s}
                rec.update(_cache_record(llm, mode, L, mbytes))
                steps = []
                tok = _last_argmax(llm, n_vocab)
                for _ in range(n_decode):
                    t0 = time.perf_counter()
                    llm.eval([tok])
                    steps.append(time.perf_counter() - t0)
                    tok = _last_argmax(llm, n_vocab)
                rec["decode_step_s"] = steps
                rec["state_seq_bytes"] = int(llama_cpp.llama_state_seq_get_size(llm.ctx, 0))
                out.append(rec)
            return out
        finally:
            llm.close()


def _cache_record(llm, mode: Mode, L: int, mb: ModelBytes) -> dict:
    """Cache bytes at context L: live and allocated (stock: cells x per-cell; AHN: ahn_memory())."""
    import llama_cpp

    if not mode.ahn_file:
        per_cell = mb.kv_bytes_per_cell_f16
        n_ctx = int(llama_cpp.llama_n_ctx(llm.ctx))
        return {"cache_live_bytes": L * per_cell, "cache_alloc_bytes": n_ctx * per_cell,
                "cache_alloc_if_nctx_L_bytes": 256 * math.ceil(L / 256) * per_cell, "kv_bytes_per_cell": per_cell}
    mem = llm.ahn_memory()
    d = mem.as_dict()
    return {"cache_live_bytes": mem.total_bytes, "cache_alloc_bytes": mem.allocated_bytes,
            "kv_bytes_per_cell": mem.kv_bytes_per_cell, "ahn_memory": d}


# --- the benchmark ------------------------------------------------------------------------------


# context lengths as multiples of W (the task: from W/2 to >= 16 W)
DEFAULT_MULTIPLES = "0.5,1,1.5,2,3,4,6,8,12,16"


def checkpoints_for(window: int, multiples: list[float]) -> list[int]:
    return sorted({max(1, int(round(m * window))) for m in multiples})


def _ahn_formula_bytes(L: int, S: int, W: int, rec: dict) -> dict:
    """Live AHN memory by formula: tokens in the sinks and the window x (K/V + gates) per cell +
    one F32 d x d state per head and layer (docs/AHN-SPEC.md "Cost formulas", with the runtime's per-cell sizes)."""
    m = rec["ahn_memory"]
    cells = min(L, S) + min(max(L - S, 0), W)
    with_gates = cells * (m["kv_bytes_per_cell"] + m["gate_bytes_per_cell"]) + m["state_bytes_per_seq"]
    paper = cells * m["kv_bytes_per_cell"] + m["state_bytes_per_seq"]  # the paper's elements: K/V + state
    return {"formula_bytes": with_gates, "paper_formula_bytes": paper}


def _decode_bytes(mode: Mode, rec: dict, mb: ModelBytes) -> int:
    """Bytes one decode step must read at this point (weights + live K/V + AHN states r/w)."""
    if not mode.ahn_file:
        return mb.base_weight_bytes + rec["cache_live_bytes"]
    m = rec["ahn_memory"]
    kv = m["window_bytes"] + m["sink_bytes"]
    if not mode.memory:
        return mb.base_weight_bytes + kv
    return mb.base_weight_bytes + mb.ahn_weight_bytes + kv + 2 * m["state_bytes"]


def _quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    if len(xs) == 1:
        return xs[0]
    i = q * (len(xs) - 1)
    lo, hi = int(math.floor(i)), int(math.ceil(i))
    return xs[lo] + (xs[hi] - xs[lo]) * (i - lo)


def summarise(mode: Mode, passes: list[list[dict]], model: BenchModel, mb: ModelBytes, bandwidth: float) -> list[dict]:
    """Per checkpoint: best over passes, with spreads; derived rates, bounds and fractions."""
    by_L: dict[int, list[dict]] = {}
    for p in passes:
        for rec in p:
            by_L.setdefault(rec["L"], []).append(rec)
    points = []
    for L in sorted(by_L):
        recs = by_L[L]
        pre = [r["prefill_s"] for r in recs]
        best_rec = min(recs, key=lambda r: r["prefill_s"])
        medians = [statistics.median(r["decode_step_s"]) for r in recs]
        best_dec = recs[int(np.argmin(medians))]
        steps = best_dec["decode_step_s"]
        med = statistics.median(steps)
        pt = {
            "L": L,
            "runs": len(recs),
            "prefill_tokens": best_rec["prefill_tokens"],
            "prefill_s": best_rec["prefill_s"],
            "prefill_tok_s": best_rec["prefill_tokens"] / best_rec["prefill_s"],
            "prefill_spread": max(pre) / min(pre) - 1 if len(pre) > 1 else None,
            "decode_ms": 1e3 * med,
            "decode_tok_s": 1 / med,
            "decode_best_tok_s": 1 / min(steps),
            # p10..p90 of the k steps, relative to their median
            "decode_spread": (_quantile(steps, 0.9) - _quantile(steps, 0.1)) / med,
            "decode_runs_spread": max(medians) / min(medians) - 1 if len(medians) > 1 else None,
            "decode_step_s": steps,
            "cache_live_bytes": best_rec["cache_live_bytes"],
            "cache_alloc_bytes": best_rec["cache_alloc_bytes"],
            "state_seq_bytes": best_rec["state_seq_bytes"],
        }
        for k in ("cache_alloc_if_nctx_L_bytes", "ahn_memory", "kv_bytes_per_cell"):
            if k in best_rec:
                pt[k] = best_rec[k]
        if mode.ahn_file:
            pt.update(_ahn_formula_bytes(L, model.sinks, model.window, best_rec))
        pt["decode_bytes"] = _decode_bytes(mode, best_rec, mb)
        pt["decode_bound_tok_s"] = bandwidth * 1e9 / pt["decode_bytes"]
        pt["decode_bandwidth_fraction"] = pt["decode_tok_s"] / pt["decode_bound_tok_s"]
        points.append(pt)
    return points


def compare(result_model: dict) -> dict:
    """Ratios between modes at each L, and the targets of the issue, from the summarised points."""
    pts = {m: {p["L"]: p for p in result_model["modes"][m]["points"]} for m in result_model["modes"]}
    W, S = result_model["window"], result_model["sinks"]
    Ls = sorted(set.intersection(*(set(v) for v in pts.values())))
    rows = []
    for L in Ls:
        st = [pts[m][L] for m in (STOCK, STOCK_FA) if m in pts]
        best_pre = min(st, key=lambda p: p["prefill_s"])
        best_dec = min(st, key=lambda p: p["decode_ms"])
        r = {"L": L, "L_over_W": L / W,
             "stock_prefill_mode": STOCK if best_pre is pts[STOCK][L] else STOCK_FA,
             "stock_decode_mode": STOCK if best_dec is pts[STOCK][L] else STOCK_FA,
             "stock_prefill_tok_s": best_pre["prefill_tok_s"], "stock_decode_tok_s": best_dec["decode_tok_s"]}
        for m in (WINDOW, AHN, COMPOSED):
            if m in pts:
                r[f"{m}_prefill_vs_stock"] = pts[m][L]["prefill_tok_s"] / best_pre["prefill_tok_s"]
                r[f"{m}_decode_vs_stock"] = pts[m][L]["decode_tok_s"] / best_dec["decode_tok_s"]
        # the same flash-attention setting on both sides: what the AHN itself costs or saves
        same = STOCK_FA if result_model["modes"].get(AHN, {}).get("flash_attn") else STOCK
        if AHN in pts and same in pts:
            r["ahn_prefill_vs_stock_same_fa"] = pts[AHN][L]["prefill_tok_s"] / pts[same][L]["prefill_tok_s"]
            r["ahn_decode_vs_stock_same_fa"] = pts[AHN][L]["decode_tok_s"] / pts[same][L]["decode_tok_s"]
        if all(m in pts for m in (WINDOW, AHN, COMPOSED)):
            w, f, c = pts[WINDOW][L], pts[AHN][L], pts[COMPOSED][L]
            # memory-step cost: the AHN mode's time minus the window-only mode's time
            r["memory_prefill_s_fused"] = f["prefill_s"] - w["prefill_s"]
            r["memory_prefill_s_composed"] = c["prefill_s"] - w["prefill_s"]
            r["memory_decode_ms_fused"] = f["decode_ms"] - w["decode_ms"]
            r["memory_decode_ms_composed"] = c["decode_ms"] - w["decode_ms"]
            for what in ("prefill_s", "decode_ms"):
                fu, co = r[f"memory_{what}_fused"], r[f"memory_{what}_composed"]
                r[f"memory_{what.split('_')[0]}_composed_over_fused"] = co / fu if fu > 0 else None
        rows.append(r)

    t: dict[str, Any] = {}
    # cache: within 5% of the formula, flat beyond the window
    if AHN in pts:
        beyond = [pts[AHN][L] for L in Ls if L >= S + W]
        errs = [abs(p["cache_live_bytes"] / p["formula_bytes"] - 1) for p in pts[AHN].values()]
        paper_errs = [p["cache_live_bytes"] / p["paper_formula_bytes"] - 1 for p in pts[AHN].values()]
        lives = [p["cache_live_bytes"] for p in beyond]
        allocs = [p["cache_alloc_bytes"] for p in pts[AHN].values()]
        t["cache_max_rel_error_vs_formula"] = max(errs)
        t["cache_over_paper_formula"] = max(paper_errs)
        t["cache_live_flat_beyond_window"] = (max(lives) / min(lives) - 1) if lives else None
        t["cache_alloc_flat"] = max(allocs) / min(allocs) - 1
        t["cache_ok"] = t["cache_max_rel_error_vs_formula"] <= 0.05 and (not lives or t["cache_live_flat_beyond_window"] == 0)
        big = max(Ls)
        st_live = pts[STOCK][big]["cache_live_bytes"]
        t["cache_at_max_L"] = {"L": big, "stock_live_bytes": st_live, "ahn_live_bytes": pts[AHN][big]["cache_live_bytes"],
                               "ratio": st_live / pts[AHN][big]["cache_live_bytes"]}
    at8 = [r for r in rows if abs(r["L_over_W"] - 8) < 1e-9]
    if at8 and AHN in pts:
        r = at8[0]
        t["at_8W"] = {"L": r["L"], "prefill_speedup": r["ahn_prefill_vs_stock"], "decode_speedup": r["ahn_decode_vs_stock"]}
        # the ceiling of any memory: the same model with sinks + window only (no memory work at all)
        if WINDOW in pts:
            t["at_8W"]["window_prefill_speedup"] = r["window_prefill_vs_stock"]
            t["at_8W"]["window_decode_speedup"] = r["window_decode_vs_stock"]
        for what in ("prefill", "decode"):
            reach = [q["L"] for q in rows if q[f"ahn_{what}_vs_stock"] >= 2]
            t["at_8W"][f"{what}_2x_from_L"] = min(reach) if reach else None
        t["at_8W_ok"] = r["ahn_prefill_vs_stock"] >= 2 and r["ahn_decode_vs_stock"] >= 2
    inside = [r for r in rows if r["L"] <= W]
    if inside and AHN in pts:
        worst_pre = min(r["ahn_prefill_vs_stock"] for r in inside)
        worst_dec = min(r["ahn_decode_vs_stock"] for r in inside)
        t["inside_window"] = {"Ls": [r["L"] for r in inside], "worst_prefill_ratio": worst_pre, "worst_decode_ratio": worst_dec,
                              "prefill_slowdown": 1 / worst_pre - 1, "decode_slowdown": 1 / worst_dec - 1}
        if all("ahn_prefill_vs_stock_same_fa" in r for r in inside):
            t["inside_window"]["same_fa_prefill_slowdown"] = 1 / min(r["ahn_prefill_vs_stock_same_fa"] for r in inside) - 1
            t["inside_window"]["same_fa_decode_slowdown"] = 1 / min(r["ahn_decode_vs_stock_same_fa"] for r in inside) - 1
        t["inside_window_ok"] = 1 / worst_pre - 1 <= 0.05 and 1 / worst_dec - 1 <= 0.05
    # the memory step in steady state (beyond S + W every token evicts one, so the per-token cost of the
    # window modes is constant there): prefill = slope of the cumulative prefill time between the first and
    # the last point beyond the window; decode = median of all decode steps beyond it. Robust to the noise
    # of a single point, which the per-point differences in `rows` are not.
    steady = {m: _steady(result_model["modes"][m]["points"], S + W) for m in (WINDOW, AHN, COMPOSED) if m in pts}
    if len(steady) == 3 and all(steady.values()):
        w, f, c = steady[WINDOW], steady[AHN], steady[COMPOSED]
        ms = {"from_L": f["from_L"], "to_L": f["to_L"], "steady": steady}
        for what in ("prefill_ms_per_token", "decode_ms"):
            fu, co = f[what] - w[what], c[what] - w[what]
            key = what.split("_")[0]
            ms[f"{key}_fused_ms"], ms[f"{key}_composed_ms"] = fu, co
            ms[f"{key}_composed_over_fused"] = co / fu if fu > 0 else None
        t["memory_step"] = ms
        ratio = ms["prefill_composed_over_fused"]
        # None: the fused step's cost is not measurable (the AHN mode is not slower than window-only)
        t["memory_step_ok"] = None if ratio is None else ratio >= 2
    return {"rows": rows, "targets": t}


def _steady(points: list[dict], lossless: int) -> dict | None:
    """Per-token prefill and decode time of a mode beyond the lossless span S + W (see compare)."""
    beyond = [p for p in points if p["L"] > lossless]
    if len(beyond) < 2:
        return None
    a, b = beyond[0], beyond[-1]
    steps = [x for p in beyond for x in p["decode_step_s"]]
    return {"from_L": a["L"], "to_L": b["L"],
            "prefill_ms_per_token": 1e3 * (b["prefill_s"] - a["prefill_s"]) / (b["prefill_tokens"] - a["prefill_tokens"]),
            "decode_ms": 1e3 * statistics.median(steps), "decode_steps": len(steps)}


def prompt_tokens(n: int, n_vocab: int, seed: int = 0) -> list[int]:
    """Random ordinary tokens (clear of the control tokens at both ends of the vocabularies used)."""
    rng = np.random.default_rng(seed)
    return rng.integers(100, min(n_vocab, 151000), size=n).tolist()


def run_model(model: BenchModel, args: argparse.Namespace, bandwidth: float, log: Callable[[str], None]) -> dict:
    mb_stock, mb_ahn = model_bytes(model.stock_path), model_bytes(model.ahn_path)
    multiples = [float(x) for x in str(args.multiples).split(",") if x.strip()]
    cps = checkpoints_for(model.window, multiples)
    n_decode = args.decode_tokens
    max_L = max(cps)
    n_ctx = 256 * math.ceil((max_L + n_decode * (len(cps) + 1) + args.n_batch) / 256)
    prompt = prompt_tokens(max_L + args.n_batch, mb_stock.n_vocab)
    ms = [m for m in modes(args.ahn_flash_attn == "on") if m.name in args.modes.split(",")]
    short = [L for L in cps if L <= model.window]
    passes: dict[str, list[list[dict]]] = {m.name: [] for m in ms}
    t_model = time.perf_counter()
    for rep in range(max(args.repeats, args.short_repeats if short else 0)):
        todo = cps if rep < args.repeats else short
        for m in ms:
            t0 = time.perf_counter()
            recs = run_pass(model, m, prompt, todo, n_ctx=n_ctx, n_batch=args.n_batch, n_decode=n_decode,
                            threads=args.threads, mbytes=mb_ahn if m.ahn_file else mb_stock)
            passes[m.name].append(recs)
            last = recs[-1]
            log(f"[bench] {model.name} {m.name:13s} pass {rep + 1}: L<={todo[-1]:6d} in {time.perf_counter() - t0:6.1f} s; "
                f"at L={last['L']}: prefill {last['prefill_tokens'] / last['prefill_s']:7.1f} tok/s, "
                f"decode {1 / statistics.median(last['decode_step_s']):6.1f} tok/s")
    res = {
        "name": model.name, "description": model.description, "notes": model.notes,
        "stock_path": str(model.stock_path), "ahn_path": str(model.ahn_path),
        "window": model.window, "sinks": model.sinks, "n_ctx": n_ctx, "n_ctx_train": model.n_ctx_train,
        "checkpoints": cps, "bytes": {"stock": asdict(mb_stock), "ahn": asdict(mb_ahn)},
        "modes": {m.name: {"label": m.label, "flash_attn": m.flash_attn, "memory": m.memory, "composed": m.composed,
                           "file": str(model.ahn_path if m.ahn_file else model.stock_path),
                           "points": summarise(m, passes[m.name], model, mb_ahn if m.ahn_file else mb_stock, bandwidth)}
                  for m in ms},
        "seconds": time.perf_counter() - t_model,
    }
    res.update(compare(res))
    return res

def busy_warning(threads: int) -> str | None:
    """A sentence when other processes keep the CPUs busy: ggml's threads meet at a spinning barrier
    after every op, so with a thread per core and a busy machine each barrier can wait a whole
    scheduler time slice (measured here: SmolLM2 decode at 0.7 tok/s instead of ~70)."""
    load = os.getloadavg()[0]
    cpus = os.cpu_count() or 1
    if load < 0.5:
        return None
    return (f"the machine is busy (1-minute load average {load:.1f} on {cpus} CPUs before this run started); with "
            f"{threads} thread(s) the timings are distorted" + (", possibly by orders of magnitude" if threads >= cpus else ""))
