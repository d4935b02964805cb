"""The memory recurrence: naive scan vs an independent float64 loop, chunked vs naive, fla."""

from __future__ import annotations

import importlib.util
import os
import sys
import types
import zipfile

import numpy as np
import pytest
import torch

from ahn_gguf.build.pins import PinnedDownloadError, PinnedFile, pinned_path
from ahn_gguf.constants import DN, GDN, MAMBA2, VARIANTS
from ahn_gguf.reference import chunked_scan, l2norm, naive_scan, pack_gate_rows, read_scale, scan


def random_inputs(variant, T, H=3, d=16, B=None, seed=0, mask_p=0.0, state=False):
    """Scan inputs in realistic ranges: log-decays in [-2, 0), beta in (0, 1), dt in (0, 0.5)."""
    g_ = torch.Generator().manual_seed(seed)
    lead = (T,) if B is None else (B, T)
    q = torch.randn(*lead, H, d, generator=g_) * 2
    k = torch.randn(*lead, H, d, generator=g_) * 2
    v = torch.randn(*lead, H, d, generator=g_)
    if variant == DN:
        g = torch.zeros(*lead, H)
    else:
        g = -torch.rand(*lead, H, generator=g_) * 2
    b = torch.rand(*lead, H, generator=g_) * (0.5 if variant == MAMBA2 else 1.0)
    if variant == MAMBA2:
        g = b * -torch.rand(H, generator=g_).mul(15).add(1)  # g = dt * A, A in [-16, -1]
    mask = (torch.rand(T, generator=g_) >= mask_p) if mask_p else None
    s0 = torch.randn(*(() if B is None else (B,)), H, d, d, generator=g_) * 0.5 if state else None
    return q, k, v, g, b, mask, s0


def spec_loop_float64(variant, q, k, v, g, b, mask, state):
    """docs/AHN-SPEC.md written out again, independently: numpy float64, unbatched [T, H, d].

    GDN/DN keep M (key x value); Mamba2 keeps Hs (value x key) as the spec writes it.
    """
    q, k, v, g, b = (np.asarray(x, dtype=np.float64) for x in (q, k, v, g, b))
    T, H, d = q.shape
    out = np.zeros((T, H, v.shape[-1]))
    for h in range(H):
        if variant == MAMBA2:
            Hs = np.zeros((d, d)) if state is None else np.asarray(state[h], dtype=np.float64).T.copy()
        else:
            M = np.zeros((d, d)) if state is None else np.asarray(state[h], dtype=np.float64).copy()
        for t in range(T):
            if mask is None or bool(mask[t]):
                if variant == MAMBA2:
                    kh = k[t, h] / max(np.linalg.norm(k[t, h]), 1e-12)
                    Hs = np.exp(g[t, h]) * Hs + b[t, h] * np.outer(v[t, h], kh)
                else:
                    kh = k[t, h] / np.sqrt(np.sum(k[t, h] ** 2) + 1e-6)
                    M = np.exp(g[t, h]) * M
                    delta = b[t, h] * (v[t, h] - M.T @ kh)
                    M = M + np.outer(kh, delta)
            if variant == MAMBA2:
                qh = q[t, h] / max(np.linalg.norm(q[t, h]), 1e-12)
                out[t, h] = Hs @ qh
            else:
                qh = q[t, h] / np.sqrt(np.sum(q[t, h] ** 2) + 1e-6)
                out[t, h] = (M.T @ qh) / np.sqrt(d)
    return out


