"""The runtime's memory: several sequences, state save/load, prefix reuse, and its size.

- Three sequences decoded together in one context give the logits each gives alone.
- save_state -> a new context -> load_state continues exactly like an uninterrupted run.
- llama-cpp-python's prefix reuse works unchanged (hybrid memories refuse partial removal).
- The reported memory equals the formula (window + sinks + gates + state) and stays flat as the
  context grows from 2xW to 16xW; nothing is allocated in proportion to n_ctx.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.runtime import WINDOW, convert_fixture, greedy_run, open_model, patched_llama_cpp, prompt_tokens


@pytest.fixture(scope="module")
def gguf_dir(tmp_path_factory):
    patched_llama_cpp()
    return tmp_path_factory.mktemp("gguf-state")


def _decode_batch(llama_cpp, ctx, entries, n_vocab):
    """entries: [(token, pos, seq_id, want_logits)] -> {index in entries: logits row}."""
    batch = llama_cpp.llama_batch_init(len(entries), 0, 4)
    try:
        batch.n_tokens = len(entries)
        for i, (tok, pos, seq, want) in enumerate(entries):
            batch.token[i] = tok
            batch.pos[i] = pos
            batch.n_seq_id[i] = 1
            batch.seq_id[i][0] = seq
            batch.logits[i] = want
        rc = llama_cpp.llama_decode(ctx, batch)
        assert rc == 0, f"llama_decode returned {rc}"
        out = {}
        for i, (_, _, _, want) in enumerate(entries):
            if want:
                ptr = llama_cpp.llama_get_logits_ith(ctx, i)
                out[i] = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy()
        return out
    finally:
        llama_cpp.llama_batch_free(batch)


@pytest.mark.parametrize("unified", [False, True])
@pytest.mark.parametrize("variant", ["gdn", "mamba2"])
def test_three_sequences_match_alone(variant, unified, fixtures_root, gguf_dir):
    llama_cpp = patched_llama_cpp()
    path = convert_fixture(fixtures_root, gguf_dir, "llama", variant)
    prompts = [prompt_tokens(n, seed=10 + i, vocab=40000) for i, n in enumerate((130, 150, 170))]
    n_decode = 12

    # alone: one context per sequence, greedy decode
    alone = []
    for p in prompts:
        llm = open_model(path, sinks=4, n_ubatch=64)
        alone.append(greedy_run(llm, p, n_decode))
        del llm

    # together: one context with three sequences (the high-level Llama has one), interleaved in every batch
    llm = open_model(path, sinks=4, n_ubatch=64, logits_all=False)
    n_vocab = llm.n_vocab()
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048, 128, 64
    params.n_seq_max, params.kv_unified = 3, unified
    params.type_k = params.type_v = 0  # F32 cache, as open_model
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.n_threads = params.n_threads_batch = 1
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    assert ctx, "could not create a 3-sequence context"
    got = [[] for _ in prompts]
    pos = [0, 0, 0]
    chunk = 23
    while any(pos[s] < len(prompts[s]) for s in range(3)):
        entries, owner = [], []
        for s in range(3):
            for t in prompts[s][pos[s]:pos[s] + chunk]:
                entries.append((t, pos[s], s, True))
                owner.append(s)
                pos[s] += 1
        rows = _decode_batch(llama_cpp, ctx, entries, n_vocab)
        for i, s in enumerate(owner):
            got[s].append(rows[i])
    for step in range(n_decode):
        entries = []
        for s in range(3):
            tok = alone[s][0][len(prompts[s]) + step]  # the token the solo run chose
            entries.append((tok, pos[s], s, True))
            pos[s] += 1
        rows = _decode_batch(llama_cpp, ctx, entries, n_vocab)
        for s in range(3):
            got[s].append(rows[s])
    llama_cpp.llama_free(ctx)

    for s in range(3):
        together = np.stack(got[s])
        solo = alone[s][1]
        # the solo run's logits at position i predict token i+1; ours likewise (same positions)
        assert together.shape == solo.shape
        err = float(np.abs(together - solo).max())
        assert err <= 1e-4 * float(np.abs(solo).max()), f"sequence {s}: {err}"
        assert (together.argmax(-1) == solo.argmax(-1)).all()


def test_save_load_state_continues_exactly(fixtures_root, gguf_dir):
    path = convert_fixture(fixtures_root, gguf_dir, "qwen2", "gdn")
    prompt = prompt_tokens(8 * (4 + WINDOW) + 7, seed=20)

    # uninterrupted: prompt, then 32 greedy tokens
    llm = open_model(path, sinks=4, n_ubatch=64)
    tokens, logits = greedy_run(llm, prompt, 32)

    # interrupted: prompt, save, a fresh context, load, then the same 32 steps
    a = open_model(path, sinks=4, n_ubatch=64)
    a.eval(prompt)
    state = a.save_state()
    del a
    b = open_model(path, sinks=4, n_ubatch=64)
    b.load_state(state)
    assert b.n_tokens == len(prompt)
    cont = []
    for _ in range(32):
        nxt = int(np.argmax(b.scores[b.n_tokens - 1]))
        cont.append(nxt)
        b.eval([nxt])
    assert cont == tokens[len(prompt):]
    err = np.abs(np.array(b.scores[len(prompt):b.n_tokens]) - logits[len(prompt):]).max()
    assert err <= 1e-5 * np.abs(logits).max()


def test_prefix_reuse_evaluates_only_the_suffix(fixtures_root, gguf_dir):
    """llama-cpp-python reuses a matching prefix; only new tokens are decoded, and the result
    equals a fresh evaluation of the whole text."""
    llama_cpp = patched_llama_cpp()
    path = convert_fixture(fixtures_root, gguf_dir, "llama", "gdn")
    first = prompt_tokens(120, seed=30)
    more = prompt_tokens(40, seed=31)

    llm = open_model(path, sinks=4, n_ubatch=64, logits_all=False)
    llm.reset()
    out1 = next(llm.generate(first, temp=0.0, top_k=1, reset=True))
    llama_cpp.llama_perf_context_reset(llm.ctx)
    full = first + [out1] + more
    out2 = next(llm.generate(full, temp=0.0, top_k=1, reset=True))
    n_eval = llama_cpp.llama_perf_context(llm.ctx).n_p_eval
    assert n_eval == len(more) + 1, f"re-evaluated {n_eval} tokens instead of {len(more) + 1}"

    fresh = open_model(path, sinks=4, n_ubatch=64, logits_all=False)
    fresh.reset()
    assert next(fresh.generate(full, temp=0.0, top_k=1, reset=True)) == out2

    # a prefix that ends inside what the memory has absorbed cannot be kept: seq_rm refuses,
    # and llama-cpp-python falls back to evaluating from scratch (same answer)
    assert not llm._ctx.kv_cache_seq_rm(0, 10, -1)
    again = next(llm.generate(first[:60] + more, temp=0.0, top_k=1, reset=True))
    check = open_model(path, sinks=4, n_ubatch=64, logits_all=False)
    check.reset()
    assert again == next(check.generate(first[:60] + more, temp=0.0, top_k=1, reset=True))


@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_memory_bytes_equal_formula_and_stay_flat(family, fixtures_root, gguf_dir):
    from ahn_gguf.reference import ReferenceConfig
    from ahn_gguf.reference.loading import read_config

    path = convert_fixture(fixtures_root, gguf_dir, family, "gdn")
    cfg = ReferenceConfig.from_hf(read_config(fixtures_root / f"{family}-base"), read_config(fixtures_root / f"{family}-ahn-gdn"))
    L, H, H_kv, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    S, W = 4, WINDOW

    kv_per_cell = L * 2 * H_kv * d * 2          # K and V, F16 cache
    gate_per_cell = L * 2 * H * 4               # GDN: g and beta per head, F32
    state = L * H * d * d * 4                   # one F32 d x d state per head
    expected = {"window": W * kv_per_cell, "sinks": S * kv_per_cell, "gates": (S + W) * gate_per_cell, "state": state}

    seen = []
    llm = open_model(path, sinks=S, n_ubatch=16, logits_all=False, f32_cache=False)
    for n in (2 * W, 4 * W, 8 * W, 16 * W):
        llm.reset()
        llm.eval(prompt_tokens(n, seed=n))
        mem = llm.ahn_memory()
        assert mem.kv_bytes_per_cell == kv_per_cell and mem.gate_bytes_per_cell == gate_per_cell
        got = {"window": mem.window_bytes, "sinks": mem.sink_bytes, "gates": mem.gate_bytes, "state": mem.state_bytes}
        assert got == expected, f"context {n}: {got} != {expected}"
        seen.append((mem.total_bytes, mem.allocated_bytes))
    assert len(set(seen)) == 1, f"memory changed with the context length: {seen}"

    # n_ctx is only a bound on positions: a 64x larger context allocates the same memory
    small = open_model(path, sinks=S, n_ubatch=16, n_ctx=4096, logits_all=False, f32_cache=False).ahn_memory()
    large = open_model(path, sinks=S, n_ubatch=16, n_ctx=262144, logits_all=False, f32_cache=False).ahn_memory()
    assert small.allocated_bytes == large.allocated_bytes


def test_build_avoids_amx_and_decodes(fixtures_root, gguf_dir):
    """The CI build names its SIMD levels (no -march=native, no AMX: docs/DESIGN.md's crash), and decodes."""
    llama_cpp = patched_llama_cpp()
    info = llama_cpp.llama_print_system_info().decode()
    assert "AMX_INT8 = 1" not in info, info
    path = convert_fixture(fixtures_root, gguf_dir, "qwen2", "dn")
    llm = open_model(path, sinks=0, n_ubatch=512, logits_all=False, f32_cache=False, n_threads=2)
    out = llm.create_completion("The memory of a model", max_tokens=8, temperature=0.0)
    assert out["usage"]["completion_tokens"] >= 1


def test_installed_build_is_this_checkout():
    """The installed llama_cpp was built from this checkout's patches and native/ (else: ahn-gguf build)."""
    from ahn_gguf.build.llama_cpp import BuildConfig, build_key, installed_key

    assert installed_key() == build_key(BuildConfig()), "the installed patched llama-cpp-python is stale: run `ahn-gguf build`"
