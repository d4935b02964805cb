"""`ahn-gguf bench op`: the native AHN memory op against PyTorch and against memory bandwidth.

What is measured, all in one run so that the ratios are fair:

* memory bandwidth of this machine: large (256 MiB) numpy arrays, in-place scale
  (read + write the same bytes: the access pattern of a decode step), copy and triad;
  the best of them is the bound;
* decode (T = 1): one step of the whole model = one op call per layer, each layer with
  its own state; tokens/s, and the state bandwidth achieved (a step reads and writes
  every state once: 2 * 4 * d * d * H * layers bytes) as a fraction of the bound.
  Once with one sequence (the real single-user case; small models' states fit in L3),
  once with enough sequences that the states are several times the last-level cache;
* prefill (T = 512 evicted-and-read tokens per sequence): measured on one layer,
  reported for all layers (every layer is the same shape and its state stays cached);
* each CPU kernel available here, the same step in vectorised PyTorch (batched over
  heads, one loop iteration per token, gather of evicted rows included), and the CUDA
  kernel when a GPU is present.

Timings are the best of several repetitions (the machine may be shared); medians are in
the JSON too.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ahn_gguf import constants, native, reports
from ahn_gguf.reports import ReportFiles

from ..errors import UsageError
from . import parsed_defaults

# (H, H_kv, d, layers) of the base models the AHN checkpoints target
MODELS = {
    "qwen2.5-3b": dict(n_head=16, n_head_kv=2, d=128, n_layer=36),
    "smollm2-135m": dict(n_head=9, n_head_kv=3, d=64, n_layer=30),
    "tiny": dict(n_head=2, n_head_kv=1, d=64, n_layer=2),  # smoke tests
}
KV_SIZE = 1024          # window-cache cells the evicted rows are gathered from
BIG_STATES = 4          # the "beyond cache" decode holds >= this many times the LLC in states


# --- timing ---------------------------------------------------------------------------------------


def time_it(fn: Callable[[], Any], *, min_reps: int, min_seconds: float) -> dict:
    """Run fn until both min_reps and min_seconds are reached (after one warm-up)."""
    fn()
    times = []
    start = time.perf_counter()
    while len(times) < min_reps or time.perf_counter() - start < min_seconds:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        if len(times) >= 1000:
            break
    return {"best_s": min(times), "median_s": statistics.median(times), "reps": len(times)}


def cpu_model() -> str:
    """The CPU's model name (Linux /proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def last_level_cache_bytes() -> int:
    """Largest CPU cache from sysfs (Linux); 32 MiB if unknown."""
    best = 0
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        txt = p.read_text().strip()
        mult = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(txt[-1:], 1)
        try:
            best = max(best, int(txt.rstrip("KMG")) * mult)
        except ValueError:
            pass
    return best or 32 * 1024 ** 2


def measure_bandwidth(n_threads: int, quick: bool) -> dict:
    """STREAM-like numbers from numpy on arrays far larger than the caches (GB/s, 1e9)."""
    n = (64 if quick else 256) * 1024 ** 2 // 4
    a = np.full(n, 1.0, np.float32)
    b = np.full(n, 2.0, np.float32)
    c = np.empty(n, np.float32)
    chunks = np.array_split(np.arange(n), n_threads)
    bounds = [(int(ch[0]), int(ch[-1]) + 1) for ch in chunks if ch.size]

    def parallel(body: Callable[[int, int], None]) -> Callable[[], None]:
        def run() -> None:  # numpy drops the GIL inside these ufuncs
            ts = [threading.Thread(target=body, args=lo_hi) for lo_hi in bounds[1:]]
            for t in ts:
                t.start()
            body(*bounds[0])
            for t in ts:
                t.join()
        return run

    kernels = {
        # name: (body, bytes moved as STREAM counts them)
        "inplace_scale": (lambda lo, hi: np.multiply(a[lo:hi], np.float32(1.0000001), out=a[lo:hi]), 2 * 4 * n),
        "copy": (lambda lo, hi: np.copyto(c[lo:hi], a[lo:hi]), 2 * 4 * n),
        "triad": (lambda lo, hi: np.add(a[lo:hi], b[lo:hi], out=c[lo:hi]), 3 * 4 * n),
    }
    out = {}
    for name, (body, nbytes) in kernels.items():
        t = time_it(parallel(body), min_reps=3 if quick else 5, min_seconds=0.2 if quick else 1.0)
        out[name] = nbytes / t["best_s"] / 1e9
    out["bound"] = max(out.values())
    out["array_mib"] = 4 * n / 1024 ** 2
    return out


