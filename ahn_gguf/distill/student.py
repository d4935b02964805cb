"""One self-distillation step's forward passes: the teacher (full attention) and the student
(sinks + window + AHN) on the same weights, and the KL between them.

The cost saving that shapes this file: for every position t < S + W the student is the teacher.
Its window still covers every earlier token and its memory is empty (nothing has been evicted
yet), so in every layer its hidden state, u, q, k, v at those positions are exactly the
teacher's. The teacher pass therefore hands over, per layer, u / k / v of the first P = S + W
positions (the *prefix*), and the student runs only the *suffix* P .. L-1, which is also
exactly where the loss is taken (positions >= S + W, docs/AHN-SPEC.md "Training"). Per layer the student:

- attends from suffix queries to prefix + suffix keys with the sink + window mask;
- writes tokens S .. L-W-1 (prefix rows for j < P, its own rows after) into the AHN memory with
  the reference's chunked scan, and reads them with the suffix queries, which are exactly the
  readers S+W .. L-1 (docs/AHN-SPEC.md "Which token goes where");
- adds the AHN readout to the attention output before o_proj.

This computes the same function as `ReferenceModel.forward(mode="ahn")` at positions >= P
(tests/quality/test_distill.py checks it), with the reference's own modules and functions.

Memory: the student's layers run under per-layer gradient checkpointing (optional), and the
KL is taken in chunks of positions, each chunk's student logits recomputed in the backward
pass, so no [L, vocab] tensor with a graph is ever kept.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from ..reference.model import ReferenceModel, repeat_kv, rope_cos_sin, window_mask
from ..reference.recurrence import chunked_scan
from ..reference.recurrence import scan as reference_scan

# positions per KL chunk: bounds the [chunk, vocab] logits alive at once; 128 x 49k-vocab floats
# (25 MB) stay under glibc's mmap threshold as tuned by distill.trainer (fewer page faults)
KL_CHUNK = 128


@dataclass
class TeacherPass:
    """What the student needs from the teacher: per-layer prefix u/k/v, suffix log-probs."""

    prefix: int                                   # P = S + W (clipped to L)
    layers: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]   # (u, k, v) [B, P, ...] per layer
    logp_chunks: list[torch.Tensor]              # teacher log-softmax over positions P.., KL_CHUNK at a time


def _autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else nullcontext()


def _no_autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, enabled=False) if bf16 else nullcontext()


def _rope(positions: torch.Tensor, cfg, device: torch.device):
    """RoPE cos/sin computed on the CPU (as the reference does) and moved to `device`."""
    cos, sin = rope_cos_sin(positions.cpu(), cfg.head_dim, cfg.rope_theta)
    return cos.to(device), sin.to(device)


def _attend(q, k, v, mask, n_rep: int, causal: bool = False):
    """softmax attention; q [B, Lq, H, d], k/v [B, Lk, H_kv, d] -> [B, Lq, H*d]."""
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    q, k, v = q.transpose(1, 2), k.to(q.dtype).transpose(1, 2), v.to(q.dtype).transpose(1, 2)
    if causal:
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    else:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return out.transpose(1, 2).flatten(2)


@torch.no_grad()
def teacher_pass(model: ReferenceModel, ids: torch.Tensor, prefix: int, *, bf16: bool = False,
                 kl_chunk: int = KL_CHUNK) -> TeacherPass:
    """Full-attention forward of the frozen model; returns the prefix states and suffix log-probs."""
    B, L = ids.shape
    P = min(prefix, L)
    cfg = model.config
    cos, sin = _rope(torch.arange(L), cfg, ids.device)
    layers = []
    with _autocast(ids.device, bf16):
        x = model.model.embed_tokens(ids).float()
        for layer in model.model.layers:
            u = layer.input_layernorm(x)
            q, k, v = layer.self_attn.qkv(u, cos, sin)
            layers.append((u[:, :P].float(), k[:, :P].float(), v[:, :P].float()))
            a = _attend(q, k, v, None, layer.n_rep, causal=True)
            x = x + layer.self_attn.o_proj(a).float()
            x = x + layer.mlp(layer.post_attention_layernorm(x)).float()
        h = model.model.norm(x[:, P:])
        chunks = [F.log_softmax(model.logits(h[:, i:i + kl_chunk]).float(), dim=-1)
                  for i in range(0, L - P, kl_chunk)]
    return TeacherPass(P, layers, chunks)


def _student_layer(layer, x, u_pre, k_pre, v_pre, cos, sin, mask, window: int, sinks: int,
                   impl: str, bf16: bool):
    """One decoder layer over the suffix positions (see the module docstring)."""
    device = x.device
    P = u_pre.shape[1]
    u = layer.input_layernorm(x)
    q, k, v = layer.self_attn.qkv(u, cos, sin)
    k_all, v_all = torch.cat([k_pre.to(k.dtype), k], 1), torch.cat([v_pre.to(v.dtype), v], 1)
    a = _attend(q, k_all, v_all, mask, layer.n_rep)
    L = P + x.shape[1]
    if layer.ahn is not None and L - window - sinks > 0:
        with _no_autocast(device, bf16):
            u_all = torch.cat([u_pre.float(), u.float()], 1)
            a = a.float() + _ahn_contribution(layer, q, u, u_all, k_all, v_all, window, sinks, impl)
    x = x + layer.self_attn.o_proj(a).float()
    return x + layer.mlp(layer.post_attention_layernorm(x)).float()


def _ahn_contribution(layer, q, u, u_all, k_all, v_all, window: int, sinks: int, impl: str) -> torch.Tensor:
    """The AHN readout added to the attention output of the queries at positions P .. L-1.

    q, u: those queries' rows [B, L-P, ...]; u_all, k_all, v_all: every position 0 .. L-1 (the
    written tokens are among them). Returns [B, L-P, H*d] float32, zero for the queries whose
    memory is still empty (positions < S + W). Needs P <= S + W and L > S + W.
    """
    L, P = u_all.shape[1], u_all.shape[1] - q.shape[1]
    written = slice(sinks, L - window)                  # tokens S .. L-W-1 are written ...
    r0 = sinks + window - P                             # ... and read by queries S+W .. L-1
    g, b = layer.ahn.write_gates(u_all[:, written].float())
    scan = (partial(chunked_scan, flush_subnormals=True) if impl == "chunked"   # subnormals: see LOG_FLUSH
            else partial(reference_scan, impl=impl))
    o, _ = scan(layer.ahn.variant, q[:, r0:].float(), repeat_kv(k_all[:, written].float(), layer.n_rep),
                repeat_kv(v_all[:, written].float(), layer.n_rep), g, b)
    return F.pad(layer.ahn.readout(o, u[:, r0:].float()), (0, 0, r0, 0))  # earlier queries: empty memory


def student_hidden(model: ReferenceModel, ids: torch.Tensor, teacher: TeacherPass, window: int, sinks: int, *,
                   grad_checkpoint: bool = True, bf16: bool = False, impl: str = "chunked") -> torch.Tensor:
    """Final-norm hidden states [B, L-P, D] of the student at the suffix positions P .. L-1.

    Needs P <= S + W (the prefix must be where student == teacher); P < S + W is allowed
    (tests use it to run the student over positions its window still fully covers).
    """
    B, L = ids.shape
    P = teacher.prefix
    if P > sinks + window:
        raise ValueError(f"prefix {P} > S + W = {sinks + window}: the student differs from the teacher there")
    cfg = model.config
    pos = torch.arange(L, device=ids.device)
    cos, sin = _rope(torch.arange(P, L), cfg, ids.device)
    mask = window_mask(pos[P:], pos, window, sinks)
    with _autocast(ids.device, bf16):
        x = model.model.embed_tokens(ids[:, P:]).float()
        for layer, (u_pre, k_pre, v_pre) in zip(model.model.layers, teacher.layers):
            windowed = not layer.full_attention
            w, s = (window, sinks) if windowed else (L, 0)
            m = mask if windowed else window_mask(pos[P:], pos, None, 0)
            args = (layer, x, u_pre, k_pre, v_pre, cos, sin, m, w, s, impl, bf16)
            if grad_checkpoint and torch.is_grad_enabled():
                x = checkpoint(_student_layer, *args, use_reentrant=False)
            else:
                x = _student_layer(*args)
        return model.model.norm(x)


def _kl_chunk(model, h, t_logp):
    """sum over positions of KL(p_teacher || p_student) for one chunk (float32)."""
    s_logp = F.log_softmax(model.logits(h).float(), dim=-1)
    return (t_logp.exp() * (t_logp - s_logp)).sum()


def kl_loss(model: ReferenceModel, h_student: torch.Tensor, teacher: TeacherPass, *, bf16: bool = False,
            kl_chunk: int = KL_CHUNK) -> torch.Tensor:
    """Mean over batch and suffix positions of KL(p_teacher || p_student), temperature 1."""
    B, n = h_student.shape[:2]
    if n == 0:
        return h_student.sum() * 0.0
    total = h_student.new_zeros((), dtype=torch.float32)
    with _autocast(h_student.device, bf16):
        for c, t_logp in zip(range(0, n, kl_chunk), teacher.logp_chunks):
            h = h_student[:, c:c + kl_chunk]
            if torch.is_grad_enabled():
                total = total + checkpoint(_kl_chunk, model, h, t_logp, use_reentrant=False)
            else:
                total = total + _kl_chunk(model, h, t_logp)
    return total / (B * n)


def distill_loss(model: ReferenceModel, ids: torch.Tensor, window: int, sinks: int, *, prefix: int | None = None,
                 grad_checkpoint: bool = True, bf16: bool = False, impl: str = "chunked",
                 kl_chunk: int = KL_CHUNK) -> torch.Tensor:
    """KL(teacher || student) averaged over positions >= prefix (default S + W) of every sequence."""
    P = sinks + window if prefix is None else prefix
    teacher = teacher_pass(model, ids, P, bf16=bf16, kl_chunk=kl_chunk)
    h = student_hidden(model, ids, teacher, window, sinks, grad_checkpoint=grad_checkpoint, bf16=bf16, impl=impl)
    return kl_loss(model, h, teacher, bf16=bf16, kl_chunk=kl_chunk)


# --- the layer-local objective (cheaper per step; measured to lose against the KL) --------------------------------------------


def layer_local_step(model: ReferenceModel, ids: torch.Tensor, window: int, sinks: int, *, backward: bool = True,
                     bf16: bool = False, impl: str = "chunked") -> float:
    """One pass of the layer-local objective; accumulates its gradient when `backward`. Returns the loss.

    Per layer, on the *teacher's* inputs (the full-attention model's hidden states, so no layer
    waits for the ones below it to be trained): what the sliding window loses there is
    o_proj(a_full - a_window) at the positions >= S + W, with a_full / a_window the attention
    outputs under the causal and the sink + window mask. The AHN, reading the tokens the window
    evicted, should restore it: the layer's loss is the fraction it leaves unrestored,

        || o_proj(y_AHN) - o_proj(a_full - a_window) ||^2  /  || o_proj(a_full - a_window) ||^2

    (1 for an AHN that outputs nothing, as a fresh one with zero o_proj does), and the objective is
    its mean over the AHN layers. No logits and no backward through the frozen model: each layer's
    AHN parameters reach only that layer's loss, so each layer is backpropagated on its own as soon as
    its loss is known and nothing of it is kept. Not the end-to-end KL, and measured on SmolLM2 it
    raises the validation KL while lowering its own loss (reports/distill-objectives.md,
    docs/AHN-SPEC.md "Training"): an option to compare against, not the default.
    """
    B, L = ids.shape
    P = sinks + window
    n_ahn = sum(layer.ahn is not None and not layer.full_attention for layer in model.model.layers)
    if L <= P or not n_ahn:
        return 0.0
    cfg = model.config
    cos, sin = _rope(torch.arange(L), cfg, ids.device)
    pos = torch.arange(L, device=ids.device)
    mask = window_mask(pos[P:], pos, window, sinks)
    total = 0.0
    with torch.no_grad(), _autocast(ids.device, bf16):
        x = model.model.embed_tokens(ids).float()
    for layer in model.model.layers:
        with torch.no_grad(), _autocast(ids.device, bf16):
            u = layer.input_layernorm(x)
            q, k, v = layer.self_attn.qkv(u, cos, sin)
            a_full = _attend(q, k, v, None, layer.n_rep, causal=True)
            train = layer.ahn is not None and not layer.full_attention
            if train:
                # o_proj's linear part only (a bias, where a base has one, cancels in the difference)
                w_o = layer.self_attn.o_proj.weight
                lost = F.linear(a_full[:, P:] - _attend(q[:, P:], k, v, mask, layer.n_rep), w_o).float()
        if train:
            with torch.enable_grad(), _no_autocast(ids.device, bf16):
                y = _ahn_contribution(layer, q[:, P:], u[:, P:], u, k, v, window, sinks, impl)
                restored = F.linear(y, w_o.float())
                loss = (restored - lost).pow(2).sum() / lost.pow(2).sum().clamp_min(1e-30)
                if backward and loss.requires_grad:
                    (loss / n_ahn).backward()
            total += loss.item()
        with torch.no_grad(), _autocast(ids.device, bf16):
            x = x + layer.self_attn.o_proj(a_full).float()
            x = x + layer.mlp(layer.post_attention_layernorm(x)).float()
    return total / n_ahn
