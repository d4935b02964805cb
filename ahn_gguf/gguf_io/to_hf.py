"""A quantized GGUF base model as a Hugging Face folder of float32 weights (Llama and Qwen2 families).

The real base models reachable offline are quantized GGUFs (SmolLM2-135M-Instruct Q4_1,
Qwen2.5-Coder-0.5B-Instruct Q4_K_M). Distillation and the PyTorch reference need the same
function in float32: every tensor is dequantized exactly (gguf-py's `quants.dequantize`: the
pinned copy inside the llama-cpp-python sdist, so GGUF reading follows the llama.cpp the runtime
is built from), and llama.cpp's conversion is undone:

- Llama: the q/k rows were permuted for llama.cpp's rotary layout (convert_hf_to_gguf
  `LlamaModel.permute`); `_reverse_permute` undoes it. Qwen2 keeps Hugging Face's layout.
- Qwen2 carries q/k/v biases (`attn_{q,k,v}.bias`).
- `output.weight`, when the file has one, becomes an untied `lm_head.weight`.

The folder: config.json (from the GGUF metadata), model.safetensors (float32), the tokenizer
(ahn_gguf.vocab.write_tokenizer, rebuilt from the GGUF's own vocabulary), and
ahn-gguf-provenance.json saying what the weights are (quantized, dequantized: not the original
bf16 model). Used by ahn_gguf.smollm2 and ahn_gguf.qwen_coder.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np

from ..errors import UsageError

PROVENANCE_FILE = "ahn-gguf-provenance.json"

# GGUF tensor name (after "blk.N.") -> HF name (after "model.layers.N.")
LAYER_TENSORS = {
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
QWEN2_BIASES = {
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
}


def _reverse_permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """Undo llama.cpp's convert_hf_to_gguf `LlamaModel.permute` of q/k rows (rotary halves interleaved)."""
    half = w.shape[0] // n_head // 2
    return w.reshape(n_head, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _eps(value: float) -> float:
    return float(f"{value:.7g}")  # the f32 of 1e-5 -> 1e-05, as config.json states it


def hf_config(meta: dict) -> dict:
    """config.json of the base, from the GGUF metadata (Llama: SmolLM2's published config; Qwen2: Qwen2.5's)."""
    arch = meta.get("general.architecture")
    n_embd = meta[f"{arch}.embedding_length"]
    n_head = meta[f"{arch}.attention.head_count"]
    common = {
        "attention_dropout": 0.0,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
        "head_dim": meta.get(f"{arch}.rope.dimension_count", n_embd // n_head),
        "hidden_act": "silu",
        "hidden_size": n_embd,
        "intermediate_size": meta[f"{arch}.feed_forward_length"],
        "max_position_embeddings": meta[f"{arch}.context_length"],
        "num_attention_heads": n_head,
        "num_hidden_layers": meta[f"{arch}.block_count"],
        "num_key_value_heads": meta[f"{arch}.attention.head_count_kv"],
        "rms_norm_eps": _eps(meta[f"{arch}.attention.layer_norm_rms_epsilon"]),
        "rope_scaling": None,
        "rope_theta": float(meta[f"{arch}.rope.freq_base"]),
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": meta.get(f"{arch}.vocab_size", len(meta["tokenizer.ggml.tokens"])),
    }
    if arch == "llama":
        return {"architectures": ["LlamaForCausalLM"], "attention_bias": False, **common,
                "pad_token_id": meta.get("tokenizer.ggml.padding_token_id"), "initializer_range": 0.041666666666666664,
                "mlp_bias": False, "model_type": "llama", "pretraining_tp": 1}
    if arch == "qwen2":
        return {"architectures": ["Qwen2ForCausalLM"], **common, "initializer_range": 0.02,
                "max_window_layers": meta[f"{arch}.block_count"], "model_type": "qwen2",
                "sliding_window": meta[f"{arch}.context_length"], "use_sliding_window": False}
    raise UsageError(f"architecture {arch!r}: only llama and qwen2 GGUFs can be made into a base folder")


def dequantized_tensors(path: Path) -> tuple[dict, dict]:
    """(HF state dict of float32 numpy arrays, HF config) of a Llama or Qwen2 GGUF."""
    from ..build.pins import import_gguf_py
    from .header import read_metadata as read_gguf_metadata

    gguf = import_gguf_py()
    meta = read_gguf_metadata(path)
    cfg = hf_config(meta)
    arch = meta["general.architecture"]
    layer_names = dict(LAYER_TENSORS, **(QWEN2_BIASES if arch == "qwen2" else {}))
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
            if rest not in layer_names:
                raise UsageError(f"{path}: unexpected tensor {t.name}")
            if arch == "llama" and rest == "attn_q.weight":
                w = _reverse_permute(w, cfg["num_attention_heads"])
            elif arch == "llama" and rest == "attn_k.weight":
                w = _reverse_permute(w, cfg["num_key_value_heads"])
            out[f"model.layers.{bid}.{layer_names[rest]}"] = w
        else:
            raise UsageError(f"{path}: unexpected tensor {t.name}")
    if "lm_head.weight" in out:
        cfg["tie_word_embeddings"] = False
    return out, cfg


def write_hf_dir(src: Path, target: Path, provenance: dict) -> Path:
    """The Hugging Face folder of the GGUF at `src`, written atomically to `target` (see the module docstring)."""
    import torch
    from safetensors.torch import save_file

    from ..vocab import write_tokenizer

    tensors, cfg = dequantized_tensors(src)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".hf-") as tmp:
        folder = Path(tmp) / "out"
        folder.mkdir()
        with open(folder / "config.json", "w") as f:
            json.dump(cfg, f, indent=2)
        save_file({k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in tensors.items()},
                  folder / "model.safetensors", metadata={"format": "pt"})
        del tensors
        write_tokenizer(folder, cfg["model_type"], source_gguf=src)
        with open(folder / PROVENANCE_FILE, "w") as f:
            json.dump(provenance, f, indent=2)
        try:
            os.replace(folder, target)
        except OSError:
            if not (target / PROVENANCE_FILE).is_file():
                shutil.rmtree(target, ignore_errors=True)
                os.replace(folder, target)
    return target
