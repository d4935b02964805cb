"""The one GGUF header parser: strict, standard library only.

`parse_header` reads a GGUF v2/v3 header (metadata and tensor infos) from a buffer with a bounds
check on every length, so a truncated or corrupted file raises GGUFFormatError instead of reading
past its end. The runtime's validation (`check`) and the converter's reader
(`ahn_gguf.gguf_io.contents`) are both built on it.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass, field

from ahn_gguf.errors import GGUFFormatError

GGUF_MAGIC = b"GGUF"
GGUF_DEFAULT_ALIGNMENT = 32
MAX_DIMS = 4

# GGUF value types (gguf-py's GGUFValueType): id -> struct format of a scalar
SCALAR_FORMATS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9

# ggml type id -> (elements per block, bytes per block); a copy of gguf-py's GGML_QUANT_SIZES for
# the pinned llama.cpp (tests/convert/test_gguf_file.py holds the two together)
GGML_BLOCK = {
    0: (1, 4), 1: (1, 2), 2: (32, 18), 3: (32, 20), 6: (32, 22), 7: (32, 24), 8: (32, 34), 9: (32, 36),
    10: (256, 84), 11: (256, 110), 12: (256, 144), 13: (256, 176), 14: (256, 210), 15: (256, 292),
    16: (256, 66), 17: (256, 74), 18: (256, 98), 19: (256, 50), 20: (32, 18), 21: (256, 110),
    22: (256, 82), 23: (256, 136), 24: (1, 1), 25: (1, 2), 26: (1, 4), 27: (1, 8), 28: (1, 8),
    29: (256, 56), 30: (1, 2), 34: (256, 54), 35: (256, 66), 39: (32, 17), 40: (64, 36),
    41: (128, 18), 42: (64, 18),
}


@dataclass
class Value:
    """A metadata value: its GGUF type, the value (arrays: a list), the element type of arrays."""

    vtype: int
    value: object
    etype: int | None = None


@dataclass
class TensorInfo:
    name: str
    ne: tuple[int, ...]      # ggml order (ne0 first)
    ggml_type: int
    offset: int              # from the start of the data section
    nbytes: int


@dataclass
class Header:
    version: int
    kv: dict[str, Value] = field(default_factory=dict)   # in file order
    tensors: list[TensorInfo] = field(default_factory=list)
    alignment: int = GGUF_DEFAULT_ALIGNMENT
    data_start: int = 0


def tensor_nbytes(ggml_type: int, ne) -> int:
    block, block_bytes = GGML_BLOCK[ggml_type]
    n = 1
    for d in ne:
        n *= d
    return n // block * block_bytes


class _Reader:
    def __init__(self, buf, path: str, string_arrays: bool = True):
        self.buf, self.pos, self.path = buf, 0, path
        self.string_arrays = string_arrays

    def need(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > len(self.buf):
            raise GGUFFormatError(f"{self.path}: truncated or corrupted GGUF: {what} needs {n} bytes at offset "
                                  f"{self.pos}, the file has {len(self.buf)}")

    def scalar(self, fmt: str, what: str):
        n = struct.calcsize(fmt)
        self.need(n, what)
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += n
        return v

    def string(self, what: str) -> str | bytes:
        n = self.scalar("<Q", what + " length")
        self.need(n, what)
        raw = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return raw  # kept byte-exact (llama.cpp reads bytes too)

    def value(self, vtype: int, what: str) -> Value:
        if vtype in SCALAR_FORMATS:
            return Value(vtype, self.scalar(SCALAR_FORMATS[vtype], what))
        if vtype == STRING:
            return Value(vtype, self.string(what))
        if vtype == ARRAY:
            etype = self.scalar("<I", what + " element type")
            n = self.scalar("<Q", what + " length")
            if etype in SCALAR_FORMATS:
                fmt = SCALAR_FORMATS[etype]
                size = struct.calcsize(fmt)
                self.need(n * size, what)
                items = list(struct.unpack_from(f"<{n}{fmt[1]}", self.buf, self.pos))
                self.pos += n * size
                return Value(vtype, items, etype)
            if etype == STRING:
                self.need(n * 8, what)  # each string is at least its 8-byte length
                if not self.string_arrays:  # bounds-checked, not decoded (vocabularies: 150k strings)
                    for _ in range(n):
                        self.need(8, what)
                        self.pos += 8 + struct.unpack_from("<Q", self.buf, self.pos)[0]
                        self.need(0, what)
                    return Value(vtype, None, etype)
                return Value(vtype, [self.string(what + " element") for _ in range(n)], etype)
            raise GGUFFormatError(f"{self.path}: {what} has an unsupported array element type {etype}")
        raise GGUFFormatError(f"{self.path}: {what} has an unknown value type {vtype}")


def parse_header(buf, path: str = "<gguf>", string_arrays: bool = True, decode_keys: frozenset = frozenset()) -> Header:
    """Parse the header of a GGUF file held in `buf` (bytes, mmap, memoryview).

    `string_arrays=False` skips decoding string arrays (their value is None), for callers that
    only validate: the bounds are checked all the same. String arrays named in `decode_keys`
    are decoded anyway.
    """
    if len(buf) < 4 or bytes(buf[:4]) != GGUF_MAGIC:
        raise GGUFFormatError(f"{path} is not a GGUF file (magic {bytes(buf[:4])!r}, expected b'GGUF')")
    r = _Reader(buf, path, string_arrays)
    r.pos = 4
    version = r.scalar("<I", "version")
    if version not in (2, 3):
        if len(buf) >= 8 and struct.unpack_from(">I", buf, 4)[0] in (2, 3):
            raise GGUFFormatError(f"{path} is a big-endian GGUF file; only little-endian files are supported")
        raise GGUFFormatError(f"{path}: unsupported GGUF version {version} (expected 2 or 3)")
    n_tensors = r.scalar("<Q", "tensor count")
    n_kv = r.scalar("<Q", "metadata count")
    # every metadata entry needs >= 12 bytes and every tensor info >= 24: more is corruption
    if n_kv * 12 > len(buf) or n_tensors * 24 > len(buf):
        raise GGUFFormatError(f"{path}: corrupted GGUF header (claims {n_kv} metadata entries and {n_tensors} tensors in {len(buf)} bytes)")

    h = Header(version=version)
    for i in range(n_kv):
        key = r.string(f"metadata key #{i}")
        if not isinstance(key, str):
            raise GGUFFormatError(f"{path}: metadata key #{i} is not valid UTF-8")
        vtype = r.scalar("<I", f"type of {key}")
        r.string_arrays = string_arrays or key in decode_keys
        h.kv[key] = r.value(vtype, f"metadata {key!r}")

    names = set()
    for i in range(n_tensors):
        name = r.string(f"tensor name #{i}")
        n_dims = r.scalar("<I", f"dimension count of {name!r}")
        if not 1 <= n_dims <= MAX_DIMS:
            raise GGUFFormatError(f"{path}: tensor {name!r} has {n_dims} dimensions (1..{MAX_DIMS} allowed)")
        ne = tuple(r.scalar("<Q", f"shape of {name!r}") for _ in range(n_dims))
        ggml_type = r.scalar("<I", f"type of {name!r}")
        offset = r.scalar("<Q", f"offset of {name!r}")
        if ggml_type not in GGML_BLOCK:
            raise GGUFFormatError(f"{path}: tensor {name!r} has an unknown type {ggml_type}")
        if any(d == 0 or d > 1 << 40 for d in ne):
            raise GGUFFormatError(f"{path}: tensor {name!r} has an invalid shape {ne}")
        if ne[0] % GGML_BLOCK[ggml_type][0]:
            raise GGUFFormatError(f"{path}: tensor {name!r}: first dimension {ne[0]} is not a multiple of its block size")
        if name in names:
            raise GGUFFormatError(f"{path}: duplicate tensor {name!r}")
        names.add(name)
        h.tensors.append(TensorInfo(name if isinstance(name, str) else name.decode("utf-8", "replace"),
                                    ne, ggml_type, offset, tensor_nbytes(ggml_type, ne)))

    align = h.kv.get("general.alignment")
    h.alignment = GGUF_DEFAULT_ALIGNMENT if align is None else align.value
    if not isinstance(h.alignment, int) or isinstance(h.alignment, bool) or h.alignment <= 0 or h.alignment & (h.alignment - 1):
        raise GGUFFormatError(f"{path}: invalid general.alignment {h.alignment!r}")
    h.data_start = -(-r.pos // h.alignment) * h.alignment
    data_size = len(buf) - h.data_start
    for t in h.tensors:
        if t.offset % h.alignment or t.offset + t.nbytes > data_size:
            raise GGUFFormatError(f"{path}: tensor {t.name!r} ({t.nbytes} bytes at data offset {t.offset}) lies outside the "
                                  f"file ({max(0, data_size)} bytes of tensor data): truncated or corrupted")
    return h


def read_metadata(path: str | os.PathLike) -> dict:
    """Key -> value (arrays as lists) of a GGUF file's metadata; tensor data is not read."""
    with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        return {k: v.value for k, v in parse_header(mm, os.fspath(path)).kv.items()}
