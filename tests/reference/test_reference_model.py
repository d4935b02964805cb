"""The reference model: incremental == parallel, mode identities, AHN semantics, transformers parity."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ahn_gguf.constants import DN, GDN, MAMBA2, VARIANTS
from ahn_gguf.fixtures import FAMILIES, LLAMA_MERGED, ahn_folder, base_folder
from ahn_gguf.reference import (
    AHNConfigError,
    ahn_state_dict,
    attach_ahn,
    load_reference,
    save_ahn,
)
from ahn_gguf.reference.model import rope_cos_sin, window_mask

pytestmark = pytest.mark.usefixtures("one_torch_thread")


W_TEST = 8        # small window: sequences of >= 8 * (S + W) tokens stay short
L_TEST = 96       # >= 8 * (3 + 8)


def load(root, family, variant, **kw):
    return load_reference(root / base_folder(family), root / ahn_folder(family, variant), **kw)


def token_ids(vocab, L, B=1, seed=0):
    return torch.randint(0, vocab, (B, L), generator=torch.Generator().manual_seed(seed))


def run_incremental(model, ids, schedule, cache=None):
    """Feed ids in chunks whose sizes cycle through `schedule`; return the concatenated logits."""
    cache = model.new_cache(ids.shape[0]) if cache is None else cache
    outs, pos, i = [], 0, 0
    while pos < ids.shape[1]:
        n = schedule[i % len(schedule)]
        outs.append(model.forward_incremental(ids[:, pos:pos + n], cache))
        pos += n
        i += 1
    return torch.cat(outs, dim=1), cache


def assert_close_logits(got, want, rtol=1e-4):
    scale = want.abs().max().item()
    err = (got - want).abs().max().item()
    assert err <= rtol * scale, f"max |diff| {err:.3g} > {rtol} * max |logit| {scale:.3g}"


# chunk sizes 1, 3, 17 (> W) and 40 (> S + W), split between S = 0 and S > 0 to keep the run
# short (each schedule computes all logits, 151936 wide for Qwen2); the irregular one puts
# chunk boundaries everywhere inside windows, with both S
SCHEDULES = {
    0: {"1": [1], "17": [17], "irregular": [5, 1, 7, 2, 30, 11, 3, 9]},
    3: {"3": [3], "40": [40], "irregular": [5, 1, 7, 2, 30, 11, 3, 9]},
}


@pytest.mark.parametrize("sinks", [0, 3])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_incremental_equals_parallel(fixtures_root, family, variant, sinks):
    model = load(fixtures_root, family, variant, window=W_TEST, sinks=sinks)
    ids = token_ids(model.config.vocab_size, L_TEST, seed=sinks)
    with torch.no_grad():
        want = model(ids, mode="ahn")
    for name, schedule in SCHEDULES[sinks].items():
        got, cache = run_incremental(model, ids, schedule)
        assert cache.pos == L_TEST
        try:
            assert_close_logits(got, want)
        except AssertionError as e:
            raise AssertionError(f"chunk schedule {name}: {e}") from None


@pytest.mark.parametrize("variant", VARIANTS)
def test_continue_after_mid_window_boundary(fixtures_root, variant):
    """Stop at a position inside a window, copy the cache, continue two different ways."""
    model = load(fixtures_root, "llama", variant, window=W_TEST, sinks=2)
    ids = token_ids(model.config.vocab_size, 100, seed=4)
    with torch.no_grad():
        want = model(ids, mode="ahn")
    head, cache = run_incremental(model, ids[:, :45], [13])  # 45 - S = 43: mid-window
    one_by_one, _ = run_incremental(model, ids[:, 45:], [1], cache=cache.clone())
    at_once = model.forward_incremental(ids[:, 45:], cache)
    assert_close_logits(torch.cat([head, one_by_one], 1), want)
    assert_close_logits(torch.cat([head, at_once], 1), want)


@pytest.mark.parametrize("variant", VARIANTS)
def test_batch_equals_single_sequences(fixtures_root, variant):
    model = load(fixtures_root, "llama", variant, window=W_TEST, sinks=2)
    ids = token_ids(model.config.vocab_size, 60, B=2, seed=9)
    with torch.no_grad():
        both = model(ids)
        for b in range(2):
            assert_close_logits(both[b:b + 1], model(ids[b:b + 1]), rtol=1e-5)
    inc, _ = run_incremental(model, ids, [7])
    assert_close_logits(inc, both)


@pytest.mark.parametrize("variant", VARIANTS)
def test_zero_o_proj_equals_window_exactly(fixtures_root, variant):
    model = load(fixtures_root, "llama", variant, window=W_TEST, sinks=3)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.ahn.fn.o_proj.weight.zero_()
        ids = token_ids(model.config.vocab_size, 80, seed=1)
        assert torch.equal(model(ids, mode="ahn"), model(ids, mode="window"))
    inc_ahn, _ = run_incremental(model, ids, [5])
    inc_window, _ = run_incremental(model, ids, [5], cache=model.new_cache(mode="window"))
    assert torch.equal(inc_ahn, inc_window)


@pytest.mark.parametrize("variant", VARIANTS)
def test_window_covering_the_sequence_equals_full_exactly(fixtures_root, variant):
    model = load(fixtures_root, "llama", variant)
    ids = token_ids(model.config.vocab_size, 40, seed=2)
    with torch.no_grad():
        full = model(ids, mode="full")
        assert torch.equal(model(ids, mode="ahn", window=40, sinks=0), full)
        assert torch.equal(model(ids, mode="ahn", window=30, sinks=10), full)   # S + W = L
        assert torch.equal(model(ids, mode="window", window=64, sinks=4), full)
        assert not torch.equal(model(ids, mode="ahn", window=30, sinks=9), full)  # one token read


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_memory_changes_logits_only_after_the_lossless_span(fixtures_root, family, variant):
    S, W = 3, W_TEST
    model = load(fixtures_root, family, variant, window=W, sinks=S)
    ids = token_ids(model.config.vocab_size, 64, seed=3)
    with torch.no_grad():
        ahn, window = model(ids, mode="ahn"), model(ids, mode="window")
    # queries t < S + W read an empty memory in every layer: identical to sinks + window
    assert torch.equal(ahn[:, :S + W], window[:, :S + W])
    # afterwards the fixtures' memory is strong enough to be seen
    diff = (ahn[:, S + W:] - window[:, S + W:]).abs().amax(-1)  # per position
    assert (diff > 0.05 * window.abs().max()).float().mean() > 0.9


def _spec_ahn_layer_float64(fn, variant, u, q, k, v, W, S, n_rep, eps=1e-5):
    """The AHN contribution of one layer, from docs/AHN-SPEC.md's text, in numpy float64.

    Query t reads the state after token t - W has been written; token j >= S is written
    at query j + W; gates from u of the written token, output gate from u of the reader.
    """
    P = {name: p.detach().double().numpy() for name, p in fn.named_parameters()}
    u, q, k, v = (x.detach().double().numpy()[0] for x in (u, q, k, v))
    L, H, d = q.shape
    sigmoid = lambda x: 1 / (1 + np.exp(-x))        # noqa: E731
    softplus = lambda x: np.log1p(np.exp(x))        # noqa: E731
    silu = lambda x: x * sigmoid(x)                 # noqa: E731
    M = np.zeros((H, d, d))                         # key x value (GDN/DN); value x key (Mamba2)
    out = np.zeros((L, H * d))
    for t in range(L):
        j = t - W
        if j >= S:                                  # write token j, which just left the window
            for h in range(H):
                kj, vj = k[j, h // n_rep], v[j, h // n_rep]
                if variant == MAMBA2:
                    dt = softplus(u[j] @ P["dt_proj.weight"][h] + P["dt_proj.bias"][h] + P["dt_bias"][h])
                    kh = kj / max(np.linalg.norm(kj), 1e-12)
                    M[h] = np.exp(-np.exp(P["A_log"][h]) * dt) * M[h] + dt * np.outer(vj, kh)
                else:
                    beta = sigmoid(u[j] @ P["b_proj.weight"][h])
                    g = 0.0 if variant == DN else \
                        -np.exp(P["A_log"][h]) * softplus(u[j] @ P["a_proj.weight"][h] + P["dt_bias"][h])
                    kh = kj / np.sqrt(kj @ kj + 1e-6)
                    M[h] = np.exp(g) * M[h]
                    M[h] = M[h] + np.outer(kh, beta * (vj - M[h].T @ kh))
        if t - W < S:
            continue                                # memory still empty: zero contribution
        o = np.zeros((H, d))
        for h in range(H):
            if variant == MAMBA2:
                o[h] = M[h] @ (q[t, h] / max(np.linalg.norm(q[t, h]), 1e-12))
            else:
                o[h] = M[h].T @ (q[t, h] / np.sqrt(q[t, h] @ q[t, h] + 1e-6)) / np.sqrt(d)
        if variant == MAMBA2:
            y = o * silu(P["g_proj.weight"] @ u[t] + P["g_proj.bias"])[:, None]
            z = (y.reshape(-1) / np.sqrt(np.mean(y ** 2) + eps) * P["norm.weight"]).reshape(H, d)
        else:
            gamma = P["g_proj.weight"] @ u[t]
            n = o / np.sqrt(np.mean(o ** 2, axis=-1, keepdims=True) + eps) * P["o_norm.weight"]
            z = n * silu(gamma)[:, None]
        out[t] = np.concatenate([z[h] @ P["o_proj.weight"][h] for h in range(H)])
    return out


@pytest.mark.parametrize("impl", ["naive", "chunked"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_ahn_layer_matches_spec_text(fixtures_root, variant, impl):
    S, W, L = 3, 5, 40
    model = load(fixtures_root, "llama", variant)  # n_rep 3: checks the KV-head mapping too
    layer = model.model.layers[1]
    x = torch.randn(1, L, model.config.hidden_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        u = layer.input_layernorm(x)
        cos, sin = rope_cos_sin(torch.arange(L), model.config.head_dim, model.config.rope_theta)
        q, k, v = layer.self_attn.qkv(u, cos, sin)
        got = layer.ahn.parallel(u, q, k, v, W, S, impl)[0].double().numpy()
    want = _spec_ahn_layer_float64(layer.ahn.fn, variant, u, q, k, v, W, S, model.config.n_rep)
    assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    assert np.abs(want[S + W:]).min(axis=-1).max() > 0 and not np.any(got[:S + W])


def test_window_mask_matches_spec():
    S, W, L = 2, 3, 12
    mask = window_mask(torch.arange(L), torch.arange(L), W, S)
    for t in range(L):
        for j in range(L):
            assert bool(mask[t, j]) == (j <= t and (j < S or t - j < W)), (t, j)


def test_fa_layer_keeps_full_attention_and_has_no_ahn(fixtures_root):
    model = load_reference(fixtures_root / LLAMA_MERGED, window=W_TEST, sinks=2)  # fa_layer_ids "1"
    assert model.config.fa_layer_ids == (1,)
    assert [layer.ahn is None for layer in model.model.layers] == [False, True, False]
    ids = token_ids(model.config.vocab_size, 90, seed=6)
    with torch.no_grad():
        want = model(ids)
    got, cache = run_incremental(model, ids, [4, 9, 1])
    assert_close_logits(got, want)
    # the fa layer kept every token; the others sinks + window only (bounded)
    assert [lc.n_tokens() for lc in cache.layers] == [2 + W_TEST, 90, 2 + W_TEST]
    # layer 1 attends fully whatever the mode
    layer, L = model.model.layers[1], 50
    x = torch.randn(1, L, model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    pos = torch.arange(L)
    cos, sin = rope_cos_sin(pos, model.config.head_dim, model.config.rope_theta)
    full, win = window_mask(pos, pos, None, 0), window_mask(pos, pos, W_TEST, 2)
    with torch.no_grad():
        a = layer(x, cos, sin, full, win, "ahn", W_TEST, 2, "auto")
        b = layer(x, cos, sin, full, win, "full", None, 0, "auto")
        c = model.model.layers[0](x, cos, sin, full, win, "window", W_TEST, 2, "auto")
        d = model.model.layers[0](x, cos, sin, full, win, "full", None, 0, "auto")
    assert torch.equal(a, b)
    assert not torch.allclose(c, d)  # a normal layer does window its attention


def test_cache_stays_bounded(fixtures_root):
    S = 4
    model = load(fixtures_root, "llama", GDN, window=W_TEST, sinks=S)
    cache = model.new_cache()
    ids = token_ids(model.config.vocab_size, 150, seed=8)
    for pos in range(0, 150, 7):
        model.forward_incremental(ids[:, pos:pos + 7], cache)
        for lc in cache.layers:
            assert lc.n_tokens() <= S + W_TEST
            assert lc.g.shape[1] == lc.k.shape[1]  # one gate row per window token
    H, d = model.config.num_attention_heads, model.config.head_dim
    assert all(lc.n_tokens() == S + W_TEST and lc.state.shape == (1, H, d, d) for lc in cache.layers)
    assert all(lc.state.dtype == torch.float32 for lc in cache.layers)


@pytest.mark.parametrize("family", FAMILIES)
def test_full_mode_matches_transformers(fixtures_root, family):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(fixtures_root / base_folder(family), dtype=torch.float32)
    model = load_reference(fixtures_root / base_folder(family))
    ids = token_ids(model.config.vocab_size, 48, B=2, seed=5)
    with torch.no_grad():
        assert_close_logits(model(ids, mode="full"), hf(ids).logits, rtol=1e-5)


def test_base_only_model_runs_full_and_window(fixtures_root):
    model = load_reference(fixtures_root / base_folder("qwen2"))
    ids = token_ids(model.config.vocab_size, 40, seed=7)
    with torch.no_grad():
        full = model(ids)  # default mode without AHN: full
        window = model(ids, mode="window", window=8, sinks=2)
    assert not model.has_ahn and not torch.equal(full, window)
    inc, _ = run_incremental(model, ids, [3], cache=model.new_cache(mode="window", window=8, sinks=2))
    assert_close_logits(inc, window)
    with pytest.raises(AHNConfigError, match="mode 'ahn' needs AHN weights"):
        model(ids, mode="ahn", window=8)
    with pytest.raises(AHNConfigError, match="mode 'window' needs a window"):
        model(ids, mode="window")


def test_per_call_window_and_sinks_override(fixtures_root):
    a = load(fixtures_root, "qwen2", MAMBA2)  # config: W 32, S 0
    b = load(fixtures_root, "qwen2", MAMBA2, window=6, sinks=5)
    ids = token_ids(a.config.vocab_size, 50, seed=10)
    with torch.no_grad():
        assert torch.equal(a(ids, window=6, sinks=5), b(ids))
        assert not torch.equal(a(ids), b(ids))


def test_bfloat16_model_tracks_float32(fixtures_root):
    ids = token_ids(49152, 64, seed=11)
    f32 = load(fixtures_root, "llama", GDN, window=W_TEST, sinks=2)
    bf16 = load(fixtures_root, "llama", GDN, window=W_TEST, sinks=2, dtype=torch.bfloat16)
    with torch.no_grad():
        a, b = f32(ids), bf16(ids)
    assert b.dtype == torch.bfloat16
    assert (a - b.float()).abs().max() < 0.05 * a.abs().max()
    assert all(lc.state.dtype == torch.float32 for lc in run_incremental(bf16, ids, [16])[1].layers)


def test_distillation_setup_trains_only_ahn(fixtures_root):
    """attach_ahn: fresh AHN = window exactly; KL(teacher || student) reaches AHN params only."""
    model = load_reference(fixtures_root / base_folder("llama"))
    attach_ahn(model, "gdn", window=8, sinks=2, seed=0)
    ids = token_ids(model.config.vocab_size, 48, seed=12)
    with torch.no_grad():
        assert torch.equal(model(ids, mode="ahn"), model(ids, mode="window"))
        teacher = F.log_softmax(model(ids, mode="full"), -1)
    attach_ahn(model, GDN, window=8, sinks=2, o_proj_std=0.02, seed=0)
    model.freeze_base()
    student = F.log_softmax(model(ids, mode="ahn"), -1)
    loss = F.kl_div(student[:, 10:], teacher[:, 10:], log_target=True, reduction="batchmean")
    loss.backward()
    ahn = {id(p) for p in model.ahn_parameters()}
    assert len(ahn) == 3 * 7  # 3 layers x 7 trainable GDN tensors (D is a buffer)
    for name, p in model.named_parameters():
        if id(p) in ahn:
            assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None and not p.requires_grad, name


def test_save_ahn_round_trip(fixtures_root, tmp_path):
    model = load(fixtures_root, "qwen2", GDN)
    out = save_ahn(model, tmp_path / "ahn")
    again = load_reference(fixtures_root / base_folder("qwen2"), out)
    assert again.config.window == model.config.window and again.config.sinks == model.config.sinks
    for (ka, va), (kb, vb) in zip(sorted(ahn_state_dict(model).items()), sorted(ahn_state_dict(again).items())):
        assert ka == kb and torch.equal(va, vb)  # bf16 fixture values survive bf16 saving exactly
    ids = token_ids(model.config.vocab_size, 50, seed=13)
    with torch.no_grad():
        assert torch.equal(model(ids, window=8, sinks=2), again(ids, window=8, sinks=2))


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_long_sequence_incremental_equals_parallel(fixtures_root, variant):
    """Fixture window (32) and sinks, ~2k tokens, chunked recurrence across many chunks."""
    model = load(fixtures_root, "llama", variant)
    ids = token_ids(model.config.vocab_size, 2048, seed=14)
    with torch.no_grad():
        want = model(ids)
    got, _ = run_incremental(model, ids, [1, 63, 200])
    assert_close_logits(got, want)
    assert math.isfinite(want.abs().max().item())