def rel_err(a, b):
    a, b = torch.as_tensor(a, dtype=torch.float64), torch.as_tensor(b, dtype=torch.float64)
    return ((a - b).abs().max() / b.abs().max().clamp(min=1e-30)).item()


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("mask_p,state", [(0.0, False), (0.3, True)])
def test_naive_scan_matches_spec_float64(variant, mask_p, state):
    q, k, v, g, b, mask, s0 = random_inputs(variant, T=40, mask_p=mask_p, state=state, seed=1)
    o, _ = naive_scan(variant, q, k, v, g, b, mask, s0)
    want = spec_loop_float64(variant, q, k, v, g, b, mask, s0)
    assert rel_err(o, want) < 2e-5


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("T,chunk", [(1, 16), (37, 16), (64, 16), (130, 64), (200, 32)])
def test_chunked_equals_naive(variant, T, chunk):
    # masks with gaps, a non-zero initial state, T not a multiple of the chunk size, a batch
    q, k, v, g, b, mask, s0 = random_inputs(variant, T=T, B=2, mask_p=0.25, state=True, seed=T)
    o1, s1 = naive_scan(variant, q, k, v, g, b, mask, s0)
    o2, s2 = chunked_scan(variant, q, k, v, g, b, mask, s0, chunk_size=chunk)
    assert o2.shape == o1.shape and s2.shape == s1.shape
    assert rel_err(o2, o1) < 1e-5
    assert rel_err(s2, s1) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_unbatched_and_per_batch_masks(variant):
    q, k, v, g, b, _, s0 = random_inputs(variant, T=50, B=2, state=True, seed=7)
    mask = torch.rand(2, 50, generator=torch.Generator().manual_seed(3)) > 0.4  # one mask per sequence
    o_b, s_b = chunked_scan(variant, q, k, v, g, b, mask, s0, chunk_size=16)
    for i in range(2):
        o_i, s_i = naive_scan(variant, q[i], k[i], v[i], g[i], b[i], mask[i], s0[i])
        assert rel_err(o_b[i], o_i) < 1e-5 and rel_err(s_b[i], s_i) < 1e-5


@pytest.mark.parametrize("variant", VARIANTS)
def test_steps_without_write_keep_the_state_and_still_read(variant):
    q, k, v, g, b, _, s0 = random_inputs(variant, T=12, state=True, seed=5)
    mask = torch.zeros(12, dtype=torch.bool)
    read = torch.einsum("hkv,thk->thv", s0, l2norm(variant, q) * read_scale(variant, q.shape[-1]))
    for impl in ("naive", "chunked"):
        o, s = scan(variant, q, k, v, g, b, mask, s0, impl=impl, chunk_size=8)
        assert torch.equal(s, s0), impl  # exactly: a step without a write is the identity
        assert rel_err(o, read) < 1e-6, impl


@pytest.mark.parametrize("variant", VARIANTS)
def test_chunked_gradients_match_naive(variant):
    q, k, v, g, b, mask, s0 = random_inputs(variant, T=45, B=1, mask_p=0.2, state=True, seed=11)
    grads = []
    for impl in ("naive", "chunked"):
        leaves = [x.clone().requires_grad_(True) for x in (q, k, v, g, b, s0)]
        o, s = scan(variant, *leaves[:5], mask, leaves[5], impl=impl, chunk_size=16)
        (o.square().sum() + s.sum()).backward()
        grads.append([x.grad for x in leaves])
    for name, a, c in zip("qkvgbs", *grads):
        if variant == DN and name == "g":
            continue  # DN has no decay: its g stays 0 and its gradient is irrelevant
        assert torch.isfinite(c).all(), name
        assert rel_err(c, a) < 1e-4, name


def test_chunked_is_stable_with_strong_decay_and_long_chunks():
    # log-decays near -20 per step: cumulative sums reach -1000s inside a chunk of 128
    q, k, v, g, b, _, _ = random_inputs(GDN, T=300, B=1, seed=2)
    g = g * 10
    o1, _ = naive_scan(GDN, q, k, v, g, b)
    o2, _ = chunked_scan(GDN, q, k, v, g, b, chunk_size=128)
    assert torch.isfinite(o2).all()
    assert rel_err(o2, o1) < 1e-5


def test_pack_gate_rows_layout():
    g = torch.tensor([[-0.1, -0.2]])
    b = torch.tensor([[0.3, 0.4]])
    assert pack_gate_rows(GDN, g, b).tolist() == [[pytest.approx(-0.1), pytest.approx(-0.2), pytest.approx(0.3),
                                                   pytest.approx(0.4)]]
    assert pack_gate_rows(DN, torch.zeros_like(g), b).tolist() == [[pytest.approx(0.3), pytest.approx(0.4)]]
    assert pack_gate_rows(MAMBA2, g, b).shape == (1, 4)


