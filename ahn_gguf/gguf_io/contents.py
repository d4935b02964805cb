"""GGUF in and out: a fast reader, one writer, and all-or-nothing output files.

`read_gguf` parses a GGUF file into `GGUFContents` (typed key/values in file order, tensors
as raw bytes + ggml type, memory-mapped). It is a small parser of its own because gguf-py's
GGUFReader builds a numpy view per string and takes ~14 s on a 150k-token vocabulary (this
takes well under a second); tests/convert/test_convert_io.py checks that both agree.

`write_gguf` writes `GGUFContents` with gguf-py's GGUFWriter (the pinned llama.cpp's own
writer), keeping every tensor's bytes and type as given, under `atomic_output`: a temporary
file in the output's folder, renamed over the output only when complete.
"""

from __future__ import annotations

import contextlib
import logging
import mmap
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ahn_gguf.atomic import atomic_output, temp_path  # noqa: F401  (re-exported: the pipeline)
from ahn_gguf.build.pins import import_gguf_py
from ahn_gguf.errors import ConversionError, GGUFFormatError
from ahn_gguf.gguf_io.header import parse_header

log = logging.getLogger("ahn_gguf.convert")

gguf = import_gguf_py()
VT = gguf.GGUFValueType



@dataclass
class KV:
    """One metadata value with its GGUF type (and element type, for arrays)."""

    type: Any          # gguf.GGUFValueType
    value: Any         # str | bytes | int | float | bool | list
    sub_type: Any = None


@dataclass
class TensorEntry:
    """One tensor: name, ggml type, shape in numpy order (ne reversed), and its data.

    `data` is anything with `.tofile(fileobj)` and `.nbytes` that yields exactly the bytes to
    store: a numpy array (uint8 bytes of a quantized tensor, or F32/F16 values) or one of the
    stock converter's lazy tensors, which are computed only when written.
    """

    name: str
    ggml_type: Any     # gguf.GGMLQuantizationType
    shape: tuple[int, ...]
    nbytes: int
    data: Any

    def array(self) -> np.ndarray:
        """The values as float32, dequantized where needed, in `shape`."""
        raw = self.data if isinstance(self.data, np.ndarray) else gguf.LazyNumpyTensor.to_eager(self.data)
        raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
        return gguf.quants.dequantize(raw, self.ggml_type).astype(np.float32, copy=False).reshape(self.shape)


@dataclass
class GGUFContents:
    kv: dict[str, KV] = field(default_factory=dict)    # in file order
    tensors: list[TensorEntry] = field(default_factory=list)
    alignment: int = gguf.GGUF_DEFAULT_ALIGNMENT
    path: Path | None = None

    @property
    def arch(self) -> str | None:
        v = self.kv.get(gguf.Keys.General.ARCHITECTURE)
        return None if v is None else v.value

    def get(self, key: str, default=None):
        v = self.kv.get(key)
        return default if v is None else v.value

    def tensor(self, name: str) -> TensorEntry:
        for t in self.tensors:
            if t.name == name:
                return t
        raise KeyError(name)


# --- reading ----------------------------------------------------------------------------------

def read_gguf(path: str | Path) -> GGUFContents:
    """Metadata and tensors of a little-endian GGUF v2/v3 file; tensor data stays memory-mapped.

    The header is parsed by ahn_gguf.gguf_io.header (the one strict parser of the project)."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except OSError as e:
        raise ConversionError(f"cannot open GGUF file {path}: {e.strerror}") from None
    with f:
        if os.fstat(f.fileno()).st_size < 24:
            raise ConversionError(f"{path} is not a GGUF file (too short)")
        buf = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    try:
        header = parse_header(buf, str(path))
    except GGUFFormatError as e:
        raise ConversionError(str(e)) from None

    out = GGUFContents(path=path, alignment=header.alignment)
    for key, v in header.kv.items():
        if v.vtype == VT.ARRAY and v.etype == VT.ARRAY:
            raise ConversionError(f"{path}: nested metadata arrays are not supported")
        out.kv[key] = KV(VT(v.vtype), v.value, None if v.etype is None else VT(v.etype))
    for t in header.tensors:
        data = np.frombuffer(buf, dtype=np.uint8, count=t.nbytes, offset=header.data_start + t.offset)
        out.tensors.append(TensorEntry(t.name, gguf.GGMLQuantizationType(t.ggml_type), tuple(reversed(t.ne)), t.nbytes, data))
    return out


# --- writing ----------------------------------------------------------------------------------

def check_output(out: str | Path, *, force: bool, inputs=()) -> Path:
    """Refuse an output that exists (unless `force`), is an input, or has no folder to go in."""
    out = Path(out)
    for src in inputs:
        if src is not None and Path(src).exists() and out.exists() and out.resolve() == Path(src).resolve():
            raise ConversionError(f"output {out} is also an input; choose another output file")
    if out.is_dir():
        raise ConversionError(f"output {out} is a folder; give a file name, e.g. {out / 'model.gguf'}")
    if out.exists() and not force:
        raise ConversionError(f"output {out} already exists; pass --force to overwrite it")
    if not out.parent.is_dir():
        raise ConversionError(f"the output's folder {out.parent} does not exist")
    return out


@contextlib.contextmanager
def removing(*paths: Path) -> Iterator[None]:
    """Delete `paths` when the block ends, however it ends (intermediate files)."""
    try:
        yield
    finally:
        for p in paths:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()


def write_gguf(contents: GGUFContents, out: Path, *, progress: bool = True) -> Path:
    """Write `contents` (metadata in order, tensors in order, bytes untouched) to `out`, atomically."""
    arch = contents.arch
    if arch is None:
        raise ConversionError("internal: GGUF contents without general.architecture")
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.remove_key(gguf.Keys.General.ARCHITECTURE)  # re-added below, in the contents' order
    writer.data_alignment = contents.alignment
    for key, kv in contents.kv.items():
        writer.add_key_value(key, kv.value, kv.type, kv.sub_type)
    for t in contents.tensors:
        if t.data.nbytes != t.nbytes:
            raise ConversionError(f"internal: tensor {t.name} holds {t.data.nbytes} bytes, expected {t.nbytes}")
        # the shape is given in elements; a non-uint8 dtype tells add_tensor_info not to
        # reinterpret it as a byte shape (it does for uint8 with a quantized raw_dtype)
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), t.nbytes, raw_dtype=t.ggml_type)
        # as GGUFWriter.add_tensor does: the data is written (and lazy data computed) by
        # write_tensors_to_file, which also shows the tqdm progress bar
        writer.tensors[-1][t.name].tensor = t.data
    return write_writer(writer, out, progress=progress)


def write_writer(writer, out: Path, *, progress: bool) -> Path:
    """Write a filled gguf.GGUFWriter to `out` atomically (nothing at `out` unless complete)."""
    with atomic_output(out) as tmp:
        try:
            writer.write_header_to_file(path=tmp)
            writer.write_kv_data_to_file()
            writer.write_tensors_to_file(progress=progress)
        finally:
            writer.close()
    return out
