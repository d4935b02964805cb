"""Configuration of the reference model: the base decoder (Qwen2 or Llama family) plus AHN.

`ReferenceConfig.from_hf` reads Hugging Face `config.json` dicts: a base config, optionally
an AHN config (the released layout: the base config plus `_ahn_implementation`,
`sliding_window`, `num_attn_sinks`, `fa_layer_ids`, `use_ahn_router`, `use_q_proj`).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from ..constants import (
    AHN_NORM_EPS,
    HF_AHN_IMPLEMENTATION,
    HF_FA_LAYER_IDS,
    HF_NUM_ATTN_SINKS,
    HF_SLIDING_WINDOW,
    HF_USE_AHN_ROUTER,
    HF_USE_Q_PROJ,
    VARIANTS,
)
from ..errors import AHNError


class AHNConfigError(AHNError, ValueError):
    """A checkpoint or setting the reference cannot honour; the message names the problem."""


# model_type -> the HF architecture class of that family (the only two the reference knows)
FAMILIES = {"qwen2": "Qwen2ForCausalLM", "llama": "LlamaForCausalLM"}

# base config keys that an AHN config.json must repeat unchanged (it is "base config + AHN keys")
_SHAPE_KEYS = ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
               "intermediate_size", "vocab_size", "head_dim")


@dataclass
class ReferenceConfig:
    family: str                      # "qwen2" | "llama"
    vocab_size: int
    hidden_size: int                 # D
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int         # H (also the AHN heads)
    num_key_value_heads: int         # H_kv
    head_dim: int                    # d
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    qkv_bias: bool = False           # Qwen2: True
    o_bias: bool = False             # Llama with attention_bias: True
    max_position_embeddings: int = 32768
    # --- AHN ---
    ahn_variant: str | None = None   # one of constants.VARIANTS, None = base model only
    window: int | None = None        # W, excludes sinks
    sinks: int = 0                   # S
    fa_layer_ids: tuple[int, ...] = ()
    ahn_norm_eps: float = AHN_NORM_EPS
    # the config.json this came from (written back by save_ahn); not used by the math
    hf: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def n_rep(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def ahn_layer_ids(self) -> tuple[int, ...]:
        if self.ahn_variant is None:
            return ()
        return tuple(i for i in range(self.num_hidden_layers) if i not in self.fa_layer_ids)

    def validate(self) -> ReferenceConfig:
        if self.family not in FAMILIES:
            raise AHNConfigError(f"unsupported base family {self.family!r}; expected one of {sorted(FAMILIES)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise AHNConfigError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}")
        if self.ahn_variant is not None and self.ahn_variant not in VARIANTS:
            raise AHNConfigError(
                f"unknown AHN variant {self.ahn_variant!r} (config key {HF_AHN_IMPLEMENTATION}); "
                f"expected one of {', '.join(VARIANTS)}")
        check_window_sinks(self.window, self.sinks)
        if self.ahn_variant is not None and self.window is None:
            raise AHNConfigError(
                f"no window W for the AHN: the config has no {HF_SLIDING_WINDOW!r}; pass window=...")
        bad = [i for i in self.fa_layer_ids if not 0 <= i < self.num_hidden_layers]
        if bad:
            raise AHNConfigError(
                f"{HF_FA_LAYER_IDS} {list(self.fa_layer_ids)}: layer ids {bad} are outside "
                f"0..{self.num_hidden_layers - 1}")
        return self

    def with_window(self, window: int | None = None, sinks: int | None = None) -> ReferenceConfig:
        """A copy with W and/or S replaced (None keeps the current value), validated."""
        return replace(self, window=self.window if window is None else window,
                       sinks=self.sinks if sinks is None else sinks).validate()

    @classmethod
    def from_hf(cls, base: dict, ahn: dict | None = None, *, window: int | None = None,
                sinks: int | None = None) -> ReferenceConfig:
        """Build from a base config.json dict and, optionally, an AHN config.json dict.

        With `ahn=None`, AHN keys are looked for in `base` itself (a merged checkpoint).
        W and S default to the AHN config's `sliding_window` / `num_attn_sinks` (absent -> 0);
        a base model without AHN has no default window (a Qwen2 base's own
        `sliding_window` is a different thing: the length of its unused SWA).
        """
        model_type = base.get("model_type")
        if model_type not in FAMILIES:
            archs = ", ".join(base.get("architectures") or []) or "none given"
            raise AHNConfigError(
                f"unsupported base architecture: model_type {model_type!r} (architectures: {archs}); "
                f"the reference supports {', '.join(f'{k} ({v})' for k, v in FAMILIES.items())}")
        if base.get("hidden_act", "silu") != "silu":
            raise AHNConfigError(f"unsupported hidden_act {base['hidden_act']!r}; expected 'silu'")
        if base.get("mlp_bias"):
            raise AHNConfigError("unsupported mlp_bias: true (Llama MLP with biases)")
        rope_theta, rope_scaling = _rope(base)
        if rope_scaling:
            raise AHNConfigError(
                f"unsupported rope scaling {rope_scaling!r}; the reference implements plain RoPE only")

        ahn_src = base if ahn is None else ahn
        if ahn is not None:
            _check_same_base(base, ahn)
        variant = ahn_src.get(HF_AHN_IMPLEMENTATION)
        for key in (HF_USE_AHN_ROUTER, HF_USE_Q_PROJ):
            if variant is not None and ahn_src.get(key):
                raise AHNConfigError(
                    f"the AHN checkpoint sets {key}: {ahn_src[key]!r}; no released checkpoint does and "
                    f"the reference does not implement it")
        if ahn is not None and variant is None:
            raise AHNConfigError(f"the AHN config has no {HF_AHN_IMPLEMENTATION!r} key: not an AHN checkpoint")
        if variant is not None and variant not in VARIANTS:
            raise AHNConfigError(
                f"unknown AHN variant {variant!r} (config key {HF_AHN_IMPLEMENTATION}); "
                f"expected one of {', '.join(VARIANTS)}")

        H = base["num_attention_heads"]
        D = base["hidden_size"]
        cfg = cls(
            family=model_type,
            vocab_size=base["vocab_size"],
            hidden_size=D,
            intermediate_size=base["intermediate_size"],
            num_hidden_layers=base["num_hidden_layers"],
            num_attention_heads=H,
            num_key_value_heads=base.get("num_key_value_heads") or H,
            head_dim=base.get("head_dim") or D // H,
            rms_norm_eps=base.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            tie_word_embeddings=bool(base.get("tie_word_embeddings", False)),
            qkv_bias=True if model_type == "qwen2" else bool(base.get("attention_bias", False)),
            o_bias=False if model_type == "qwen2" else bool(base.get("attention_bias", False)),
            max_position_embeddings=base.get("max_position_embeddings", 32768),
            hf=dict(base),
        )
        if variant is not None:
            cfg.ahn_variant = variant
            cfg.window = ahn_src.get(HF_SLIDING_WINDOW)
            cfg.sinks = ahn_src.get(HF_NUM_ATTN_SINKS) or 0
            cfg.fa_layer_ids = parse_fa_layer_ids(ahn_src.get(HF_FA_LAYER_IDS, ""))
        if window is not None:
            cfg.window = window
        if sinks is not None:
            cfg.sinks = sinks
        return cfg.validate()


def check_window_sinks(window: int | None, sinks: int | None) -> None:
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window <= 0):
        raise AHNConfigError(f"window W must be a positive integer (it excludes the sinks); got {window!r}")
    if sinks is not None and (isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0):
        raise AHNConfigError(f"sinks S must be an integer >= 0; got {sinks!r}")


def parse_fa_layer_ids(value) -> tuple[int, ...]:
    """`fa_layer_ids` as released: a comma-separated string ("" = none); lists are accepted too."""
    if value is None:
        return ()
    if isinstance(value, int) and not isinstance(value, bool):
        return (value,)
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",") if p.strip()]
    elif isinstance(value, (list, tuple)):
        parts = list(value)
    else:
        raise AHNConfigError(f"{HF_FA_LAYER_IDS} must be a comma-separated string; got {value!r}")
    try:
        ids = tuple(sorted({int(p) for p in parts}))
    except (TypeError, ValueError):
        raise AHNConfigError(f"{HF_FA_LAYER_IDS} {value!r} is not a comma-separated list of layer ids") from None
    return ids


def format_fa_layer_ids(ids) -> str:
    return ",".join(str(i) for i in sorted(ids))


def _rope(base: dict) -> tuple[float, dict | None]:
    """(theta, scaling or None). Accepts transformers 4 (`rope_theta`, `rope_scaling`) and
    transformers 5 (`rope_parameters`) spellings; a "default" rope type is no scaling."""
    params = base.get("rope_parameters") or {}
    theta = base.get("rope_theta", params.get("rope_theta", 10000.0))
    scaling = base.get("rope_scaling") or None
    if scaling is None and params.get("rope_type", "default") != "default":
        scaling = params
    if scaling is not None and scaling.get("rope_type", scaling.get("type", "default")) == "default":
        scaling = None
    return float(theta), scaling


def _check_same_base(base: dict, ahn: dict) -> None:
    for key in _SHAPE_KEYS:
        if key in ahn and key in base and ahn[key] != base[key]:
            raise AHNConfigError(
                f"the AHN checkpoint was made for another base: {key} is {ahn[key]} in its config.json "
                f"but {base[key]} in the base model's")
    if ahn.get("model_type", base.get("model_type")) != base.get("model_type"):
        raise AHNConfigError(
            f"the AHN checkpoint was made for another base: model_type {ahn.get('model_type')!r} "
            f"vs the base's {base.get('model_type')!r}")