# --- flash-linear-attention's naive references -----------------------------------------------

FLA_WHEEL = PinnedFile("fla-core", "0.6.0", "fla_core-0.6.0-py3-none-any.whl",
                       "b0708b70e0b119cd58a0a5146ea56cb175cef6ed969d8ac60267e3e077ce3ebd", sdist=False)
FLA_FILES = {"gated_delta_rule": "fla/ops/gated_delta_rule/naive.py", "delta_rule": "fla/ops/delta_rule/naive.py"}


def _load_fla_module(wheel, member: str, name: str):
    """Load one file of the wheel as a module. Importing `fla` needs triton, so the file is
    loaded on its own; its `from einops import rearrange` gets a stub when einops is absent
    (the recurrent functions used here do not call it)."""
    with zipfile.ZipFile(wheel) as zf:
        source = zf.read(member).decode()
    stub = None
    if importlib.util.find_spec("einops") is None:
        stub = types.ModuleType("einops")

        def rearrange(*_a, **_k):
            raise NotImplementedError("einops stub")

        stub.rearrange = rearrange
        sys.modules["einops"] = stub
    try:
        module = types.ModuleType(name)
        module.__file__ = f"{wheel}!{member}"
        exec(compile(source, module.__file__, "exec"), module.__dict__)
    finally:
        if stub is not None:
            del sys.modules["einops"]
    return module


@pytest.fixture(scope="module")
def fla():
    try:
        wheel = pinned_path(FLA_WHEEL)
    except PinnedDownloadError as e:
        if os.environ.get("AHN_GGUF_OFFLINE") == "1":
            pytest.skip(f"AHN_GGUF_OFFLINE=1 and fla-core 0.6.0 is not cached: {e}")
        pytest.fail(f"could not obtain fla-core==0.6.0 for the comparison (set AHN_GGUF_OFFLINE=1 to skip): {e}")
    return {key: _load_fla_module(wheel, member, f"fla_naive_{key}") for key, member in FLA_FILES.items()}


def _spec_l2(x):
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)


def test_gdn_matches_fla_naive_recurrent_gated_delta_rule(fla, record_property):
    fn = fla["gated_delta_rule"].naive_recurrent_gated_delta_rule
    record_property("fla_function", f"fla-core 0.6.0 {FLA_FILES['gated_delta_rule']}:{fn.__name__}")
    q, k, v, g, b, _, s0 = random_inputs(GDN, T=70, B=2, H=4, d=32, state=True, seed=21)
    o, s = naive_scan(GDN, q, k, v, g, b, None, s0)
    # fla takes normalised q/k and [B, T, H, K] layout, state [B, H, K, V] like ours
    o_ref, s_ref = fn(_spec_l2(q), _spec_l2(k), v, b, g, scale=32 ** -0.5, initial_state=s0,
                      output_final_state=True)
    assert rel_err(o, o_ref) < 1e-5
    assert rel_err(s, s_ref) < 1e-5
    o_c, _ = chunked_scan(GDN, q, k, v, g, b, None, s0, chunk_size=32)
    assert rel_err(o_c, o_ref) < 1e-5


def test_dn_matches_fla_delta_rule_recurrence(fla, record_property):
    fn = fla["delta_rule"].delta_rule_recurrence
    record_property("fla_function", f"fla-core 0.6.0 {FLA_FILES['delta_rule']}:{fn.__name__}")
    q, k, v, g, b, _, s0 = random_inputs(DN, T=70, B=2, H=4, d=32, state=True, seed=22)
    o, s = naive_scan(DN, q, k, v, g, b, None, s0)
    # delta_rule_recurrence: [B, H, T, D] layout, scale d^-1/2 inside, beta [B, H, T]
    bhtd = lambda x: x.transpose(1, 2).contiguous()  # noqa: E731
    o_ref, s_ref = fn(bhtd(_spec_l2(q)), bhtd(_spec_l2(k)), bhtd(v), b.transpose(1, 2).contiguous(),
                      initial_state=s0.clone(), output_final_state=True)
    assert rel_err(o, o_ref.transpose(1, 2)) < 1e-5
    assert rel_err(s, s_ref) < 1e-5
