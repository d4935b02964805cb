"""Output types, and llama.cpp's own quantizer (`llama_model_quantize`) for the k-quants & co.

f32 / f16 / bf16 / q8_0 are written by the stock converter directly. Every other llama.cpp
type (q4_k_m, q5_k_m, q6_k, q4_0, iq4_xs, ...) is made by llama.cpp's quantizer from the
stock f16 conversion of the base, through the patched llama-cpp-python that `ahn-gguf build`
installs; the AHN tensors are attached afterwards, in F16/F32, so they are never quantized
and the base's tensors are byte for byte what `llama-quantize` makes of the stock file.
"""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

from ahn_gguf.errors import ConversionError
from ahn_gguf.gguf_io.contents import gguf

from .stock import STOCK_OUTTYPES

log = logging.getLogger("ahn_gguf.convert")

# llama-quantize's shorthands
_ALIASES = {"q3_k": "q3_k_m", "q4_k": "q4_k_m", "q5_k": "q5_k_m"}
# file types that only a checkpoint already in that format can give (not quantizer targets)
_NOT_QUANTIZER_TARGETS = {"GUESSED", "MOSTLY_NVFP4"}


def quantizer_types() -> dict[str, int]:
    """{lower-case name: llama_ftype} of the types made by llama.cpp's quantizer (gguf.LlamaFileType
    mirrors llama.h's enum llama_ftype)."""
    out = {}
    for name, value in gguf.LlamaFileType.__members__.items():
        if name.startswith("MOSTLY_") and name not in _NOT_QUANTIZER_TARGETS:
            short = name.removeprefix("MOSTLY_").lower()
            if short not in STOCK_OUTTYPES:
                out[short] = int(value)
    return out


def canonical_outtype(name: str) -> str:
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in STOCK_OUTTYPES or key in quantizer_types():
        return key
    raise ConversionError(f"unknown output type {name!r}; expected one of {', '.join(STOCK_OUTTYPES)} or a llama.cpp "
                          f"quantization type ({', '.join(sorted(quantizer_types()))})")


def patched_llama_cpp():
    """The installed patched `llama_cpp` module, or ConversionError saying to run `ahn-gguf build`."""
    try:
        from ahn_gguf.runtime import import_patched_llama_cpp  # imports llama_cpp itself

        return import_patched_llama_cpp()
    except Exception as e:  # ImportError (missing / stock build), OSError (libllama fails to load), ...
        raise ConversionError(f"llama.cpp's quantizer is needed for this output type: {type(e).__name__}: {e}") from None


def quantize(src: Path, dst: Path, outtype: str, *, threads: int = 0) -> None:
    """llama.cpp's quantizer: `src` (the stock f16 base) -> `dst` in `outtype`."""
    llama_cpp = patched_llama_cpp()
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quantizer_types()[outtype]
    params.nthread = threads
    log.info("quantizing the base to %s with llama.cpp's quantizer", outtype.upper())
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        raise ConversionError(f"llama.cpp's quantizer failed (code {rc}) making {outtype.upper()}; its messages "
                              f"are above (very low-bit types such as iq2_xxs need an importance matrix)")
