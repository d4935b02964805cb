"""docs/AHN-SPEC.md's per-token formulas, in one place: L2 norms, read scale, write gates, readout.

Everything here is computed in float32 whatever the model dtype: the recurrent state and
the log-decays are F32 in the spec, and the reference is the oracle, not a fast path.

`fn` below is an AHN layer's parameter holder (`model.layers.{i}.ahn.fn`), whose
attributes carry the checkpoint names of constants.AHN_TENSORS (`fn.b_proj.weight`, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..constants import AHN_L2_EPS_DELTA, AHN_L2_EPS_MAMBA2, AHN_NORM_EPS, DN, GDN, MAMBA2, VARIANTS


def check_variant(variant: str) -> str:
    if variant not in VARIANTS:
        raise ValueError(f"unknown AHN variant {variant!r}; expected one of {', '.join(VARIANTS)}")
    return variant


def l2norm(variant: str, x: torch.Tensor) -> torch.Tensor:
    """The variant's L2 normalisation of q and k over the last (head) dimension."""
    x = x.float()
    if variant == MAMBA2:
        return F.normalize(x, dim=-1, eps=AHN_L2_EPS_MAMBA2)                   # x / max(||x||, eps)
    return x / torch.sqrt((x * x).sum(-1, keepdim=True) + AHN_L2_EPS_DELTA)   # eps inside the sqrt


def read_scale(variant: str, head_dim: int) -> float:
    """Scale of the read o = scale * M^T q^: d^-1/2 for the delta rules, 1 for Mamba2."""
    return 1.0 if variant == MAMBA2 else head_dim ** -0.5


def write_gates(variant: str, fn: torch.nn.Module, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(g, b), each [..., H] float32, from u = input_layernorm(x) of the token being written.

    g is the log-decay (the state is multiplied by exp(g) before the write; 0 for DN);
    b is beta (GDN, DN) or dt (Mamba2, which also scales the write by it).
    """
    u = u.float()
    if variant == GDN:
        beta = torch.sigmoid(F.linear(u, fn.b_proj.weight.float()))
        g = -fn.A_log.float().exp() * F.softplus(F.linear(u, fn.a_proj.weight.float()) + fn.dt_bias.float())
        return g, beta
    if variant == DN:
        beta = torch.sigmoid(F.linear(u, fn.b_proj.weight.float()))
        return torch.zeros_like(beta), beta
    if variant == MAMBA2:
        # dt_proj has its own bias, and dt_bias comes on top (docs/AHN-SPEC.md)
        dt = F.softplus(F.linear(u, fn.dt_proj.weight.float(), fn.dt_proj.bias.float()) + fn.dt_bias.float())
        return dt * -fn.A_log.float().exp(), dt
    raise ValueError(f"unknown AHN variant {variant!r}")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    x = x.float()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def readout(variant: str, fn: torch.nn.Module, o: torch.Tensor, u: torch.Tensor,
            eps: float = AHN_NORM_EPS) -> torch.Tensor:
    """AHN output path: memory read o [..., H, d] -> y [..., H, d_out] (float32).

    u is input_layernorm(x) of the READING token. The result is added, flattened over
    heads, to the attention output before the base model's o_proj.
    """
    u = u.float()
    o = o.float()
    if variant in (GDN, DN):
        gamma = F.linear(u, fn.g_proj.weight.float())                    # one scalar per head
        z = rms_norm(o, fn.o_norm.weight, eps) * F.silu(gamma).unsqueeze(-1)   # gamma*sigmoid(gamma)
    elif variant == MAMBA2:
        zeta = F.linear(u, fn.g_proj.weight.float(), fn.g_proj.bias.float())
        y = o * F.silu(zeta).unsqueeze(-1)                               # gate first ...
        z = rms_norm(y.flatten(-2), fn.norm.weight, eps).view_as(y)      # ... then one norm over H*d
    else:
        raise ValueError(f"unknown AHN variant {variant!r}")
    # o_proj weight (H, d_in, d_out): per head x[h] @ W[h]
    return (z.unsqueeze(-2) @ fn.o_proj.weight.float()).squeeze(-2)


def pack_gate_rows(variant: str, g: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Write gates [..., H] -> the native gate-cache rows [..., 2H] (DN: [..., H]; ahn_memory.h).

    GDN: [g_0..g_{H-1}, beta_0..beta_{H-1}]; DN: [beta...]; Mamba2: [g..., dt...].
    """
    if variant == DN:
        return b.float()
    check_variant(variant)
    return torch.cat([g.float(), b.float()], dim=-1)
