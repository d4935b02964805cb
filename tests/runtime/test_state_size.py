"""Saved states hold live memory only: sinks + window + their write gates + the recurrent state.

The serialised state of an AHN context (llama_state_get_size / save_state / llama_state_seq_*)
must not carry the cells of tokens that already left the window: it stays the same size from
2 x (S + W) to 16 x (S + W) tokens, equals the live memory plus a small fixed header, and a
load continues exactly. A state with a hole in its window is refused, not decoded into an abort.
"""

from __future__ import annotations

import ctypes

import numpy as np
import pytest

from tests.helpers.runtime import patched_llama_cpp
from tests.helpers.tiny_model import build_tiny_ahn_gguf

W, S = 24, 3   # the measurement: S = 3, W = 24


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    patched_llama_cpp()
    return build_tiny_ahn_gguf(tmp_path_factory.mktemp("state-size") / "tiny.gguf")


def _llm(path):
    from ahn_gguf import Llama

    return Llama(str(path), n_ctx=1024, n_batch=64, n_ubatch=64, n_threads=1, n_threads_batch=1, verbose=False,
                 ahn_window=W, ahn_sinks=S)


def _sizes(llm) -> dict[str, int]:
    import llama_cpp

    ctx = llm._ctx.ctx
    seq = llama_cpp.llama_state_seq_get_size(ctx, 0)
    buf = (ctypes.c_uint8 * seq)()
    return {
        "llama_state_get_size": int(llama_cpp.llama_state_get_size(ctx)),
        "save_state": int(llm.save_state().llama_state_size),
        "llama_state_seq_get_size": int(seq),
        "llama_state_seq_get_data": int(llama_cpp.llama_state_seq_get_data(ctx, buf, seq, 0)),
    }


def test_state_holds_live_memory_only(tiny, record_property):
    llm = _llm(tiny)
    rng = np.random.default_rng(0)
    tokens = rng.integers(3, 259, size=16 * (S + W)).tolist()
    measured = {}
    for mult in (2, 16):
        n = mult * (S + W)
        llm.eval(tokens[llm.n_tokens:n])
        measured[mult] = _sizes(llm)
        live = llm.ahn_memory().total_bytes
        record_property(f"state_bytes_{mult}x", measured[mult])
        print(f"{n} tokens: {measured[mult]}; live memory {live} B")
        sizes = list(measured[mult].values())
        assert max(sizes) <= 1.01 * min(sizes), f"state sizes disagree at {mult}x(S+W): {measured[mult]}"
        # the live memory plus the state's headers (positions, sequence ids, per-layer headers: < 8 KiB here)
        assert live <= measured[mult]["save_state"] <= live + 8192, (measured[mult], live)
    a, b = measured[2]["save_state"], measured[16]["save_state"]
    assert abs(b - a) <= 0.01 * a, f"the state grew from {a} to {b} bytes between 2x and 16x (S+W)"


def test_loaded_live_state_continues_exactly(tiny):
    llm = _llm(tiny)
    tokens = np.random.default_rng(1).integers(3, 259, size=10 * (S + W)).tolist()
    llm.eval(tokens)
    state = llm.save_state()

    def continue_greedy(m, first, n=16):
        out, t = [], first
        for _ in range(n):
            m.eval([t])
            logits = np.ctypeslib.as_array(m._ctx.get_logits(), shape=(m.n_vocab(),)).copy()
            t = int(np.argmax(logits))
            out.append((t, logits))
        return out

    expected = continue_greedy(llm, 7)
    other = _llm(tiny)
    other.load_state(state)
    got = continue_greedy(other, 7)
    assert [t for t, _ in got] == [t for t, _ in expected]
    # the restored cells sit in another order than the ring they came from, so attention sums in
    # another order: equal to float rounding, not bit for bit
    g, e = np.stack([x for _, x in got]), np.stack([x for _, x in expected])
    assert np.abs(g - e).max() <= 1e-5 * np.abs(e).max(), np.abs(g - e).max()

    # a sequence restore (llama_state_seq_*) into a fresh context continues the same way
    import llama_cpp

    seq = _llm(tiny)
    seq.eval(tokens)
    n = llama_cpp.llama_state_seq_get_size(seq._ctx.ctx, 0)
    buf = (ctypes.c_uint8 * n)()
    assert llama_cpp.llama_state_seq_get_data(seq._ctx.ctx, buf, n, 0) == n
    fresh = _llm(tiny)
    assert llama_cpp.llama_state_seq_set_data(fresh._ctx.ctx, buf, n, 0) == n
    fresh.n_tokens = len(tokens)
    fresh.input_ids[: len(tokens)] = tokens
    got_seq = continue_greedy(fresh, 7)
    assert [t for t, _ in got_seq] == [t for t, _ in expected]
