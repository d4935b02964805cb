"""Shared helpers of the runtime tests: converted fixture GGUFs, llama.cpp runs, reference runs.

The GGUF runtime (patched llama.cpp through ahn_gguf.Llama) is checked against the PyTorch
reference on the tiny fixtures. Runs use F32 weights and an F32 K/V cache unless said, so
that differences come from the computation, not from storage rounding.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import numpy as np

FAMILIES = ("qwen2", "llama")
VARIANTS = ("gdn", "dn", "mamba2")
ARCH = {"qwen2": "qwen2ahn", "llama": "llamaahn"}

# small W so that prompts of 8 x (S + W) stay short; W lies between the ubatch sizes 7 and 64
WINDOW = 16
SINKS = (0, 4)
UBATCHES = (1, 7, 64, 512)
N_DECODE = 64

# relative tolerance of the issue: max |err| <= 1e-3 * max |logit|
REL_TOL = 1e-3


def patched_llama_cpp():
    """The installed llama_cpp; fails (does not skip) when it is not the AHN build."""
    from ahn_gguf.runtime import import_patched_llama_cpp

    return import_patched_llama_cpp()


def convert_fixture(fixtures_root: Path, out_dir: Path, family: str, variant: str | None, outtype: str = "f32") -> Path:
    """Fixture base (+ AHN) -> GGUF, once per session (out_dir is session-scoped)."""
    from ahn_gguf.convert import convert

    name = f"{family}-{variant or 'stock'}-{outtype}.gguf"
    out = out_dir / name
    if not out.exists():
        if variant is None:
            # the stock conversion of the base alone (arch qwen2 / llama), by llama.cpp's converter
            from ahn_gguf.convert.stock import inference_mode, stock_model, write_stock

            with inference_mode():
                write_stock(stock_model(fixtures_root / f"{family}-base", outtype, out))
        else:
            convert(str(fixtures_root / f"{family}-base"), str(fixtures_root / f"{family}-ahn-{variant}"), out,
                    outtype=outtype, progress=False)
    return out


# how the memory step runs: the fused op updating the states where they live (the default), the
# fused op on gathered states copied back afterwards, or the same step built from stock ggml ops
MEMORY_PATHS = ("fused", "fused-copy", "composed")
_PATH_ENV = {"fused": {}, "fused-copy": {"LLAMA_AHN_STATE_COPY": "1"}, "composed": {"LLAMA_AHN_COMPOSED": "1"}}


@contextmanager
def memory_path(path: str):
    """Select a memory-step path (MEMORY_PATHS) for the models opened inside the block."""
    names = ("LLAMA_AHN_COMPOSED", "LLAMA_AHN_STATE_COPY")
    old = {n: os.environ.get(n) for n in names}
    for n in names:
        os.environ[n] = _PATH_ENV[path].get(n, "0")
    try:
        yield
    finally:
        for n, v in old.items():
            if v is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = v


def open_model(path: Path, *, window: int | None = WINDOW, sinks: int | None = 0, n_ubatch: int = 64,
               n_ctx: int = 2048, logits_all: bool = True, f32_cache: bool = True, n_threads: int = 1, **kw):
    """An ahn_gguf.Llama for tests. One thread by default: these tiny models are dominated by
    per-op overhead, where a second thread only adds barriers (the op's thread split has its
    own tests, and test_build_avoids_amx_and_decodes runs two threads)."""
    from ahn_gguf.runtime import Llama

    if f32_cache:
        kw.setdefault("type_k", 0)
        kw.setdefault("type_v", 0)
    return Llama(str(path), ahn_window=window, ahn_sinks=sinks, n_ctx=n_ctx, n_batch=n_ubatch, n_ubatch=n_ubatch,
                 logits_all=logits_all, verbose=False, n_threads=n_threads, n_threads_batch=n_threads, seed=0, **kw)


def prompt_tokens(n: int, seed: int = 0, vocab: int = 40000) -> list[int]:
    rng = np.random.default_rng(seed)
    return rng.integers(10, vocab, size=n).tolist()


def greedy_run(llm, prompt: list[int], n_decode: int) -> tuple[list[int], np.ndarray]:
    """Prefill `prompt` (in n_ubatch pieces), then n_decode greedy single-token steps.

    Returns all tokens and the logits at every position [len(prompt) + n_decode, n_vocab].
    """
    llm.reset()
    llm.eval(prompt)
    tokens = list(prompt)
    for _ in range(n_decode):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        tokens.append(nxt)
        llm.eval([nxt])
    return tokens, np.array(llm.scores[: llm.n_tokens], copy=True)


def reference_logits(ref, tokens: list[int], *, mode: str = "ahn", window=None, sinks=None) -> np.ndarray:
    import torch

    with torch.no_grad():
        return ref(torch.tensor([tokens]), mode=mode, window=window, sinks=sinks)[0].float().numpy()


def assert_logits_close(got: np.ndarray, want: np.ndarray, rel: float = REL_TOL, what: str = "") -> float:
    """max |got - want| <= rel * max |want| and the same argmax at every position; returns the error."""
    assert got.shape == want.shape, f"{what}: shapes {got.shape} vs {want.shape}"
    scale = float(np.abs(want).max())
    err = float(np.abs(got - want).max())
    assert err <= rel * scale, f"{what}: max abs error {err:.3g} > {rel} * max|logit| ({scale:.3g})"
    bad = np.nonzero(got.argmax(-1) != want.argmax(-1))[0]
    assert bad.size == 0, f"{what}: argmax differs at positions {bad[:10].tolist()}"
    return err


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """Mean KL(p || q) over positions, from logits."""
    def log_softmax(x):
        x = x - x.max(-1, keepdims=True)
        return x - np.log(np.exp(x).sum(-1, keepdims=True))

    lp, lq = log_softmax(p_logits.astype(np.float64)), log_softmax(q_logits.astype(np.float64))
    return float((np.exp(lp) * (lp - lq)).sum(-1).mean())


def wait_for_http(url: str, proc, timeout: float = 180, headers: dict | None = None) -> None:
    """Wait until `url` answers 200 (a server started as `proc`); fail with its output if it exits first."""
    import time

    import httpx

    deadline = time.time() + timeout
    while True:
        try:
            if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert proc.poll() is None, f"the server exited:\n{proc.stdout.read()[-3000:]}"
        assert time.time() < deadline, f"{url} did not answer within {timeout} s"
        time.sleep(0.3)
