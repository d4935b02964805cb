"""The reference decoder (Qwen2 / Llama family) with an AHN in every non-`fa_layer_ids` layer.

Module and parameter names mirror Hugging Face checkpoints (`model.layers.{i}.self_attn.q_proj.weight`,
`model.layers.{i}.ahn.fn.b_proj.weight`, ...), so a state dict loads without renaming.

Attention modes, on the same weights:
- "full":   causal attention over every earlier token (the teacher);
- "window": query t sees keys j <= t with j < S or t - j < W (sinks + window);
- "ahn":    "window" plus the AHN readout of the tokens that left the window (docs/AHN-SPEC.md).
Layers in `fa_layer_ids` always use full attention and have no AHN.

Two ways to run: `model(input_ids, mode=...)` over whole sequences (autograd, batch B >= 1),
and `model.forward_incremental(ids_chunk, cache)` with an explicit `AHNCache`, chunks of any
size, bounded memory. Both compute the same function (tested).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..constants import AHN_TENSORS, AHN_UNUSED_TENSORS, MAMBA2
from .config import AHNConfigError, ReferenceConfig, check_window_sinks
from .functional import readout, write_gates
from .recurrence import scan

MODES = ("full", "window", "ahn")


# --- building blocks -------------------------------------------------------------------------

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # as transformers' Qwen2/Llama RMSNorm: normalise in float32, scale in the input dtype
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def rope_cos_sin(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [L, d] (float32) for absolute positions, transformers' default RoPE."""
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64, device=positions.device).float() / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    freqs = positions.float()[:, None] * inv_freq[None, :]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, L, heads, d]; cos/sin [L, d]."""
    cos = cos[:, None, :].to(x.dtype)
    sin = sin[:, None, :].to(x.dtype)
    return x * cos + _rotate_half(x) * sin


def window_mask(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None, sinks: int) -> torch.Tensor:
    """allowed[t, j] (bool): j <= t and (window is None or j < S or t - j < W)."""
    qp, kp = q_pos[:, None], k_pos[None, :]
    allowed = kp <= qp
    if window is not None:
        allowed = allowed & ((kp < sinks) | (qp - kp < window))
    return allowed


def repeat_kv(x: torch.Tensor, n_rep: int) -> torch.Tensor:
    """[B, L, H_kv, d] -> [B, L, H, d]; head h uses KV head h // n_rep (transformers' repeat_kv)."""
    return x if n_rep == 1 else x.repeat_interleave(n_rep, dim=2)


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, n_rep: int) -> torch.Tensor:
    """Softmax attention. q [B, Lq, H, d], k/v [B, Lk, H_kv, d], allowed [Lq, Lk] -> [B, Lq, H*d]."""
    k, v = repeat_kv(k, n_rep), repeat_kv(v, n_rep)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=allowed)
    return out.transpose(1, 2).flatten(2)


