"""Session files: a conversation's llama state on disk, in a format that cannot run code.

A session file restores a context exactly (the tokens evaluated so far, the llama state with
the window K/V, sinks, write gates and recurrent AHN states) plus whatever the application
keeps beside it (`ahn-gguf chat`: the messages). It is read in the order that makes a foreign
or corrupted file harmless:

    offset  size  field
    0       8     magic b"AHNSESS\\0"
    8       4     format version (u32, little-endian)
    12      32    model fingerprint (sha256 of the model file's size, first and last MiB)
    44      12    AHN settings: variant id, window W, sinks S (3 x u32; 0xFFFFFFFF for "no AHN")
    56      8     length of the JSON header (u64, at most MAX_HEADER_BYTES)
    64      n     JSON header: token count, seed, section lengths, the AHN memory type ("f32" when
                  absent), the application's data
    ...           token ids (int32 x n_tokens), logits (float32, only with logits_all), llama state

Magic, version, fingerprint and AHN settings are checked before anything else is parsed; the
section lengths in the header must add up to the file's size exactly, so a truncated or padded
file fails before llama.cpp reads a byte of its state. The JSON is parsed with the standard
library's parser: data only, never code (no pickle).
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from ahn_gguf import constants as C
from ahn_gguf.errors import AHNError

MAGIC = b"AHNSESS\0"
FORMAT_VERSION = 1
MAX_HEADER_BYTES = 64 << 20   # messages of a 1M-token conversation fit; a corrupted length does not allocate GBs
_NO_AHN = 0xFFFFFFFF
_PREFIX = struct.Struct("<8sI32s3IQ")


class SessionFileError(AHNError, ValueError):
    """A session file that cannot be loaded into this model: foreign, corrupted, truncated, or another model's."""


def model_fingerprint(path: str | os.PathLike) -> bytes:
    """Identity of a model file: sha256 of its size and its first and last MiB (cheap for multi-GB files)."""
    st = os.stat(path)
    h = hashlib.sha256(str(st.st_size).encode())
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        f.seek(max(0, st.st_size - (1 << 20)))
        h.update(f.read(1 << 20))
    return h.digest()


def _ahn_settings(llm) -> tuple[int, int, int]:
    if getattr(llm, "ahn_variant", None) is None:
        return (_NO_AHN, _NO_AHN, _NO_AHN)
    return (C.VARIANTS.index(llm.ahn_variant), int(llm.ahn_window), int(llm.ahn_sinks))


def _describe(settings: tuple[int, int, int]) -> str:
    if settings[0] == _NO_AHN:
        return "no AHN"
    variant = C.VARIANTS[settings[0]] if settings[0] < len(C.VARIANTS) else f"variant #{settings[0]}"
    return f"{variant}, window {settings[1]}, sinks {settings[2]}"


def save_session(llm, path: str | os.PathLike, app_data: dict[str, Any] | None = None) -> int:
    """Write llm's state (and `app_data`, JSON-serialisable) to `path` atomically; returns the file size."""
    from ahn_gguf.gguf_io.contents import atomic_output

    state = llm.save_state()
    n_tokens = int(state.n_tokens)
    ids = np.ascontiguousarray(state.input_ids[:n_tokens], dtype="<i4")
    # without logits_all llama-cpp-python never reads the stored logits (sampling happens in the
    # sampler): they are not worth n_batch x n_vocab floats on disk
    scores = np.ascontiguousarray(state.scores, dtype="<f4") if llm._logits_all else np.zeros((0, 0), "<f4")
    llama_state = bytes(state.llama_state[: state.llama_state_size])
    header = json.dumps({
        "n_tokens": n_tokens,
        "seed": int(state.seed),
        "n_ctx": int(llm.n_ctx()),
        "scores_shape": list(scores.shape),
        "llama_state_bytes": len(llama_state),
        "ahn_memory_type": getattr(llm, "ahn_memory_type", None),
        "app": app_data or {},
    }, ensure_ascii=False).encode()
    prefix = _PREFIX.pack(MAGIC, FORMAT_VERSION, model_fingerprint(llm.model_path), *_ahn_settings(llm), len(header))
    path = Path(path)
    with atomic_output(path) as tmp, open(tmp, "wb") as f:
        for part in (prefix, header, ids.tobytes(), scores.tobytes(), llama_state):
            f.write(part)
    return path.stat().st_size


def _header_int(header: dict, key: str, path, lo: int = 0, hi: int = 1 << 62) -> int:
    v = header.get(key)
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise SessionFileError(f"{path}: corrupted session file ({key} = {v!r})")
    return v


