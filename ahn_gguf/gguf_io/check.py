"""Strict validation of a GGUF file before llama.cpp sees it.

llama.cpp trusts much of a file's header: a truncated file, a tensor whose offset points past
the end, or an AHN file whose metadata contradicts its tensors can crash the process instead
of failing cleanly. `check_gguf_file` parses the whole header with the strict parser of
`header` (every length against the bytes that remain, every tensor inside the data section)
and, for AHN architectures, checks the AHN metadata against the tensors. Errors are
GGUFFormatError / AHNModelError with a message naming the problem. Only the header is read.
"""

from __future__ import annotations

import mmap
import os
from dataclasses import dataclass, field

from ahn_gguf import constants as C
from ahn_gguf.errors import AHNModelError, GGUFFormatError
from ahn_gguf.gguf_io.header import GGUF_MAGIC, parse_header

KEY_TOKENS = "tokenizer.ggml.tokens"

@dataclass
class GGUFInfo:
    """What the checks read from a GGUF header."""

    path: str
    version: int
    arch: str | None
    kv: dict = field(repr=False, default_factory=dict)        # key -> value (arrays as lists)
    tensors: dict = field(repr=False, default_factory=dict)   # name -> (ne in ggml order, ggml type, offset)
    ahn_window: int | None = None
    ahn_sinks: int | None = None
    ahn_variant: str | None = None
    ahn_memory_type: str | None = None   # {arch}.ahn.memory_type: "f32" (also when absent) or "f16"


def check_gguf_file(path: str | os.PathLike) -> GGUFInfo:
    """Parse and validate a GGUF header (and the AHN metadata of AHN files); see the module doc."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AHNModelError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise AHNModelError(f"not a file: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
        if head != GGUF_MAGIC:
            raise GGUFFormatError(f"{path} is not a GGUF file (magic {head!r}, expected b'GGUF')")
        # mapped, so that only the header pages are ever read
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            h = parse_header(mm, path, string_arrays=False, decode_keys=frozenset({KEY_TOKENS}))

    info = GGUFInfo(path=path, version=h.version, arch=None)
    info.kv = {k: v.value for k, v in h.kv.items()}
    info.tensors = {t.name: (t.ne, t.ggml_type, t.offset) for t in h.tensors}
    arch = info.kv.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFFormatError(f"{path}: no general.architecture")
    info.arch = arch
    _check_vocab(info)
    if arch in C.BASE_FOR_ARCH:
        _check_ahn(info)
    return info


def _check_vocab(info: GGUFInfo) -> None:
    """What llama.cpp's vocabulary loader assumes of the token list: each string once."""
    tokens = info.kv.get(KEY_TOKENS)
    if tokens is None:
        return
    if not isinstance(tokens, list):
        raise GGUFFormatError(f"{info.path}: {KEY_TOKENS} must be an array of strings")
    seen: dict = {}
    for i, tok in enumerate(tokens):
        if not isinstance(tok, (str, bytes)):
            raise GGUFFormatError(f"{info.path}: {KEY_TOKENS} must be an array of strings")
        key = tok if tok else f"[EMPTY_{i}]"  # llama.cpp's name for an empty token
        if key in seen:
            raise GGUFFormatError(f"{info.path}: {KEY_TOKENS}: token {i} {tok!r} duplicates token {seen[key]} "
                                  "(a corrupted vocabulary)")
        seen[key] = i
    info.kv[KEY_TOKENS] = None  # 150k strings are not worth keeping in GGUFInfo


def _kv_int(info: GGUFInfo, key: str, required: bool = True) -> int | None:
    v = info.kv.get(key)
    if v is None:
        if required:
            raise AHNModelError(f"{info.path}: AHN model without {key}")
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise AHNModelError(f"{info.path}: {key} must be an integer, got {v!r}")
    return v


