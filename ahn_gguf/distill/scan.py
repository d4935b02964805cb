"""The chunked AHN scan for training: `reference.recurrence.chunked_scan` without subnormal floats.

Same algorithm and conventions as the reference's chunked scan (the UT/WY form; see its
docstring), same result to float precision (tests/test_distill.py holds it against
`naive_scan`), with one difference that matters for speed on CPUs: every decay factor
exp(G_i - G_j), exp(G_i), exp(G_C - G_j) below FLUSH (1e-30) is set to exactly 0.

Why: strongly decaying heads (A up to 16 at initialisation) give log-decay sums of -100 and
less inside one chunk; their exponentials are subnormal floats, and x86 arithmetic on
subnormals is ~100x slower. `torch.set_flush_denormal(True)` only covers the calling thread,
not PyTorch's intra-op worker threads, and a training step measured here ran 2-10x slower,
erratically, with two threads than with one. A factor below 1e-30 contributes nothing a float32
sum can hold, so zeroing it changes no result; it only keeps subnormals out of the step.
"""

from __future__ import annotations

import torch

from ..constants import MAMBA2
from ..reference.recurrence import DEFAULT_CHUNK, _prepare

# log of the smallest decay factor kept (exp(-69) ~ 1e-30; float32 subnormals start at 1.2e-38)
LOG_FLUSH = -69.0


def _exp_flushed(x: torch.Tensor) -> torch.Tensor:
    """exp(x) as float32, exactly 0 where x < LOG_FLUSH (x may be float64, -inf allowed)."""
    return x.masked_fill(x < LOG_FLUSH, float("-inf")).exp().float()


def chunked_scan(variant, q, k, v, g, b, write_mask=None, state=None, chunk_size: int = DEFAULT_CHUNK):
    """`reference.recurrence.chunked_scan`, with decay factors < 1e-30 flushed to 0 (module docstring)."""
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
        x = x.movedim(2, 1)
        if pad:
            x = torch.cat([x, x.new_zeros(*x.shape[:2], pad, *x.shape[3:])], dim=2)
        return x.reshape(B, H, N, C, *x.shape[3:])

    qc, kc, vc, gc, bc = chunks(qn), chunks(kn), chunks(v), chunks(g), chunks(b)
    G64 = gc.double().cumsum(-1)                                         # [B, H, N, C]
    eG = _exp_flushed(G64)
    incl = torch.ones(C, C, dtype=torch.bool, device=qn.device).tril()
    diff = (G64.unsqueeze(-1) - G64.unsqueeze(-2)).masked_fill(~incl, float("-inf"))
    decay = _exp_flushed(diff)
    qk = (qc @ kc.transpose(-1, -2)) * decay

    if variant == MAMBA2:
        u = bc.unsqueeze(-1) * vc
        w = None
    else:
        strict = torch.ones(C, C, dtype=torch.bool, device=qn.device).tril(-1)
        A = (bc.unsqueeze(-1) * (kc @ kc.transpose(-1, -2)) * decay).masked_fill(~strict, 0.0)
        IA = A + torch.eye(C, dtype=A.dtype, device=A.device)
        rhs = torch.cat([bc.unsqueeze(-1) * vc, (bc * eG).unsqueeze(-1) * kc], dim=-1)
        sol = torch.linalg.solve_triangular(IA, rhs, upper=False, unitriangular=True)
        u, w = sol[..., :dv], sol[..., dv:]

    tail = _exp_flushed(G64[..., -1:] - G64)
    outs = []
    for n in range(N):
        U = u[:, :, n] if w is None else u[:, :, n] - w[:, :, n] @ S
        outs.append((qc[:, :, n] * eG[:, :, n].unsqueeze(-1)) @ S + qk[:, :, n] @ U)
        S = eG[:, :, n, -1, None, None] * S + (kc[:, :, n] * tail[:, :, n].unsqueeze(-1)).transpose(-1, -2) @ U
    o = torch.stack(outs, dim=2).reshape(B, H, N * C, dv)[:, :, :T].movedim(1, 2)
    return (o, S) if batched else (o[0], S[0])
