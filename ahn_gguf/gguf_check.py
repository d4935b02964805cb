"""Strict validation of a GGUF file before llama.cpp sees it.

llama.cpp trusts much of a file's header: a truncated file, a tensor whose offset points past
the end, or an AHN file whose metadata contradicts its tensors can crash the process instead
of failing cleanly. `check_gguf_file` parses the whole header in Python with bounds checks
(every length against the bytes that remain, every tensor inside the data section) and, for
AHN architectures, checks the AHN metadata against the tensors. Errors are GGUFFormatError /
AHNModelError with a message naming the problem. It reads only the header, never tensor data.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from ahn_gguf import constants as C
from ahn_gguf.errors import AHNModelError, GGUFFormatError

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# ggml type id -> (elements per block, bytes per block); a copy of gguf-py's GGML_QUANT_SIZES for
# the pinned llama.cpp (tests/test_gguf_check.py holds the two together)
GGML_BLOCK = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36),
    41: (128, 18), 42: (64, 18),
}

# GGUF value types: id -> struct format of a scalar (strings and arrays are handled apart)
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9


@dataclass
class GGUFInfo:
    """What the checks read from a GGUF header."""

    path: str
    version: int
    arch: str | None
    kv: dict = field(repr=False, default_factory=dict)        # scalars and strings; arrays as lists if short
    tensors: dict = field(repr=False, default_factory=dict)   # name -> (shape ne0.., ggml type)
    ahn_window: int | None = None
    ahn_sinks: int | None = None
    ahn_variant: str | None = None


class _Reader:
    def __init__(self, data: memoryview, path: str):
        self.data, self.pos, self.path = data, 0, path

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise GGUFFormatError(f"{self.path}: truncated or corrupted GGUF: {what} needs {n} bytes at offset {self.pos}, file has {len(self.data)}")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.data, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str:
        n = self.scalar("<Q", what + " length")
        self.need(n, what)
        raw = bytes(self.data[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise GGUFFormatError(f"{self.path}: {what} is not valid UTF-8") from None

    def value(self, vtype: int, what: str, depth: int = 0):
        if vtype in _SCALAR:
            return self.scalar(_SCALAR[vtype], what)
        if vtype == _STRING:
            return self.string(what)
        if vtype == _ARRAY and depth == 0:
            etype = self.scalar("<I", what + " element type")
            n = self.scalar("<Q", what + " length")
            if etype not in _SCALAR and etype != _STRING:
                raise GGUFFormatError(f"{self.path}: {what} has unknown array element type {etype}")
            if etype in _SCALAR:
                size = struct.calcsize(_SCALAR[etype])
                self.need(n * size, what)
                if n <= 4096:
                    vals = list(struct.unpack_from(f"<{n}{_SCALAR[etype][1]}", self.data, self.pos))
                else:
                    vals = None  # long arrays (vocabularies) are bounds-checked, not decoded
                self.pos += n * size
                return vals
            # strings: each is at least its 8-byte length
            self.need(n * 8, what)
            for _ in range(n):
                self.string(what + " element")
            return None
        raise GGUFFormatError(f"{self.path}: {what} has unknown value type {vtype}")


def check_gguf_file(path: str | os.PathLike) -> GGUFInfo:
    """Parse and validate a GGUF header (and the AHN metadata of AHN files); see the module doc."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AHNModelError(f"model file not found: {path}")
    if not os.path.isfile(path):
        raise AHNModelError(f"not a file: {path}")
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(4)
        if head != GGUF_MAGIC:
            raise GGUFFormatError(f"{path} is not a GGUF file (magic {head!r}, expected b'GGUF')")
        # mapped, so that only the header pages are ever read
        with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
            with memoryview(mm) as view:
                return _check(path, size, view)


def _check(path: str, size: int, buf: memoryview) -> GGUFInfo:
    r = _Reader(buf, path)
    r.pos = 4
    version = r.scalar("<I", "version")
    if version not in (2, 3):
        raise GGUFFormatError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors = r.scalar("<Q", "tensor count")
    n_kv = r.scalar("<Q", "metadata count")
    # every KV needs >= 12 bytes and every tensor info >= 24: counts beyond that are corruption
    if n_kv * 12 > size or n_tensors * 24 > size:
        raise GGUFFormatError(f"{path}: corrupted GGUF header (claims {n_kv} metadata entries and {n_tensors} tensors in {size} bytes)")

    info = GGUFInfo(path=path, version=version, arch=None)
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        vtype = r.scalar("<I", f"type of {key}")
        info.kv[key] = r.value(vtype, f"metadata {key!r}")
    arch = info.kv.get("general.architecture")
    if not isinstance(arch, str):
        raise GGUFFormatError(f"{path}: no general.architecture")
    info.arch = arch

    for i in range(n_tensors):
        name = r.string(f"tensor name #{i}")
        n_dims = r.scalar("<I", f"dims of {name}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"{path}: tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        shape = tuple(r.scalar("<Q", f"shape of {name}") for _ in range(n_dims))
        ttype = r.scalar("<I", f"type of {name}")
        offset = r.scalar("<Q", f"offset of {name}")
        if ttype not in GGML_BLOCK:
            raise GGUFFormatError(f"{path}: tensor {name!r} has unknown type {ttype}")
        if any(d == 0 or d > 1 << 40 for d in shape):
            raise GGUFFormatError(f"{path}: tensor {name!r} has an invalid shape {shape}")
        if name in info.tensors:
            raise GGUFFormatError(f"{path}: duplicate tensor {name!r}")
        info.tensors[name] = (shape, ttype, offset)

    alignment = info.kv.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise GGUFFormatError(f"{path}: invalid general.alignment {alignment!r}")
    data_start = (r.pos + alignment - 1) // alignment * alignment
    data_size = size - data_start
    for name, (shape, ttype, offset) in info.tensors.items():
        block, block_bytes = GGML_BLOCK[ttype]
        n = 1
        for d in shape:
            n *= d
        if shape[0] % block:
            raise GGUFFormatError(f"{path}: tensor {name!r}: first dimension {shape[0]} is not a multiple of its block size {block}")
        nbytes = n // block * block_bytes
        if offset % alignment or offset + nbytes > data_size:
            raise GGUFFormatError(
                f"{path}: tensor {name!r} ({nbytes} bytes at data offset {offset}) lies outside the file "
                f"({data_size} bytes of tensor data): truncated or corrupted"
            )

    if arch in C.BASE_FOR_ARCH:
        _check_ahn(info)
    return info


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
