"""The AHN part of a GGUF file: read from a checkpoint or a sidecar, validated, turned into GGUF.

`AHNPayload` holds everything the converter writes about an AHN: variant, window W, sinks S,
per-layer flags, the base it belongs to, its tensors (float32, already in GGUF layout) and
provenance. It comes from a Hugging Face checkpoint (`from_hf`, validated by the PyTorch
reference's own config and tensor checks) or from a sidecar GGUF (`from_sidecar`), and it is
written by `metadata()` / `tensor_entries()`: the only place AHN keys and tensors are made.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ahn_gguf import __version__
from ahn_gguf.constants import (
    AHN_NORM_EPS,
    AHN_TENSORS,
    AHN_UNUSED_TENSORS,
    ARCH_FOR_BASE,
    ARCH_SIDECAR,
    HF_AHN_IMPLEMENTATION,
    HF_AHN_PREFIX,
    HF_NUM_ATTN_SINKS,
    HF_SLIDING_WINDOW,
    KEY_BASE_ARCH,
    KEY_BASE_HEAD_DIM,
    KEY_BASE_N_EMBD,
    KEY_BASE_N_HEAD,
    KEY_BASE_N_HEAD_KV,
    KEY_BASE_N_LAYER,
    KEY_CONVERTER,
    KEY_LAYERS,
    KEY_MEMORY_TYPE,
    KEY_NORM_EPS,
    KEY_PARAM_COUNT,
    KEY_SINKS,
    KEY_SOURCE_AHN,
    KEY_SOURCE_BASE,
    KEY_TRAINING,
    KEY_VARIANT,
    KEY_WINDOW,
    MEMORY_TYPES,
    PUBLISHED_AHN_PARAMS,
    PUBLISHED_BASE_SHAPES,
    VARIANTS,
    ahn_param_count,
)
from ahn_gguf.errors import ConversionError
from ahn_gguf.gguf_io.contents import KV, VT, GGUFContents, TensorEntry, gguf

log = logging.getLogger("ahn_gguf.convert")


# larger than any context a GGUF runtime can hold; a value beyond is a typo, not a setting
MAX_WINDOW = 1 << 24
# the paper's long-context evaluation setting (LV-Eval, InfiniteBench, RULER): 128 + 32640
PAPER_SINKS, PAPER_WINDOW = 128, 32640
# largest finite float16: AHN weights beyond it cannot be stored as F16
F16_MAX = float(np.finfo(np.float16).max)


@dataclass(frozen=True)
class BaseShape:
    """The base model an AHN belongs to: what must match between the two."""

    arch: str          # stock llama.cpp arch: "qwen2" | "llama"
    n_layer: int
    n_embd: int        # D
    n_head: int        # H (also the AHN heads)
    n_head_kv: int
    head_dim: int      # d

    def mismatch(self, other: BaseShape) -> list[str]:
        names = {"arch": "architecture", "n_layer": "layers", "n_embd": "hidden size", "n_head": "attention heads",
                 "n_head_kv": "KV heads", "head_dim": "head dim"}
        return [f"{label} {getattr(self, k)} vs {getattr(other, k)}" for k, label in names.items()
                if getattr(self, k) != getattr(other, k)]

    def describe(self) -> str:
        return (f"{self.arch}, {self.n_layer} layers, hidden {self.n_embd}, {self.n_head} heads / "
                f"{self.n_head_kv} KV heads, head dim {self.head_dim}")


def check_window_sinks(window, sinks) -> None:
    """W >= 1, S >= 0, both at most MAX_WINDOW (None = not given)."""
    if window is not None:
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ConversionError(f"window W must be an integer >= 1 (it excludes the sinks); got {window!r}")
        if window > MAX_WINDOW:
            raise ConversionError(f"window W = {window} is absurd (more than {MAX_WINDOW} tokens); "
                                  f"the paper uses W = {PAPER_WINDOW}")
    if sinks is not None:
        if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
            raise ConversionError(f"sinks S must be an integer >= 0; got {sinks!r}")
        if sinks > MAX_WINDOW:
            raise ConversionError(f"sinks S = {sinks} is absurd (more than {MAX_WINDOW} tokens); "
                                  f"the paper uses S = {PAPER_SINKS}")


def expected_tensors(variant: str, base: BaseShape, layers: list[int]) -> dict[str, tuple[int, ...]]:
    """{GGUF name: numpy shape} of the AHN tensors a file must hold (constants.AHN_TENSORS)."""
    dims = {"H": base.n_head, "D": base.n_embd, "d": base.head_dim, "H*d": base.n_head * base.head_dim}
    out = {}
    for bid, flag in enumerate(layers):
        if not flag:
            continue
        for t in AHN_TENSORS[variant]:
            shape = tuple(dims[s.strip()] for s in t.shape.strip("()").split(","))
            if t.transpose_heads:  # (H, d_in, d_out) stored as (H, d_out, d_in)
                shape = (shape[0], shape[2], shape[1])
            out[t.gguf.format(bid=bid)] = shape
    return out


@dataclass
class AHNPayload:
    variant: str
    window: int
    sinks: int
    layers: list[int]                      # one flag per base layer: 1 = AHN, 0 = full attention
    base: BaseShape
    tensors: dict[str, np.ndarray]         # GGUF name -> float32, numpy order of the GGUF layout
    parameter_count: int                   # the checkpoint's AHN parameters, unused ones included
    source_ahn: str
    training: str
    norm_eps: float = AHN_NORM_EPS
    dropped: list[str] = field(default_factory=list)   # checkpoint tensors not written (unused)
    memory_type: str | None = None         # how the runtime stores states and gates ("f16"); None: unrecorded (f32)

    # -- construction ---------------------------------------------------------------------------

    @classmethod
    def from_hf(cls, ahn_dir: Path, *, base_dir: Path | None = None, window: int | None = None,
                sinks: int | None = None, source: str | None = None, training: str | None = None) -> AHNPayload:
        """From an AHN-only folder (`base_dir` = its base folder, or None for a sidecar), or from a
        merged folder (`ahn_dir` = `base_dir` = the merged folder).

        Everything is checked here, before anything is written: supported architecture, the AHN
        config (variant, router / q-proj flags, fa_layer_ids) and its agreement with the base,
        W and S, every AHN tensor's presence and shape (and, with `base_dir`, the base's tensors),
        and finiteness of the AHN weights.
        """
        import torch

        from ahn_gguf.reference.config import AHNConfigError, ReferenceConfig
        from ahn_gguf.reference.loading import check_tensors, is_ahn_key, read_config
        from ahn_gguf.reference.model import ReferenceModel

        check_window_sinks(window, sinks)
        merged = base_dir is not None and Path(base_dir).resolve() == Path(ahn_dir).resolve()
        try:
            ahn_cfg = read_config(ahn_dir)
            base_cfg = read_config(base_dir) if base_dir is not None else ahn_cfg
        except (AHNConfigError, json.JSONDecodeError) as e:
            raise ConversionError(str(e)) from None
        if base_dir is not None:
            check_architecture(base_cfg, base_dir)
        # an AHN config is "base config + AHN keys": its model_type must be the base's (checked by
        # the reference below); its `architectures` list is not relied upon
        if HF_AHN_IMPLEMENTATION not in ahn_cfg:
            what = "the folder" if merged else "the AHN checkpoint"
            raise ConversionError(
                f"{what} {ahn_dir} has no {HF_AHN_IMPLEMENTATION!r} in its config.json: not an AHN checkpoint"
                + ("" if merged or base_dir is None else " (was it given as BASE? the order is BASE AHN)"))
        try:
            cfg = ReferenceConfig.from_hf(base_cfg, None if merged or base_dir is None else ahn_cfg,
                                          window=window, sinks=sinks)
        except AHNConfigError as e:
            raise ConversionError(str(e)) from None
        check_window_sinks(cfg.window, cfg.sinks)

        # the reference's own tensor check, on a model without storage: names and shapes of every
        # AHN tensor, and of every base tensor when the base is here
        with torch.device("meta"):
            model = ReferenceModel(cfg)
        expected = model.state_dict()
        # header-only reads: a base (or merged) folder holds GBs of which only the AHN tensors are loaded
        ahn_shapes, ahn_tensors = _scan_folder(ahn_dir, want=is_ahn_key)
        if merged:
            shapes = ahn_shapes
        else:
            foreign = sorted(k for k in ahn_shapes if not is_ahn_key(k))
            if foreign and base_dir is not None:
                raise ConversionError(
                    f"the AHN checkpoint {ahn_dir} holds non-AHN tensors ({_names(foreign)}); a merged "
                    f"checkpoint (base + AHN in one folder) is converted alone: ahn-gguf convert MERGED -o OUT")
            if base_dir is not None:
                shapes, clash = _scan_folder(base_dir, want=is_ahn_key)
                if clash:
                    raise ConversionError(
                        f"the base checkpoint {base_dir} already holds AHN tensors ({_names(sorted(clash))}); "
                        f"convert it alone as a merged folder, or pass a plain base")
            else:  # a sidecar: the base is not here, its tensors are the reference's by definition
                shapes = {k: tuple(v.shape) for k, v in expected.items() if not is_ahn_key(k)}
        check = {k: torch.empty(s, device="meta") for k, s in shapes.items() if not is_ahn_key(k)}
        check.update(ahn_tensors)
        try:
            check_tensors(model, check)
        except AHNConfigError as e:
            raise ConversionError(str(e)) from None

        variant, H, D, d = cfg.ahn_variant, cfg.num_attention_heads, cfg.hidden_size, cfg.head_dim
        base = BaseShape(cfg.family, cfg.num_hidden_layers, D, H, cfg.num_key_value_heads, d)
        tensors, dropped, count = {}, [], 0
        for bid in cfg.ahn_layer_ids:
            prefix = HF_AHN_PREFIX.format(bid=bid)
            for t in AHN_TENSORS[variant]:
                src = ahn_tensors[prefix + t.hf]
                arr = src.to(torch.float32).numpy()
                if not np.isfinite(arr).all():
                    bad = int((~np.isfinite(arr)).sum())
                    raise ConversionError(f"AHN tensor {prefix + t.hf} has {bad} NaN/Inf values of {arr.size}")
                if t.transpose_heads:
                    arr = arr.transpose(0, 2, 1)
                tensors[t.gguf.format(bid=bid)] = np.ascontiguousarray(arr)
                count += src.numel()
            for name in AHN_UNUSED_TENSORS[variant]:
                if prefix + name in ahn_tensors:
                    dropped.append(prefix + name)
                count += H  # H values per layer (GDN's D), counted as the published sizes count them
        if dropped:
            log.info("not written (unused by the AHN math, docs/AHN-SPEC.md): %s", _names(dropped))

        layers = [0 if i in cfg.fa_layer_ids else 1 for i in range(cfg.num_hidden_layers)]
        source = source or str(ahn_dir)
        payload = cls(variant=variant, window=cfg.window, sinks=cfg.sinks, layers=layers, base=base,
                      tensors=tensors, parameter_count=count, source_ahn=source,
                      training=training or _training_text(ahn_cfg, source), norm_eps=cfg.ahn_norm_eps,
                      dropped=dropped)
        payload.validate()
        payload.log_parameter_count()
        if window is None or sinks is None:
            log.info(
                "note: the defaults recorded in the file, W = %d and S = %d, %s the AHN config.json, which "
                "holds training values; for long context the paper evaluates with S = %d, W = %d: pass "
                "--sinks %d --window %d to record those (they can also be overridden at load time)",
                payload.window, payload.sinks, "partly come from" if window is not None or sinks is not None
                else "come from", PAPER_SINKS, PAPER_WINDOW, PAPER_SINKS, PAPER_WINDOW)
        return payload

    @classmethod
    def from_sidecar(cls, contents: GGUFContents, *, window: int | None = None,
                     sinks: int | None = None) -> AHNPayload:
        """From an AHN-only GGUF (general.architecture = constants.ARCH_SIDECAR), validated."""
        where = contents.path or "the sidecar"
        if contents.arch != ARCH_SIDECAR:
            raise ConversionError(
                f"{where} is not an AHN sidecar: general.architecture is {contents.arch!r}, expected "
                f"{ARCH_SIDECAR!r} (make one with: ahn-gguf convert --ahn-only AHN -o ahn.gguf)")
        check_window_sinks(window, sinks)

        def need(key_template: str):
            key = key_template.format(arch=ARCH_SIDECAR)
            if key not in contents.kv:
                raise ConversionError(f"{where}: missing metadata key {key}")
            return contents.kv[key].value

        variant = need(KEY_VARIANT)
        if variant not in VARIANTS:
            raise ConversionError(f"{where}: unknown AHN variant {variant!r}; expected one of {', '.join(VARIANTS)}")
        base = BaseShape(need(KEY_BASE_ARCH), need(KEY_BASE_N_LAYER), need(KEY_BASE_N_EMBD), need(KEY_BASE_N_HEAD),
                         need(KEY_BASE_N_HEAD_KV), need(KEY_BASE_HEAD_DIM))
        if base.arch not in ARCH_FOR_BASE:
            raise ConversionError(f"{where}: unsupported base architecture {base.arch!r}; "
                                  f"expected one of {', '.join(ARCH_FOR_BASE)}")
        tensors = {}
        for t in contents.tensors:
            if t.ggml_type not in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
                raise ConversionError(f"{where}: AHN tensor {t.name} has type {t.ggml_type.name}; expected F32 or F16")
            tensors[t.name] = t.array()
        payload = cls(
            variant=variant,
            window=need(KEY_WINDOW) if window is None else window,
            sinks=need(KEY_SINKS) if sinks is None else sinks,
            layers=[int(x) for x in need(KEY_LAYERS)],
            base=base, tensors=tensors, parameter_count=need(KEY_PARAM_COUNT),
            source_ahn=need(KEY_SOURCE_AHN), training=need(KEY_TRAINING),
            norm_eps=float(need(KEY_NORM_EPS)),
            memory_type=contents.kv[KEY_MEMORY_TYPE.format(arch=ARCH_SIDECAR)].value
            if KEY_MEMORY_TYPE.format(arch=ARCH_SIDECAR) in contents.kv else None)
        if payload.memory_type is not None and payload.memory_type not in MEMORY_TYPES:
            raise ConversionError(f"{where}: {KEY_MEMORY_TYPE.format(arch=ARCH_SIDECAR)} is {payload.memory_type!r}, "
                                  f"expected one of {', '.join(MEMORY_TYPES)}")
        check_window_sinks(payload.window, payload.sinks)
        payload.validate()
        payload.log_parameter_count()
        return payload

    def with_window(self, window: int | None, sinks: int | None) -> AHNPayload:
        check_window_sinks(window, sinks)
        return replace(self, window=self.window if window is None else window,
                       sinks=self.sinks if sinks is None else sinks)

    def with_memory_type(self, memory_type: str | None) -> AHNPayload:
        """The memory type recorded in the file (None: keep this payload's)."""
        if memory_type is None:
            return self
        if memory_type not in MEMORY_TYPES:
            raise ConversionError(f"memory type {memory_type!r}: expected one of {', '.join(MEMORY_TYPES)}")
        return replace(self, memory_type=memory_type)

    # -- checks ------------------------------------------------------------------------------------

    def validate(self) -> None:
        """Tensor set and shapes exactly as the runtime loads them, finite values, sane flags."""
        if len(self.layers) != self.base.n_layer or any(f not in (0, 1) for f in self.layers):
            raise ConversionError(f"AHN layer flags {self.layers} do not give one 0/1 flag per base layer "
                                  f"({self.base.n_layer})")
        if not any(self.layers):
            raise ConversionError("no layer has an AHN (every layer is in fa_layer_ids)")
        expected = expected_tensors(self.variant, self.base, self.layers)
        missing = sorted(set(expected) - set(self.tensors))
        extra = sorted(set(self.tensors) - set(expected))
        if missing:
            raise ConversionError(f"missing AHN tensors for variant {self.variant}: {_names(missing)}")
        if extra:
            raise ConversionError(f"unexpected AHN tensors for variant {self.variant} "
                                  f"(layer flags {self.layers}): {_names(extra)}")
        for name, shape in expected.items():
            arr = self.tensors[name]
            if tuple(arr.shape) != shape:
                raise ConversionError(f"AHN tensor {name}: expected shape {shape}, got {tuple(arr.shape)}")
            if not np.isfinite(arr).all():
                raise ConversionError(f"AHN tensor {name} has {int((~np.isfinite(arr)).sum())} NaN/Inf values")

    def formula_count(self) -> int:
        return ahn_param_count(self.variant, sum(self.layers), self.base.n_embd, self.base.n_head,
                               self.base.head_dim)

    def log_parameter_count(self) -> None:
        """Log the AHN size, checked against constants.ahn_param_count and the published sizes."""
        formula = self.formula_count()
        if self.parameter_count != formula:
            raise ConversionError(
                f"AHN parameter count {self.parameter_count:,} does not match the formula for variant "
                f"{self.variant} ({formula:,}, constants.ahn_param_count)")
        written = sum(a.size for a in self.tensors.values())
        msg = (f"AHN {self.variant}: {sum(self.layers)} of {self.base.n_layer} layers, "
               f"{self.parameter_count:,} parameters ({self.parameter_count / 1e6:.1f}M, matches "
               f"constants.ahn_param_count)")
        if written != self.parameter_count:
            msg += f"; {written:,} written (the rest is unused)"
        shape = (self.base.n_layer, self.base.n_embd, self.base.n_head, self.base.head_dim)
        for name, published_shape in PUBLISHED_BASE_SHAPES.items():
            if published_shape == shape and all(self.layers):
                published = PUBLISHED_AHN_PARAMS[name, self.variant]
                agree = round(self.parameter_count / 1e6, 1) == published
                msg += (f"; published size for {name}: {published}M"
                        + ("" if agree else " (DIFFERENT: check the checkpoint)"))
        log.info(msg)

    # -- GGUF --------------------------------------------------------------------------------------

    def metadata(self, arch: str) -> list[tuple[str, KV]]:
        """The architecture-scoped AHN keys (`{arch}.ahn.*`), read by the runtime."""
        return [
            (KEY_VARIANT.format(arch=arch), KV(VT.STRING, self.variant)),
            (KEY_WINDOW.format(arch=arch), KV(VT.UINT32, int(self.window))),
            (KEY_SINKS.format(arch=arch), KV(VT.UINT32, int(self.sinks))),
            (KEY_LAYERS.format(arch=arch), KV(VT.ARRAY, [int(x) for x in self.layers], VT.INT32)),
            (KEY_NORM_EPS.format(arch=arch), KV(VT.FLOAT32, float(self.norm_eps))),
        ] + ([] if self.memory_type is None else [(KEY_MEMORY_TYPE.format(arch=arch), KV(VT.STRING, self.memory_type))])

    def provenance(self, source_base: str | None) -> list[tuple[str, KV]]:
        out = [] if source_base is None else [(KEY_SOURCE_BASE, KV(VT.STRING, source_base))]
        return out + [
            (KEY_SOURCE_AHN, KV(VT.STRING, self.source_ahn)),
            (KEY_PARAM_COUNT, KV(VT.UINT64, int(self.parameter_count))),
            (KEY_TRAINING, KV(VT.STRING, self.training)),
            (KEY_CONVERTER, KV(VT.STRING, f"ahn-gguf {__version__}")),
        ]

    def base_metadata(self) -> list[tuple[str, KV]]:
        """Sidecar only: the base the AHN belongs to, checked by `attach`."""
        b = self.base
        return [
            (KEY_BASE_ARCH, KV(VT.STRING, b.arch)),
            (KEY_BASE_N_LAYER, KV(VT.UINT32, b.n_layer)),
            (KEY_BASE_N_EMBD, KV(VT.UINT32, b.n_embd)),
            (KEY_BASE_N_HEAD, KV(VT.UINT32, b.n_head)),
            (KEY_BASE_N_HEAD_KV, KV(VT.UINT32, b.n_head_kv)),
            (KEY_BASE_HEAD_DIM, KV(VT.UINT32, b.head_dim)),
        ]

    def tensor_entries(self, f32: bool) -> list[TensorEntry]:
        """AHN tensors in GGUF layout: 1-D ones F32 always, 2-D/3-D ones F32 if `f32` else F16
        (never quantized, whatever the base's type)."""
        out = []
        for name, arr in self.tensors.items():
            if arr.ndim == 1 or f32:
                data, qtype = np.ascontiguousarray(arr, dtype=np.float32), gguf.GGMLQuantizationType.F32
            else:
                big = float(np.abs(arr).max(initial=0.0))
                if big > F16_MAX:
                    raise ConversionError(f"AHN tensor {name} holds {big:g}, beyond float16's range: "
                                          f"convert with --outtype f32")
                data, qtype = arr.astype(np.float16), gguf.GGMLQuantizationType.F16
            out.append(TensorEntry(name, qtype, tuple(arr.shape), data.nbytes, data))
        return out

    def sidecar(self) -> GGUFContents:
        """The AHN-only GGUF: keys under the sidecar arch, base description, F32 tensors (lossless
        from the released bf16; `attach` picks F16 or F32 to match the base)."""
        contents = GGUFContents()
        contents.kv[gguf.Keys.General.ARCHITECTURE] = KV(VT.STRING, ARCH_SIDECAR)
        for key, kv in self.metadata(ARCH_SIDECAR) + self.base_metadata() + self.provenance(None):
            contents.kv[key] = kv
        contents.tensors = self.tensor_entries(f32=True)
        return contents


def hf_architectures() -> dict[str, str]:
    """{HF architecture class: model_type} of the bases the converter supports: the reference's families."""
    from ahn_gguf.reference.config import FAMILIES

    return {cls: model_type for model_type, cls in FAMILIES.items()}


def check_architecture(cfg: dict, folder) -> None:
    archs = cfg.get("architectures") or []
    supported = hf_architectures()
    if not archs or archs[0] not in supported or cfg.get("model_type") != supported[archs[0]]:
        raise ConversionError(
            f"unsupported base architecture in {folder}: architectures {archs or 'missing'}, model_type "
            f"{cfg.get('model_type')!r}; ahn-gguf converts {' and '.join(supported)} bases")


def _training_text(cfg: dict, source: str) -> str:
    parts = [f"{HF_SLIDING_WINDOW}={cfg.get(HF_SLIDING_WINDOW)}"]
    if "sliding_window_type" in cfg:
        parts.append(f"sliding_window_type={cfg['sliding_window_type']}")
    parts.append(f"{HF_NUM_ATTN_SINKS}={cfg[HF_NUM_ATTN_SINKS]}" if HF_NUM_ATTN_SINKS in cfg
                 else f"{HF_NUM_ATTN_SINKS} absent")
    return f"AHN checkpoint {source} (self-distilled from its base); training config: {', '.join(parts)}"


def _names(names, limit: int = 6) -> str:
    names = list(names)
    return ", ".join(names[:limit]) + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _scan_folder(folder: Path, want) -> tuple[dict[str, tuple[int, ...]], dict]:
    """Shapes of every tensor of a checkpoint folder (headers only), and the data of those whose
    name satisfies `want` (the AHN tensors of a merged folder: a few MB out of GBs)."""
    from safetensors import safe_open

    from ahn_gguf.reference.loading import WEIGHTS_FILE, WEIGHTS_INDEX_FILE

    folder = Path(folder)
    index = folder / WEIGHTS_INDEX_FILE
    if index.is_file():
        with open(index) as f:
            files = sorted(set(json.load(f)["weight_map"].values()))
    elif (folder / WEIGHTS_FILE).is_file():
        files = [WEIGHTS_FILE]
    else:
        raise ConversionError(f"no {WEIGHTS_FILE} or {WEIGHTS_INDEX_FILE} in {folder} "
                              f"(only safetensors checkpoints are supported)")
    shapes, picked = {}, {}
    for name in files:
        if not (folder / name).is_file():
            raise ConversionError(f"{folder}: {WEIGHTS_INDEX_FILE} lists {name}, which is missing")
        with safe_open(folder / name, framework="pt") as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
                if want(key):
                    picked[key] = f.get_tensor(key)
    return shapes, picked


def hf_tensors_from_gguf(path: str | Path) -> tuple[str, dict[str, np.ndarray]]:
    """(variant, {checkpoint name: float32 array}) of an AHN sidecar GGUF (validated by `from_sidecar`):
    the inverse of `from_hf`'s mapping, for a warm start of distillation from a shipped AHN."""
    from ahn_gguf.gguf_io.contents import read_gguf

    payload = AHNPayload.from_sidecar(read_gguf(path))
    out = {}
    for bid, flag in enumerate(payload.layers):
        if not flag:
            continue
        for t in AHN_TENSORS[payload.variant]:
            arr = np.asarray(payload.tensors[t.gguf.format(bid=bid)], dtype=np.float32)
            if t.transpose_heads:
                arr = arr.transpose(0, 2, 1)
            out[HF_AHN_PREFIX.format(bid=bid) + t.hf] = np.array(arr, dtype=np.float32, order="C")  # a writable copy
    return payload.variant, out