def _check_ahn(info: GGUFInfo) -> None:
    """The AHN metadata of an AHN file agrees with its tensors."""
    arch, path = info.arch, info.path
    variant = info.kv.get(C.KEY_VARIANT.format(arch=arch))
    if variant not in C.VARIANTS:
        raise AHNModelError(f"{path}: {C.KEY_VARIANT.format(arch=arch)} is {variant!r}, expected one of {', '.join(C.VARIANTS)}")
    info.ahn_variant = variant
    info.ahn_window = _kv_int(info, C.KEY_WINDOW.format(arch=arch))
    sinks = _kv_int(info, C.KEY_SINKS.format(arch=arch), required=False)
    info.ahn_sinks = 0 if sinks is None else sinks
    if not 1 <= info.ahn_window <= C.MAX_WINDOW:
        raise AHNModelError(f"{path}: AHN window {info.ahn_window} out of range (1..{C.MAX_WINDOW})")
    if not 0 <= info.ahn_sinks <= C.MAX_WINDOW:
        raise AHNModelError(f"{path}: AHN sinks {info.ahn_sinks} out of range")
    memory_type = info.kv.get(C.KEY_MEMORY_TYPE.format(arch=arch), "f32")
    if memory_type not in C.MEMORY_TYPES:
        raise AHNModelError(f"{path}: {C.KEY_MEMORY_TYPE.format(arch=arch)} is {memory_type!r}, expected one of "
                            f"{', '.join(C.MEMORY_TYPES)}")
    info.ahn_memory_type = memory_type

    n_layer = _kv_int(info, f"{arch}.block_count")
    n_embd = _kv_int(info, f"{arch}.embedding_length")
    n_head = _kv_int(info, f"{arch}.attention.head_count")
    if n_layer is None or n_layer < 1 or n_head < 1 or n_embd < 1:
        raise AHNModelError(f"{path}: invalid block_count/embedding_length/head_count")
    n_head_kv = _kv_int(info, f"{arch}.attention.head_count_kv", required=False)
    n_head_kv = n_head if n_head_kv is None else n_head_kv
    if n_head_kv < 1 or n_head % n_head_kv:
        raise AHNModelError(f"{path}: {arch}.attention.head_count_kv = {n_head_kv} must be >= 1 and divide head_count = {n_head}")
    head_dim = _kv_int(info, f"{arch}.attention.key_length", required=False)
    head_dim = n_embd // n_head if head_dim is None else head_dim
    if head_dim < 1 or head_dim > 256:
        raise AHNModelError(f"{path}: AHN head size {head_dim} out of range (1..256)")

    layers = info.kv.get(C.KEY_LAYERS.format(arch=arch))
    if layers is not None and (not isinstance(layers, list) or len(layers) != n_layer):
        raise AHNModelError(f"{path}: {C.KEY_LAYERS.format(arch=arch)} must list {n_layer} layer flags")
    if layers is not None and not all(layers):
        raise AHNModelError(f"{path}: layers {[i for i, x in enumerate(layers) if not x]} keep full attention (fa_layer_ids), "
                            "which this runtime does not support yet")

    expected = expected_ahn_shapes(variant, n_embd, n_head, head_dim)
    for il in range(n_layer):
        for name_fmt, shape in expected.items():
            name = name_fmt.format(bid=il)
            got = info.tensors.get(name)
            if got is None:
                raise AHNModelError(f"{path}: AHN tensor {name} is missing")
            if tuple(got[0]) != shape:
                raise AHNModelError(f"{path}: AHN tensor {name} has shape {tuple(got[0])}, the metadata implies {shape}")
    known = {n.format(bid=il) for n in expected for il in range(n_layer)}
    extra = sorted(n for n in info.tensors if ".ahn_" in n and n not in known)
    if extra:
        raise AHNModelError(f"{path}: AHN tensors that the {variant} variant does not have: {', '.join(extra[:5])}")


def expected_ahn_shapes(variant: str, n_embd: int, n_head: int, head_dim: int) -> dict[str, tuple[int, ...]]:
    """GGUF tensor name format -> ggml shape (ne0, ne1, ...) of every AHN tensor of one layer."""
    H, D, d = n_head, n_embd, head_dim
    by_spec = {"(H, D)": (D, H), "(H)": (H,), "(d)": (d,), "(H*d)": (H * d,), "(H, d, d)": (d, d, H)}
    return {t.gguf: by_spec[t.shape] for t in C.AHN_TENSORS[variant]}