def load_session(llm, path: str | os.PathLike) -> dict[str, Any]:
    """Restore a state saved by `save_session` into llm; returns the application data.

    Raises SessionFileError, naming the problem, for anything but a complete session file of
    this model file with these AHN settings; llm is untouched then.
    """
    from llama_cpp.llama import LlamaState

    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise SessionFileError(f"no such session file: {path}") from None
    except OSError as e:
        raise SessionFileError(f"cannot read session file {path}: {e.strerror}") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        raw = f.read(_PREFIX.size)
        if len(raw) < len(MAGIC) or raw[: len(MAGIC)] != MAGIC:
            raise SessionFileError(f"{path} is not an ahn-gguf session file")
        if len(raw) < _PREFIX.size:
            raise SessionFileError(f"{path}: truncated session file ({size} bytes)")
        magic, version, fingerprint, *settings, header_len = _PREFIX.unpack(raw)
        if version != FORMAT_VERSION:
            raise SessionFileError(f"{path}: session format version {version}; this ahn-gguf reads version {FORMAT_VERSION}")
        if fingerprint != model_fingerprint(llm.model_path):
            raise SessionFileError(f"{path} was saved with another model file; load it with the model it was saved with")
        if tuple(settings) != _ahn_settings(llm):
            raise SessionFileError(f"{path} was saved with AHN settings ({_describe(tuple(settings))}); "
                                   f"this model runs {_describe(_ahn_settings(llm))}")
        if header_len > min(MAX_HEADER_BYTES, size - _PREFIX.size):
            raise SessionFileError(f"{path}: truncated or corrupted session file (header of {header_len} bytes)")
        try:
            header = json.loads(f.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise SessionFileError(f"{path}: corrupted session header ({e})") from None
        if not isinstance(header, dict) or not isinstance(header.get("app", {}), dict):
            raise SessionFileError(f"{path}: corrupted session header")

        mine = getattr(llm, "ahn_memory_type", None)
        saved = header.get("ahn_memory_type", "f32" if mine is not None else None)
        if saved != mine:
            # the states and gates are stored in that type: llama.cpp would reject the bytes, less clearly
            raise SessionFileError(f"{path} was saved with the AHN memory stored as {saved!r}; this context stores "
                                   f"it as {mine!r} (ahn_memory_type / --memory-type)")

        n_ctx = int(llm.n_ctx())
        n_tokens = _header_int(header, "n_tokens", path)
        if n_tokens > n_ctx:
            raise SessionFileError(f"{path} holds {n_tokens} tokens; this context has n_ctx = {n_ctx}: raise n_ctx")
        seed = _header_int(header, "seed", path, hi=(1 << 64) - 1)
        state_len = _header_int(header, "llama_state_bytes", path)
        shape = header.get("scores_shape")
        if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)):
            raise SessionFileError(f"{path}: corrupted session header (scores_shape = {shape!r})")
        if shape[0] * shape[1] and (shape[1] != llm.n_vocab() or shape[0] > llm.scores.shape[0]):
            raise SessionFileError(f"{path}: stored logits of shape {tuple(shape)} do not fit this context")
        expected = _PREFIX.size + header_len + 4 * n_tokens + 4 * shape[0] * shape[1] + state_len
        if expected != size:
            raise SessionFileError(f"{path}: truncated or corrupted session file ({size} bytes, its header describes {expected})")

        ids = np.frombuffer(f.read(4 * n_tokens), dtype="<i4")
        if n_tokens and (ids.min() < 0 or ids.max() >= llm.n_vocab()):
            raise SessionFileError(f"{path}: token ids outside this model's vocabulary")
        scores = np.frombuffer(f.read(4 * shape[0] * shape[1]), dtype="<f4").reshape(shape)
        llama_state = f.read(state_len)

    input_ids = np.zeros((n_ctx,), dtype=np.intc)
    input_ids[:n_tokens] = ids
    if not scores.size:
        scores = np.zeros((1, llm.n_vocab()), dtype=np.single)  # broadcast over the rows load_state fills
    try:
        llm.load_state(LlamaState(input_ids=input_ids, scores=scores, n_tokens=n_tokens, llama_state=llama_state,
                                  llama_state_size=state_len, seed=seed))
    except RuntimeError as e:  # llama_state_set_data rejected the bytes
        llm.reset()
        raise SessionFileError(f"{path}: llama.cpp rejected the saved state ({e})") from None
    return header.get("app", {})