class Attention(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        H, Hkv, d, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size
        self.n_head, self.n_head_kv, self.head_dim = H, Hkv, d
        self.q_proj = nn.Linear(D, H * d, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(D, Hkv * d, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(D, Hkv * d, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(H * d, D, bias=cfg.o_bias)

    def qkv(self, u, cos, sin):
        """q [B, L, H, d], k and v [B, L, H_kv, d]; q and k after RoPE."""
        B, L, _ = u.shape
        q = self.q_proj(u).view(B, L, self.n_head, self.head_dim)
        k = self.k_proj(u).view(B, L, self.n_head_kv, self.head_dim)
        v = self.v_proj(u).view(B, L, self.n_head_kv, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v


class MLP(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# --- AHN ---------------------------------------------------------------------------------------

def ahn_tensor_shapes(variant: str, n_head: int, hidden: int, head_dim: int) -> dict[str, tuple[int, ...]]:
    """{name after 'ahn.fn.': shape} for one layer, from constants.AHN_TENSORS (+ unused ones)."""
    dims = {"H": n_head, "D": hidden, "d": head_dim, "H*d": n_head * head_dim}
    shapes = {}
    for t in AHN_TENSORS[variant]:
        shapes[t.hf] = tuple(dims[s.strip()] for s in t.shape.strip("()").split(","))
    for name in AHN_UNUSED_TENSORS[variant]:
        shapes[name] = (n_head,)  # GDN's D: one per head (docs/AHN-SPEC.md table)
    return shapes


class _Params(nn.Module):
    """A bare holder, so that dotted checkpoint names ("b_proj.weight") become module paths."""


class AHN(nn.Module):
    """One layer's AHN: parameters under `.fn` with the released names, and the memory math."""

    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.variant = cfg.ahn_variant
        self.n_rep = cfg.n_rep
        self.eps = cfg.ahn_norm_eps
        self.fn = _Params()
        for name, shape in ahn_tensor_shapes(self.variant, cfg.num_attention_heads, cfg.hidden_size,
                                             cfg.head_dim).items():
            owner = self.fn
            *path, leaf = name.split(".")
            for part in path:
                if not hasattr(owner, part):
                    owner.add_module(part, _Params())
                owner = getattr(owner, part)
            if name in AHN_UNUSED_TENSORS[self.variant]:
                owner.register_buffer(leaf, torch.ones(shape))  # kept for the checkpoint, never used
            else:
                owner.register_parameter(leaf, nn.Parameter(torch.zeros(shape)))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, o_proj_std: float = 0.0, generator: torch.Generator | None = None):
        """Fresh AHN as for distillation (fla / mamba initialisations; docs/AHN-SPEC.md: o_proj zero).

        Projections U(+-1/sqrt(D)) (nn.Linear's default), their biases 0; A = exp(A_log) ~ U(1, 16);
        dt_bias = softplus^-1(dt), dt log-uniform in [1e-3, 1e-1]; norm weights 1; o_proj
        zero, or normal(0, o_proj_std) when o_proj_std > 0.
        """
        fn = self.fn
        for name, p in fn.named_parameters():
            if name.endswith("_proj.weight") and p.dim() == 2:
                bound = 1.0 / math.sqrt(p.shape[1])
                p.copy_(torch.rand(p.shape, generator=generator) * 2 * bound - bound)
            elif name.endswith("_proj.bias"):
                p.zero_()
        if hasattr(fn, "A_log"):
            fn.A_log.copy_(torch.log(torch.rand(fn.A_log.shape, generator=generator) * 15 + 1))
        if hasattr(fn, "dt_bias"):
            lo, hi = math.log(1e-3), math.log(1e-1)
            dt = torch.exp(torch.rand(fn.dt_bias.shape, generator=generator) * (hi - lo) + lo).clamp(min=1e-4)
            fn.dt_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        norm = fn.norm if self.variant == MAMBA2 else fn.o_norm
        norm.weight.fill_(1.0)
        if o_proj_std > 0:
            fn.o_proj.weight.copy_(torch.randn(fn.o_proj.weight.shape, generator=generator) * o_proj_std)
        else:
            fn.o_proj.weight.zero_()

    def write_gates(self, u):
        return write_gates(self.variant, self.fn, u)

    def readout(self, o, u):
        """[..., H, d] memory read -> [..., H*d] contribution to the attention output."""
        return readout(self.variant, self.fn, o, u, self.eps).flatten(-2)

    def parallel(self, u, q, k, v, window: int, sinks: int, impl: str) -> torch.Tensor | None:
        """AHN contribution [B, L, H*d] over a whole sequence (None when no query reads memory).

        Tokens S .. L-W-1 are written in order; queries S+W .. L-1 read, one-to-one
        (docs/AHN-SPEC.md, "Which token goes where"); earlier queries read an empty memory: zero.
        """
        L = u.shape[1]
        if L - window - sinks <= 0:
            return None
        written = slice(sinks, L - window)
        g, b = self.write_gates(u[:, written])
        o, _ = scan(self.variant, q[:, sinks + window:], repeat_kv(k[:, written], self.n_rep),
                    repeat_kv(v[:, written], self.n_rep), g, b, impl=impl)
        y = self.readout(o, u[:, sinks + window:]).to(u.dtype)
        return F.pad(y, (0, 0, sinks + window, 0))


# --- decoder ----------------------------------------------------------------------------------

class LayerCache:
    """Per-layer incremental state: sinks, window (+ write gates), recurrent state.

    Full-attention layers (and mode "full") keep every token in `k`/`v`. Otherwise `k`/`v`
    hold the window: the non-sink tokens at positions [max(S, pos - W), pos), all after
    RoPE; `g`/`b` their write gates, computed from u_j when token j entered; `state` the
    memory M [B, H, d, d] (float32, docs/AHN-SPEC.md orientation), None while empty.
    """

    def __init__(self):
        self.k = self.v = None
        self.sink_k = self.sink_v = None
        self.g = self.b = None
        self.state = None

    def n_tokens(self) -> int:
        """K/V rows held (sinks + window, or everything for a full-attention layer)."""
        return sum(0 if t is None else t.shape[1] for t in (self.k, self.sink_k))


def _cat(a, b):
    return b if a is None else torch.cat([a, b], dim=1)


class AHNCache:
    """Everything needed to continue a batch of sequences from position `pos`.

    Make one with `ReferenceModel.new_cache`; pass it to `forward_incremental` with chunks of
    any size. `clone()` gives an independent copy (to continue two ways from one point).
    """

    def __init__(self, n_layer: int, batch_size: int, mode: str, window: int | None, sinks: int):
        self.mode, self.window, self.sinks = mode, window, sinks
        self.batch_size = batch_size
        self.pos = 0
        self.layers = [LayerCache() for _ in range(n_layer)]

    def clone(self) -> AHNCache:
        return copy.deepcopy(self)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ReferenceConfig, layer_id: int):
        super().__init__()
        self.layer_id = layer_id
        self.n_rep = cfg.n_rep
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.full_attention = layer_id in cfg.fa_layer_ids  # keeps full attention, has no AHN
        self.ahn = AHN(cfg) if (cfg.ahn_variant is not None and not self.full_attention) else None

    def forward(self, x, cos, sin, allowed_full, allowed_window, mode, window, sinks, impl):
        u = self.input_layernorm(x)
        q, k, v = self.self_attn.qkv(u, cos, sin)
        windowed = mode != "full" and not self.full_attention
        a = attend(q, k, v, allowed_window if windowed else allowed_full, self.n_rep)
        if mode == "ahn" and self.ahn is not None:
            y = self.ahn.parallel(u, q, k, v, window, sinks, impl)
            if y is not None:
                a = a + y
        x = x + self.self_attn.o_proj(a)
        return x + self.mlp(self.post_attention_layernorm(x))

    def forward_incremental(self, x, cos, sin, lc: LayerCache, cache: AHNCache, impl: str):
        p0, n = cache.pos, x.shape[1]
        u = self.input_layernorm(x)
        q, k, v = self.self_attn.qkv(u, cos, sin)
        q_pos = torch.arange(p0, p0 + n, device=x.device)
        if cache.mode == "full" or self.full_attention:
            lc.k, lc.v = _cat(lc.k, k), _cat(lc.v, v)
            k_pos = torch.arange(p0 + n, device=x.device)
            a = attend(q, lc.k, lc.v, window_mask(q_pos, k_pos, None, 0), self.n_rep)
        else:
            a = self._windowed_step(u, q, k, v, q_pos, lc, cache, impl)
        x = x + self.self_attn.o_proj(a)
        return x + self.mlp(self.post_attention_layernorm(x))

    def _windowed_step(self, u, q, k, v, q_pos, lc: LayerCache, cache: AHNCache, impl: str):
        W, S = cache.window, cache.sinks
        p0, n = cache.pos, q.shape[1]
        n_new_sinks = min(max(S - p0, 0), n)
        if n_new_sinks:
            lc.sink_k, lc.sink_v = _cat(lc.sink_k, k[:, :n_new_sinks]), _cat(lc.sink_v, v[:, :n_new_sinks])
        n_sinks = 0 if lc.sink_k is None else lc.sink_k.shape[1]
        # the stream: non-sink tokens, window then new ones, at contiguous positions from `start`
        n_win = 0 if lc.k is None else lc.k.shape[1]
        start = p0 - n_win if n_win else max(S, p0)
        stream_k, stream_v = _cat(lc.k, k[:, n_new_sinks:]), _cat(lc.v, v[:, n_new_sinks:])
        n_stream = 0 if stream_k is None else stream_k.shape[1]

        keys = [t for t in (lc.sink_k, stream_k) if t is not None and t.shape[1]]
        vals = [t for t in (lc.sink_v, stream_v) if t is not None and t.shape[1]]
        k_pos = torch.cat([torch.arange(n_sinks), torch.arange(start, start + n_stream)]).to(q.device)
        a = attend(q, torch.cat(keys, 1), torch.cat(vals, 1), window_mask(q_pos, k_pos, W, S), self.n_rep)

        with_memory = cache.mode == "ahn" and self.ahn is not None
        if with_memory:
            g_new, b_new = self.ahn.write_gates(u[:, n_new_sinks:])   # kept while the token is cached
            stream_g, stream_b = _cat(lc.g, g_new), _cat(lc.b, b_new)
            evicted = q_pos - W                                        # query t writes token t - W ...
            write = evicted >= S                                       # ... unless it is a sink / none
            if bool(write.any()):
                rows = evicted - start
                assert int(rows[write].min()) >= 0 and int(rows[write].max()) < n_stream, "evicted token not cached"
                rows = rows.clamp(0, max(n_stream - 1, 0))
                o, lc.state = scan(
                    self.ahn.variant, q, repeat_kv(stream_k[:, rows], self.n_rep),
                    repeat_kv(stream_v[:, rows], self.n_rep), stream_g[:, rows], stream_b[:, rows],
                    write_mask=write, state=lc.state, impl=impl)
                a = a + self.ahn.readout(o, u).to(a.dtype)
            # (nothing written yet and no state: the memory is empty, its readout is zero)
        # keep the last W stream tokens; older ones have just been written (or, without AHN, dropped)
        drop = max(0, (p0 + n - W) - start)
        if n_stream:
            lc.k, lc.v = stream_k[:, drop:], stream_v[:, drop:]
            if with_memory:
                lc.g, lc.b = stream_g[:, drop:], stream_b[:, drop:]
        return a


class Decoder(nn.Module):
    def __init__(self, cfg: ReferenceConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class ReferenceModel(nn.Module):
    """Decoder + AHN. `recurrence` picks the scan: "auto" (chunked for long spans), "naive", "chunked"."""

    def __init__(self, config: ReferenceConfig):
        super().__init__()
        self.config = config.validate()
        self.model = Decoder(config)
        self.lm_head = None if config.tie_word_embeddings else nn.Linear(config.hidden_size, config.vocab_size,
                                                                         bias=False)
        self.recurrence = "auto"

    # -- settings ------------------------------------------------------------------------------

    @property
    def has_ahn(self) -> bool:
        return self.config.ahn_variant is not None

    def resolve(self, mode: str | None, window: int | None, sinks: int | None) -> tuple[str, int | None, int]:
        """Mode (default "ahn" with an AHN, else "full"), W and S (defaults from the config)."""
        if mode is None:
            mode = "ahn" if self.has_ahn else "full"
        if mode not in MODES:
            raise ValueError(f"unknown attention mode {mode!r}; expected one of {', '.join(MODES)}")
        if mode == "ahn" and not self.has_ahn:
            raise AHNConfigError("mode 'ahn' needs AHN weights; this model has none "
                                 "(load an AHN checkpoint or attach_ahn)")
        window = self.config.window if window is None else window
        sinks = self.config.sinks if sinks is None else sinks
        check_window_sinks(window, sinks)
        if mode != "full" and window is None:
            raise AHNConfigError(f"mode {mode!r} needs a window: pass window=W (no default in the config)")
        return mode, window, sinks

    def ahn_parameters(self) -> list[nn.Parameter]:
        """The trainable AHN parameters (what distillation optimises)."""
        return [p for layer in self.model.layers if layer.ahn is not None for p in layer.ahn.parameters()]

    def freeze_base(self) -> ReferenceModel:
        """requires_grad only on AHN parameters (the student of self-distillation)."""
        ahn = {id(p) for p in self.ahn_parameters()}
        for p in self.parameters():
            p.requires_grad_(id(p) in ahn)
        return self

    # -- whole sequences -------------------------------------------------------------------------

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        weight = self.model.embed_tokens.weight if self.lm_head is None else self.lm_head.weight
        return F.linear(hidden, weight)

    def hidden_states(self, input_ids: torch.Tensor, mode: str | None = None, window: int | None = None,
                      sinks: int | None = None) -> torch.Tensor:
        """Final-norm hidden states [B, L, D] (logits = self.logits(h); chunk it to save memory)."""
        mode, window, sinks = self.resolve(mode, window, sinks)
        L = input_ids.shape[1]
        pos = torch.arange(L, device=input_ids.device)
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta)
        allowed_full = window_mask(pos, pos, None, 0)
        allowed_window = window_mask(pos, pos, window, sinks) if mode != "full" else None
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, allowed_full, allowed_window, mode, window, sinks, self.recurrence)
        return self.model.norm(x)

    def forward(self, input_ids: torch.Tensor, mode: str | None = None, window: int | None = None,
                sinks: int | None = None) -> torch.Tensor:
        """Logits [B, L, V] of a whole batch of sequences (positions 0 .. L-1)."""
        return self.logits(self.hidden_states(input_ids, mode, window, sinks))

    # -- incremental ---------------------------------------------------------------------------

    def new_cache(self, batch_size: int = 1, mode: str | None = None, window: int | None = None,
                  sinks: int | None = None) -> AHNCache:
        mode, window, sinks = self.resolve(mode, window, sinks)
        return AHNCache(self.config.num_hidden_layers, batch_size, mode, window, sinks)

    @torch.no_grad()
    def forward_incremental(self, input_ids: torch.Tensor, cache: AHNCache) -> torch.Tensor:
        """Logits [B, n, V] of the next n tokens (positions cache.pos ..), advancing the cache."""
        if input_ids.shape[0] != cache.batch_size:
            raise ValueError(f"batch size {input_ids.shape[0]} does not match the cache's {cache.batch_size}")
        n = input_ids.shape[1]
        if n == 0:
            return self.logits(self.model.embed_tokens(input_ids))
        pos = torch.arange(cache.pos, cache.pos + n, device=input_ids.device)
        cos, sin = rope_cos_sin(pos, self.config.head_dim, self.config.rope_theta)
        x = self.model.embed_tokens(input_ids)
        for layer, lc in zip(self.model.layers, cache.layers):
            x = layer.forward_incremental(x, cos, sin, lc, cache, self.recurrence)
        cache.pos += n
        return self.logits(self.model.norm(x))