# --- inputs ----------------------------------------------------------------------------------------


def make_layer_inputs(rng: np.random.Generator, variant: str, shape: dict, n_seqs: int, n_tokens: int) -> dict:
    """One layer's op inputs: a window cache of KV_SIZE cells, realistic gates, every token evicting."""
    H, H_kv, d = shape["n_head"], shape["n_head_kv"], shape["d"]
    k = rng.standard_normal((1, KV_SIZE, H_kv, d), dtype=np.float32)
    v = rng.standard_normal((1, KV_SIZE, H_kv, d), dtype=np.float32)
    dt = np.log1p(np.exp(rng.normal(-1.0, 1.0, (1, KV_SIZE, H)))).astype(np.float32)
    if variant == constants.DN:
        gates = (1.0 / (1.0 + np.exp(-rng.normal(0, 1, (1, KV_SIZE, H))))).astype(np.float32)
    else:
        second = dt if variant == constants.MAMBA2 else 1.0 / (1.0 + np.exp(-rng.normal(0, 1, dt.shape)))
        gates = np.concatenate([-0.3 * dt, second], axis=-1).astype(np.float32)
    idx = (rng.permutation(KV_SIZE * ((n_seqs * n_tokens) // KV_SIZE + 1))[: n_seqs * n_tokens] % KV_SIZE)
    return dict(
        variant=variant,
        q=rng.standard_normal((n_seqs, n_tokens, H, d), dtype=np.float32),
        k_cache=k, v_cache=v, gates=gates,
        idx=idx.reshape(n_seqs, n_tokens).astype(np.int32),
        state=(0.1 * rng.standard_normal((n_seqs, H, d, d), dtype=np.float32)),
    )


# --- the PyTorch comparison ----------------------------------------------------------------------


class TorchStep:
    """The same memory step in vectorised PyTorch: all sequences and heads at once, a loop
    over tokens; the gather of evicted K/V rows and the L2 norms are part of the step."""

    def __init__(self, inputs: dict, n_threads: int):
        import torch

        self.torch = torch
        torch.set_num_threads(n_threads)
        self.variant = inputs["variant"]
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x))  # noqa: E731
        self.q = t(inputs["q"])
        self.k, self.v, self.gates = t(inputs["k_cache"][0]), t(inputs["v_cache"][0]), t(inputs["gates"][0])
        self.idx = t(inputs["idx"]).long()
        self.state = t(inputs["state"]).clone()          # [S, H, d_v, d_k], as the op stores it
        S, T, H, d = self.q.shape
        self.n_rep = H // self.k.shape[1]
        self.scale = 1.0 if self.variant == constants.MAMBA2 else d ** -0.5

    def _l2(self, x):
        if self.variant == constants.MAMBA2:
            return self.torch.nn.functional.normalize(x, dim=-1, eps=constants.AHN_L2_EPS_MAMBA2)
        return x * self.torch.rsqrt((x * x).sum(-1, keepdim=True) + constants.AHN_L2_EPS_DELTA)

    def __call__(self) -> Any:
        torch = self.torch
        S, T, H, d = self.q.shape
        M = self.state.view(S * H, d, d)
        outs = []
        for t in range(T):
            r = self.idx[:, t].clamp(min=0)
            write = (self.idx[:, t] >= 0).float()[:, None]                    # [S, 1]: g = b = 0 is the identity
            kn = self._l2(self.k[r].repeat_interleave(self.n_rep, dim=1))     # [S, H, d]
            vv = self.v[r].repeat_interleave(self.n_rep, dim=1)
            gr = self.gates[r]
            if self.variant == constants.DN:
                decay, b = torch.ones(S, H), gr * write
            else:
                decay, b = torch.exp(gr[:, :H] * write), gr[:, H:] * write
            M.mul_(decay.reshape(S * H, 1, 1))
            if self.variant == constants.MAMBA2:
                delta = b[..., None] * vv
            else:
                delta = b[..., None] * (vv - torch.bmm(M, kn.reshape(S * H, d, 1)).reshape(S, H, d))
            M.baddbmm_(delta.reshape(S * H, d, 1), kn.reshape(S * H, 1, d))
            qn = self._l2(self.q[:, t])
            outs.append(self.scale * torch.bmm(M, qn.reshape(S * H, d, 1)).reshape(S, H, d))
        return torch.stack(outs, 1)


# --- the benchmark ------------------------------------------------------------------------------------


def _scenarios(shape: dict, llc: int, prefill_tokens: int) -> list[dict]:
    state_bytes = 4 * shape["d"] ** 2 * shape["n_head"]          # one sequence, one layer
    model_bytes = state_bytes * shape["n_layer"]
    big_seqs = max(1, -(-BIG_STATES * llc // model_bytes))
    return [
        dict(name="decode", n_seqs=1, n_tokens=1, layers_run=shape["n_layer"]),
        dict(name=f"decode x{big_seqs} seqs", n_seqs=big_seqs, n_tokens=1, layers_run=shape["n_layer"]),
        dict(name=f"prefill T={prefill_tokens}", n_seqs=1, n_tokens=prefill_tokens, layers_run=1),
    ]


def run(args: argparse.Namespace) -> dict:
    variant = constants.canonical_variant(args.variant)
    quick = bool(args.quick)
    min_reps, min_s = (2, 0.05) if quick else (5, 0.5)
    kernels = args.kernels.split(",") if args.kernels else native.available_kernels()
    for k in kernels:
        if k not in native.available_kernels():
            raise UsageError(f"kernel {k!r} not available here (have: {', '.join(native.available_kernels())})")
    use_cuda = args.cuda == "on" or (args.cuda == "auto" and native.cuda_device_present() and native.nvcc_path())
    llc = last_level_cache_bytes()
    result: dict = {
        "machine": {"platform": platform.platform(), "processor": cpu_model(),
                    "cpus": os.cpu_count(), "llc_bytes": llc, "best_kernel": native.kernel_name()},
        "settings": {"variant": variant, "threads": args.threads, "kv_size": KV_SIZE, "quick": quick,
                     "prefill_tokens": args.prefill_tokens, "timing": "best of repetitions"},
        "bandwidth_gbs": measure_bandwidth(args.threads, quick),
        "rows": [],
    }
    bound = result["bandwidth_gbs"]["bound"]
    rng = np.random.default_rng(0)
    for model in args.models.split(","):
        if model not in MODELS:
            raise UsageError(f"unknown model {model!r}; expected one of {', '.join(MODELS)}")
        shape = MODELS[model]
        for sc in _scenarios(shape, llc, args.prefill_tokens):
            layers = [make_layer_inputs(rng, variant, shape, sc["n_seqs"], sc["n_tokens"]) for _ in range(sc["layers_run"])]
            steps = [native.prepare_step(**inp) for inp in layers]
            scale_to_model = shape["n_layer"] / sc["layers_run"]
            state_bytes = 2 * 4 * shape["d"] ** 2 * shape["n_head"] * sc["n_seqs"] * shape["n_layer"]
            tokens = sc["n_seqs"] * sc["n_tokens"]

            # bound now: row() and the timed lambdas run within this iteration, but say so to the reader (and bugbear)
            def row(kernel: str, seconds: dict, device: str = "cpu", *, model=model, sc=sc, shape=shape,
                    scale_to_model=scale_to_model, tokens=tokens, state_bytes=state_bytes) -> dict:
                step_s = seconds["best_s"] * scale_to_model
                r = {"model": model, "scenario": sc["name"], "kernel": kernel, "device": device,
                     "n_seqs": sc["n_seqs"], "n_tokens": sc["n_tokens"], "layers": shape["n_layer"],
                     "layers_measured": sc["layers_run"], "reps": seconds["reps"],
                     "ms_per_model_step": 1e3 * step_s, "median_ms_per_model_step": 1e3 * seconds["median_s"] * scale_to_model,
                     "tokens_per_s": tokens / step_s}
                if sc["n_tokens"] == 1:  # decode: every state read and written once
                    r["state_gbs"] = state_bytes / step_s / 1e9
                    if device == "cpu":
                        r["fraction_of_bandwidth"] = r["state_gbs"] / bound
                return r

            rows = []
            for k in kernels:
                t = time_it(lambda k=k, steps=steps: [s.run(k, args.threads) for s in steps], min_reps=min_reps, min_seconds=min_s)
                rows.append(row(k, t))
            if not args.no_torch:
                try:
                    ts = [TorchStep(inp, args.threads) for inp in layers]
                except ImportError:
                    ts = []
                if ts:
                    t = time_it(lambda ts=ts: [f() for f in ts], min_reps=min(min_reps, 3), min_seconds=min_s)
                    rows.append(row("torch", t))
            if use_cuda:
                ms = sum(native.time_cuda(s, n_iter=20) for s in steps)
                rows.append(row("cuda", {"best_s": ms / 1e3, "median_s": ms / 1e3, "reps": 20}, device="cuda"))
            by_name = {r["kernel"]: r for r in rows}
            for r in rows:
                if "torch" in by_name and r["device"] == "cpu":
                    r["speedup_vs_torch"] = by_name["torch"]["ms_per_model_step"] / r["ms_per_model_step"]
                if "scalar" in by_name:
                    r["speedup_vs_scalar"] = by_name["scalar"]["ms_per_model_step"] / r["ms_per_model_step"]
            result["rows"] += rows
            if getattr(args, "verbose", False):
                for r in rows:
                    print(_table_line(r), flush=True)
    return result


# --- reporting --------------------------------------------------------------------------------------

_HEADER = ("| model | scenario | kernel | ms / step (all layers) | tokens/s | state GB/s | % of bandwidth "
           "| vs torch | vs scalar |\n|---|---|---|---:|---:|---:|---:|---:|---:|")


def _fmt(x: Any, spec: str) -> str:
    return format(x, spec) if isinstance(x, (int, float)) else "–"


def _table_line(r: dict) -> str:
    frac = r.get("fraction_of_bandwidth")
    return (f"| {r['model']} | {r['scenario']} | {r['kernel']} | {_fmt(r['ms_per_model_step'], '.3f')} "
            f"| {_fmt(r['tokens_per_s'], ',.0f')} | {_fmt(r.get('state_gbs'), '.1f')} "
            f"| {_fmt(100 * frac if frac is not None else None, '.0f')} "
            f"| {_fmt(r.get('speedup_vs_torch'), '.1f')}x | {_fmt(r.get('speedup_vs_scalar'), '.1f')}x |")


def markdown(result: dict) -> str:
    bw = result["bandwidth_gbs"]
    s = result["settings"]
    lines = [
        "# AHN memory op benchmark",
        "",
        f"Variant {s['variant']}, {s['threads']} thread(s), window cache of {s['kv_size']} cells; "
        f"{result['machine']['processor']}, {result['machine']['cpus']} CPUs, "
        f"last-level cache {result['machine']['llc_bytes'] / 1024 ** 2:.0f} MiB, best kernel `{result['machine']['best_kernel']}`.",
        "",
        f"Memory bandwidth measured in the same run ({bw['array_mib']:.0f} MiB arrays, GB/s = 1e9 B/s): "
        f"in-place scale {bw['inplace_scale']:.1f}, copy {bw['copy']:.1f}, triad {bw['triad']:.1f}; "
        f"bound used: **{bw['bound']:.1f} GB/s**.",
        "",
        "Decode: one op call per layer, every state read and written once "
        "(bytes = 2 * 4 * d^2 * H * layers * seqs). Prefill: measured on one layer, times the layer count. "
        "Times are the best of several repetitions (medians in the JSON).",
        "",
        _HEADER,
    ]
    lines += [_table_line(r) for r in result["rows"]]
    return "\n".join(lines) + "\n"


def write_report(result: dict, out_dir: Path) -> ReportFiles:
    return reports.write_report(out_dir, "bench-op", result, lambda _names: markdown(result))


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", default="qwen2.5-3b,smollm2-135m", help=f"comma-separated, from: {', '.join(MODELS)}")
    p.add_argument("--variant", default="gdn", help="gdn | dn | mamba2 (default gdn)")
    p.add_argument("--threads", type=int, default=1, help="threads for the op, PyTorch and the bandwidth test (default 1)")
    p.add_argument("--kernels", default="", help="comma-separated CPU kernels (default: all available here)")
    p.add_argument("--prefill-tokens", type=int, default=512, help="tokens per prefill chunk (default 512)")
    p.add_argument("--cuda", choices=["auto", "on", "off"], default="auto", help="also time the CUDA kernel (auto: if a GPU is present)")
    p.add_argument("--no-torch", action="store_true", help="skip the PyTorch comparison")
    p.add_argument("--quick", action="store_true", help="fewer repetitions and smaller bandwidth arrays (smoke runs)")
    p.add_argument("--out", default="reports", help="folder for bench-op.md and bench-op.json (default reports/)")
    p.add_argument("-q", "--quiet", dest="verbose", action="store_false", help="print only the final table")


def default_args(**overrides: Any) -> argparse.Namespace:
    """The command line's defaults, for calling run() from Python."""
    return parsed_defaults(add_arguments, "op", overrides)


def main(args: argparse.Namespace) -> int:
    if args.threads < 1:
        raise UsageError("--threads must be >= 1")
    result = run(args)
    md, js = write_report(result, Path(args.out))
    print(markdown(result))
    print(f"wrote {md} and {js}")
    return 0
