"""HF -> GGUF conversion for AHN models (the package `ahn_gguf.convert`).

- `convert(base, ahn, out, outtype=...)`: Hugging Face base + AHN checkpoint (folders or repo
  ids; or one merged folder) -> one GGUF: the base converted by the pinned llama.cpp's own
  converter, the AHN keys and tensors added, k-quants through llama.cpp's quantizer.
- `convert_ahn_only(ahn, out)`: an AHN-only "sidecar" GGUF (architecture `ahn`).
- `attach(base_gguf, ahn, out)`: a sidecar (or AHN checkpoint) merged into an existing
  Qwen2/Llama GGUF, quantized ones included, base tensors copied byte for byte.

Every failure the user can fix raises `ConversionError` (a ValueError) before anything is
written; outputs appear only complete (temporary file + rename).
Command line: `ahn-gguf convert --help`, `ahn-gguf attach --help` (module `cli`).
"""

from ahn_gguf.errors import ConversionError

__all__ = ["ConversionError", "attach", "convert", "convert_ahn_only"]


def __getattr__(name):  # the pipeline imports gguf-py (and torch, lazily): load it on first use
    if name in ("attach", "convert", "convert_ahn_only"):
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(name)
