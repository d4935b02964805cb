"""The AHN memory recurrence (docs/AHN-SPEC.md), as a plain per-token loop and in chunked form.

Conventions shared by every function here:

- q, k, v: [T, H, d] or [B, T, H, d]. k and v are already mapped to AHN heads (KV head
  h // n_rep for AHN head h) but NOT L2-normalised; q is not normalised either.
- g: [(B,) T, H] log-decay (exp(g) multiplies the state before the write; zeros for DN).
- b: [(B,) T, H] beta (GDN, DN) or dt (Mamba2).
- write_mask: [T] or [B, T] bool, None = all True. Step t writes row t (k[t], v[t], g[t],
  b[t]) if write_mask[t], then reads with q[t]; a step without a write still reads.
  The caller aligns rows: row t of k/v/g/b is the token EVICTED at step t, q[t] the query.
- state: [(B,) H, d, d_v] = M in docs/AHN-SPEC.md orientation (row = key dim, column = value dim),
  float32; None = zeros. (native/ahn_memory.h stores the transpose.)
- returns (o, final_state): o [(B,) T, H, d_v] float32, before the output norm.
"""

from __future__ import annotations

import torch

from ..constants import MAMBA2
from .functional import check_variant, l2norm, read_scale

DEFAULT_CHUNK = 64


def _prepare(variant, q, k, v, g, b, write_mask, state):
    """Batch-ify, normalise, cast to float32. Returns the pieces plus whether to un-batch."""
    check_variant(variant)
    batched = q.dim() == 4
    if not batched:
        q, k, v, g, b = (x.unsqueeze(0) for x in (q, k, v, g, b))
        if state is not None:
            state = state.unsqueeze(0)
    B, T, H, d = q.shape
    if k.shape != (B, T, H, d) or v.shape[:3] != (B, T, H) or g.shape != (B, T, H) or b.shape != (B, T, H):
        raise ValueError(
            f"scan shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"g {tuple(g.shape)}, b {tuple(b.shape)}"
        )
    if write_mask is not None:
        write_mask = write_mask.to(torch.bool)
        if write_mask.dim() == 1:
            write_mask = write_mask.unsqueeze(0).expand(B, T)
        if write_mask.shape != (B, T):
            raise ValueError(f"write_mask shape {tuple(write_mask.shape)} does not match (B, T) = {(B, T)}")
    dv = v.shape[-1]
    if state is None:
        state = q.new_zeros(B, H, d, dv, dtype=torch.float32)
    elif state.shape != (B, H, d, dv):
        raise ValueError(f"state shape {tuple(state.shape)}, expected {(B, H, d, dv)}")
    qn = l2norm(variant, q) * read_scale(variant, d)
    kn = l2norm(variant, k)
    return qn, kn, v.float(), g.float(), b.float(), write_mask, state.float(), batched


def naive_scan(variant, q, k, v, g, b, write_mask=None, state=None):
    """The obvious per-token loop: docs/AHN-SPEC.md's update and read, one step at a time (the truth)."""
    qn, kn, v, g, b, write_mask, M, batched = _prepare(variant, q, k, v, g, b, write_mask, state)
    outs = []
    for t in range(qn.shape[1]):
        k_t, v_t = kn[:, t], v[:, t]                       # [B, H, d], [B, H, dv]
        decay = g[:, t].exp()[..., None, None]              # [B, H, 1, 1]
        b_t = b[:, t][..., None]                            # [B, H, 1]
        if variant == MAMBA2:
            # Hs <- exp(dt A) Hs + dt v k^T, written here as M = Hs^T (key x value)
            M_new = decay * M + k_t.unsqueeze(-1) * (b_t * v_t).unsqueeze(-2)
        else:
            M_dec = decay * M
            delta = b_t * (v_t - (k_t.unsqueeze(-2) @ M_dec).squeeze(-2))   # v - M^T k
            M_new = M_dec + k_t.unsqueeze(-1) * delta.unsqueeze(-2)
        if write_mask is None:
            M = M_new
        else:
            M = torch.where(write_mask[:, t][:, None, None, None], M_new, M)
        outs.append((qn[:, t].unsqueeze(-2) @ M).squeeze(-2))            # M^T q
    o = torch.stack(outs, dim=1) if outs else v.new_zeros(v.shape)
    return (o, M) if batched else (o[0], M[0])


# log of the smallest decay factor `chunked_scan(..., flush_subnormals=True)` keeps: exp(-69) ~ 1e-30
# (float32 subnormals start at 1.2e-38). Strongly decaying heads (A up to 16 at initialisation)
# give log-decay sums of -100 and less inside one chunk; their exponentials are subnormal, and
# x86 arithmetic on subnormals is ~100x slower. torch.set_flush_denormal only covers the calling
# thread, not PyTorch's intra-op workers (a distillation step ran 2-10x slower, erratically, with
# two threads than with one). A factor below 1e-30 adds nothing a float32 sum can hold.
LOG_FLUSH = -69.0


def _exp(x: torch.Tensor, flush: bool) -> torch.Tensor:
    """exp(x) as float32 (x float64, -inf allowed); with `flush`, exactly 0 where x < LOG_FLUSH."""
    if flush:
        x = x.masked_fill(x < LOG_FLUSH, float("-inf"))
    return x.exp().float()


