"""Hugging Face folders <-> ReferenceModel.

A base folder holds `config.json` and `model.safetensors` (or shards listed in
`model.safetensors.index.json`). An AHN folder in the released layout holds a
`config.json` that is the base config plus the AHN keys, and `model.safetensors` with only
`model.layers.{i}.ahn.fn.*` tensors (bf16). A merged folder holds both in one.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..constants import (
    AHN_UNUSED_TENSORS,
    HF_AHN_IMPLEMENTATION,
    HF_AHN_PREFIX,
    HF_FA_LAYER_IDS,
    HF_NUM_ATTN_SINKS,
    HF_SLIDING_WINDOW,
    HF_USE_AHN_ROUTER,
    HF_USE_Q_PROJ,
    canonical_variant,
)
from .config import AHNConfigError, ReferenceConfig, check_window_sinks, format_fa_layer_ids, parse_fa_layer_ids
from .model import AHN, ReferenceModel

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"

_AHN_KEY = re.compile(r"^model\.layers\.(\d+)\.ahn\.")
# tensors some base checkpoints carry that the model recomputes
_IGNORED_BASE = re.compile(r"(^|\.)rotary_emb\.inv_freq$")


def is_ahn_key(name: str) -> bool:
    return _AHN_KEY.match(name) is not None


def read_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise AHNConfigError(f"no {CONFIG_FILE} in {folder}")
    with open(path) as f:
        return json.load(f)


def read_tensors(folder: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a folder: `model.safetensors`, or the shards of its index."""
    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        tensors = {}
        for shard in sorted(set(weight_map.values())):
            tensors.update(load_file(folder / shard))
        missing = sorted(set(weight_map) - set(tensors))
        if missing:
            raise AHNConfigError(f"{WEIGHTS_INDEX_FILE} in {folder} lists tensors its shards lack: {_names(missing)}")
        return tensors
    if (folder / WEIGHTS_FILE).is_file():
        return load_file(folder / WEIGHTS_FILE)
    raise AHNConfigError(f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in {folder}")


def _names(names, limit: int = 8) -> str:
    names = list(names)
    shown = ", ".join(names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def check_tensors(model: ReferenceModel, tensors: dict[str, torch.Tensor]) -> None:
    """Raise AHNConfigError naming any missing, unexpected or mis-shaped tensor."""
    cfg = model.config
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    unused = {HF_AHN_PREFIX.format(bid=i) + name for i in cfg.ahn_layer_ids
              for name in AHN_UNUSED_TENSORS.get(cfg.ahn_variant, ())}
    present = {k for k in tensors if not _IGNORED_BASE.search(k)}
    if cfg.tie_word_embeddings:
        present.discard("lm_head.weight")  # tied: some checkpoints still carry a copy; it is not used

    ahn_found = {k for k in present if is_ahn_key(k)}
    ahn_expected = {k for k in expected if is_ahn_key(k)}
    if ahn_found and cfg.ahn_variant is None:
        raise AHNConfigError(
            f"the checkpoint holds AHN tensors but its config has no {HF_AHN_IMPLEMENTATION!r}: "
            f"{_names(sorted(ahn_found))}")
    extra = sorted(ahn_found - ahn_expected)
    if extra:
        raise AHNConfigError(
            f"unexpected AHN tensors for variant {cfg.ahn_variant} with {HF_FA_LAYER_IDS} "
            f"{list(cfg.fa_layer_ids)}: {_names(extra)}")
    missing = sorted(ahn_expected - ahn_found - unused)
    if missing:
        raise AHNConfigError(f"missing AHN tensors for variant {cfg.ahn_variant}: {_names(missing)}")
    base_missing = sorted(set(expected) - ahn_expected - present)
    if base_missing:
        raise AHNConfigError(f"missing base tensors: {_names(base_missing)}")
    base_extra = sorted(present - set(expected))
    if base_extra:
        raise AHNConfigError(f"unexpected base tensors: {_names(base_extra)}")
    for name in sorted(present):
        got = tuple(tensors[name].shape)
        if got != expected[name]:
            kind = "AHN tensor" if is_ahn_key(name) else "tensor"
            raise AHNConfigError(f"{kind} {name}: expected shape {expected[name]}, got {got}")


def load_reference(base_dir: str | Path, ahn_dir: str | Path | None = None, *, window: int | None = None,
                   sinks: int | None = None, dtype: torch.dtype = torch.float32) -> ReferenceModel:
    """A ReferenceModel from a base folder, plus an AHN-only folder (or a merged base folder).

    W and S come from the arguments, else from the AHN config (`sliding_window`,
    `num_attn_sinks`, absent -> 0). Without AHN weights the model runs modes "full" and
    "window" (the latter needs `window`, here or per call).
    """
    base_cfg = read_config(base_dir)
    ahn_cfg = read_config(ahn_dir) if ahn_dir is not None else None
    check_window_sinks(window, sinks)
    cfg = ReferenceConfig.from_hf(base_cfg, ahn_cfg, window=window, sinks=sinks)
    tensors = read_tensors(base_dir)
    if ahn_dir is not None:
        ahn_tensors = read_tensors(ahn_dir)
        foreign = sorted(k for k in ahn_tensors if not is_ahn_key(k))
        if foreign:
            raise AHNConfigError(
                f"the AHN checkpoint {ahn_dir} holds non-AHN tensors (a merged checkpoint goes in "
                f"base_dir alone): {_names(foreign)}")
        clash = sorted(k for k in tensors if is_ahn_key(k))
        if clash:
            raise AHNConfigError(f"the base checkpoint {base_dir} already holds AHN tensors: {_names(clash)}")
        tensors.update(ahn_tensors)
    model = ReferenceModel(cfg)
    check_tensors(model, tensors)
    state = {k: v.to(torch.float32) for k, v in tensors.items() if k in model.state_dict()}
    model.load_state_dict(state, strict=False)  # strictness was checked above (D may be absent)
    return model.to(dtype)


def base_model(config: ReferenceConfig, dtype: torch.dtype = torch.float32) -> ReferenceModel:
    """A randomly initialised model for a config (tests, experiments)."""
    return ReferenceModel(config).to(dtype)


def attach_ahn(model: ReferenceModel, variant: str, *, window: int, sinks: int = 0, fa_layer_ids=(),
               o_proj_std: float = 0.0, seed: int | None = None) -> ReferenceModel:
    """Give `model` fresh AHN parameters (for distillation), replacing any it had. In place.

    o_proj starts at zero (docs/AHN-SPEC.md: the untrained AHN is exactly "sinks + window"), or
    normal(0, o_proj_std) if o_proj_std > 0.
    """
    cfg = model.config
    cfg.ahn_variant = canonical_variant(variant)
    cfg.window, cfg.sinks = window, sinks
    cfg.fa_layer_ids = parse_fa_layer_ids(fa_layer_ids if isinstance(fa_layer_ids, str) else list(fa_layer_ids))
    cfg.validate()
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    dtype = model.model.embed_tokens.weight.dtype
    for layer in model.model.layers:
        layer.full_attention = layer.layer_id in cfg.fa_layer_ids
        layer.ahn = None
        if not layer.full_attention:
            layer.ahn = AHN(cfg)
            layer.ahn.reset_parameters(o_proj_std=o_proj_std, generator=generator)
            layer.ahn.to(dtype)
    return model


def ahn_state_dict(model: ReferenceModel) -> dict[str, torch.Tensor]:
    """The AHN tensors under their released names (`model.layers.{i}.ahn.fn.*`, GDN's D included)."""
    return {k: v for k, v in model.state_dict().items() if is_ahn_key(k)}


def ahn_config(model: ReferenceModel) -> dict:
    """config.json of an AHN-only folder: the base config plus the AHN keys."""
    cfg = model.config
    if cfg.ahn_variant is None:
        raise AHNConfigError("the model has no AHN to save")
    out = {k: v for k, v in cfg.hf.items()}
    out.update({
        HF_AHN_IMPLEMENTATION: cfg.ahn_variant,
        HF_SLIDING_WINDOW: cfg.window,
        HF_NUM_ATTN_SINKS: cfg.sinks,
        HF_FA_LAYER_IDS: format_fa_layer_ids(cfg.fa_layer_ids),
        HF_USE_AHN_ROUTER: False,
        HF_USE_Q_PROJ: False,
    })
    return out


def save_ahn(model: ReferenceModel, out_dir: str | Path, *, dtype: torch.dtype = torch.bfloat16) -> Path:
    """Write an AHN-only folder in the released layout (config.json + model.safetensors)."""
    if not model.config.hf:
        raise AHNConfigError("the model was not loaded from a Hugging Face folder: no base config to extend")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / CONFIG_FILE, "w") as f:
        json.dump(ahn_config(model), f, indent=2)
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in ahn_state_dict(model).items()}
    save_file(tensors, out / WEIGHTS_FILE, metadata={"format": "pt"})
    return out