def chunked_scan(variant, q, k, v, g, b, write_mask=None, state=None, chunk_size: int = DEFAULT_CHUNK,
                 flush_subnormals: bool = False):
    """Same result as naive_scan, parallel inside chunks of `chunk_size` steps (autograd-friendly).

    The UT/WY form of flash-linear-attention's chunk algorithm. Inside a chunk, with
    G = cumsum(g), the state after step i is
        S_i = exp(G_i) S_0 + sum_{j<=i} exp(G_i - G_j) k_j U_j^T
    where U_j is the value actually written at step j:
        delta rules: U_j = beta_j (v_j - S~_j^T k_j), S~_j = exp(g_j) S_{j-1}, i.e.
                     (I + A) U = diag(beta) V - diag(beta exp(G)) K S_0,
                     A_jl = beta_j exp(G_j - G_l) k_j.k_l for l < j (unit lower-triangular solve)
        Mamba2:      U_j = dt_j v_j
    and the reads are O = diag(exp(G)) Q S_0 + (Q K^T o exp(G_i - G_j))_{j<=i} U.
    Gates stay log-decays, cumulated in float64, and only differences G_i - G_j (j <= i,
    hence <= 0) are exponentiated, so nothing overflows or loses its small differences.
    A step without a write is g = 0, b = 0: exactly the identity, which is also how T is
    padded to a multiple of the chunk size.
    `flush_subnormals` sets decay factors below 1e-30 to exactly 0 (LOG_FLUSH: training speed).
    """
    qn, kn, v, g, b, write_mask, S, batched = _prepare(variant, q, k, v, g, b, write_mask, state)
    B, T, H, d = qn.shape
    dv = v.shape[-1]
    if write_mask is not None:
        keep = write_mask[..., None]
        g = torch.where(keep, g, torch.zeros_like(g))
        b = torch.where(keep, b, torch.zeros_like(b))
    C = chunk_size
    N = max(1, -(-T // C))
    pad = N * C - T

    def chunks(x):  # [B, T, H, ...] -> [B, H, N, C, ...], zero-padded in time
        x = x.movedim(2, 1)  # [B, H, T, ...]
        if pad:
            x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], dim=2)
        return x.reshape(B, H, N, C, *x.shape[3:])

    qc, kc, vc, gc, bc = chunks(qn), chunks(kn), chunks(v), chunks(g), chunks(b)
    # cumulative log-decays in float64: G_i - G_j of two large cumsums (strong decay reaches
    # -1000s within a chunk) would otherwise lose the digits of the small difference
    G64 = gc.double().cumsum(-1)                                        # [B, H, N, C]
    eG = _exp(G64, flush_subnormals)                                    # exp(G_i) <= 1
    incl = torch.ones(C, C, dtype=torch.bool, device=qn.device).tril()  # j <= i
    diff = (G64.unsqueeze(-1) - G64.unsqueeze(-2)).masked_fill(~incl, float("-inf"))
    decay = _exp(diff, flush_subnormals)                                 # exp(G_i - G_j), 0 above the diagonal
    qk = (qc @ kc.transpose(-1, -2)) * decay                             # [B, H, N, C, C]

    if variant == MAMBA2:
        u = bc.unsqueeze(-1) * vc
        w = None
    else:
        strict = torch.ones(C, C, dtype=torch.bool, device=qn.device).tril(-1)
        A = (bc.unsqueeze(-1) * (kc @ kc.transpose(-1, -2)) * decay).masked_fill(~strict, 0.0)
        eye = torch.eye(C, dtype=A.dtype, device=A.device)
        IA = A + eye
        rhs = torch.cat([bc.unsqueeze(-1) * vc, (bc * eG).unsqueeze(-1) * kc], dim=-1)
        sol = torch.linalg.solve_triangular(IA, rhs, upper=False, unitriangular=True)
        u, w = sol[..., :dv], sol[..., dv:]

    tail = _exp(G64[..., -1:] - G64, flush_subnormals)                   # exp(G_C - G_j) <= 1
    outs = []
    for n in range(N):
        U = u[:, :, n] if w is None else u[:, :, n] - w[:, :, n] @ S
        outs.append((qc[:, :, n] * eG[:, :, n].unsqueeze(-1)) @ S + qk[:, :, n] @ U)
        S = eG[:, :, n, -1, None, None] * S + (kc[:, :, n] * tail[:, :, n].unsqueeze(-1)).transpose(-1, -2) @ U
    o = torch.stack(outs, dim=2).reshape(B, H, N * C, dv)[:, :, :T].movedim(1, 2)
    return (o, S) if batched else (o[0], S[0])


def scan(variant, q, k, v, g, b, write_mask=None, state=None, impl: str = "auto",
         chunk_size: int = DEFAULT_CHUNK):
    """Dispatch: impl "naive", "chunked", or "auto" (chunked once T reaches one chunk)."""
    if impl == "auto":
        impl = "chunked" if q.shape[-3] >= chunk_size else "naive"
    if impl == "naive":
        return naive_scan(variant, q, k, v, g, b, write_mask, state)
    if impl == "chunked":
        return chunked_scan(variant, q, k, v, g, b, write_mask, state, chunk_size)
    raise ValueError(f"unknown recurrence impl {impl!r}; expected 'auto', 'naive' or 'chunked'")
