"""A tiny, complete AHN GGUF (about 100 KB) for tests that need many copies of a model file.

Llama + AHN-GDN, 2 layers, hidden 64, 2 heads / 1 KV head of dim 32, W = 8, S = 2, and a
259-token byte-fallback SentencePiece vocabulary (every text tokenizes). Random weights,
seeded. Written with the converter's GGUF writer. `family="qwen2"` gives the Qwen2 shape
instead: q/k/v biases and a byte-level BPE vocabulary (256 byte tokens, a few merges, the
Qwen2 pre-tokenizer).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

N_EMBD, N_HEAD, N_HEAD_KV, HEAD_DIM, N_LAYER, N_FF = 64, 2, 1, 32, 2, 64
WINDOW, SINKS = 8, 2
ARCH = "llamaahn"


def _byte_level_alphabet() -> list[str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies store)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("\u00a1"), ord("\u00ac") + 1)) + list(range(ord("\u00ae"), ord("\u00ff") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return [table[b] for b in range(256)]


def build_tiny_ahn_gguf(out: Path, seed: int = 0, variant: str = "GatedDeltaNet", head_dim: int = HEAD_DIM,
                        n_head: int = N_HEAD, n_head_kv: int = N_HEAD_KV, family: str = "llama") -> Path:
    """The tiny model; `variant`, `head_dim`, the head counts and the base family can be changed (the
    CUDA kernels need head_dim 64 or 128; the SIMD CPU kernels too, other sizes run the scalar kernel)."""
    from ahn_gguf import constants as C
    from ahn_gguf.gguf_io.contents import KV, VT, GGUFContents, TensorEntry, write_gguf

    arch = C.ARCH_FOR_BASE[family]
    rng = np.random.default_rng(seed)
    if family == "llama":
        tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    else:
        alphabet = _byte_level_alphabet()
        merges = ["\u0120 t", "\u0120 a", "h e", "i n", "\u0120t he", "e r"]
        tokens = alphabet + [m.replace(" ", "") for m in merges] + ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    n_vocab = len(tokens)

    c = GGUFContents(alignment=32)

    def kv(key, vtype, value, sub=None):
        c.kv[key] = KV(vtype, value, sub)

    ARCH = arch  # noqa: N806 - the keys below are spelled with the architecture's name
    kv("general.architecture", VT.STRING, ARCH)
    kv("general.name", VT.STRING, "ahn-gguf tiny test model")
    kv(f"{ARCH}.context_length", VT.UINT32, 4096)
    kv(f"{ARCH}.embedding_length", VT.UINT32, N_EMBD)
    kv(f"{ARCH}.block_count", VT.UINT32, N_LAYER)
    kv(f"{ARCH}.feed_forward_length", VT.UINT32, N_FF)
    kv(f"{ARCH}.attention.head_count", VT.UINT32, n_head)
    kv(f"{ARCH}.attention.head_count_kv", VT.UINT32, n_head_kv)
    kv(f"{ARCH}.attention.key_length", VT.UINT32, head_dim)
    kv(f"{ARCH}.attention.value_length", VT.UINT32, head_dim)
    kv(f"{ARCH}.rope.dimension_count", VT.UINT32, head_dim)
    kv(f"{ARCH}.attention.layer_norm_rms_epsilon", VT.FLOAT32, 1e-5)
    kv(f"{ARCH}.rope.freq_base", VT.FLOAT32, 10000.0)
    kv(C.KEY_VARIANT.format(arch=ARCH), VT.STRING, variant)
    kv(C.KEY_WINDOW.format(arch=ARCH), VT.UINT32, WINDOW)
    kv(C.KEY_SINKS.format(arch=ARCH), VT.UINT32, SINKS)
    kv(C.KEY_LAYERS.format(arch=ARCH), VT.ARRAY, [1] * N_LAYER, VT.INT32)
    kv(C.KEY_NORM_EPS.format(arch=ARCH), VT.FLOAT32, C.AHN_NORM_EPS)
    if family == "llama":
        kv("tokenizer.ggml.model", VT.STRING, "llama")
        kv("tokenizer.ggml.tokens", VT.ARRAY, tokens, VT.STRING)
        kv("tokenizer.ggml.scores", VT.ARRAY, [0.0] * n_vocab, VT.FLOAT32)
        kv("tokenizer.ggml.token_type", VT.ARRAY, [2, 3, 3] + [6] * 256, VT.INT32)
        kv("tokenizer.ggml.unknown_token_id", VT.UINT32, 0)
        kv("tokenizer.ggml.bos_token_id", VT.UINT32, 1)
        kv("tokenizer.ggml.eos_token_id", VT.UINT32, 2)
    else:
        kv("tokenizer.ggml.model", VT.STRING, "gpt2")
        kv("tokenizer.ggml.pre", VT.STRING, "qwen2")
        kv("tokenizer.ggml.tokens", VT.ARRAY, tokens, VT.STRING)
        kv("tokenizer.ggml.token_type", VT.ARRAY, [1] * (n_vocab - 3) + [3, 3, 3], VT.INT32)
        kv("tokenizer.ggml.merges", VT.ARRAY, merges, VT.STRING)
        kv("tokenizer.ggml.bos_token_id", VT.UINT32, n_vocab - 3)
        kv("tokenizer.ggml.eos_token_id", VT.UINT32, n_vocab - 1)
        kv("tokenizer.ggml.add_bos_token", VT.BOOL, False)
    kv("tokenizer.chat_template", VT.STRING,
       "{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
       "{% if add_generation_prompt %}<s>assistant\n{% endif %}")

    def tensor(name, *shape, scale=0.1, ones=False):
        data = np.ones(shape, np.float32) if ones else (rng.standard_normal(shape) * scale).astype(np.float32)
        c.tensors.append(TensorEntry(name, 0, tuple(shape), data.nbytes, data))

    H, d, Hkv = n_head, head_dim, n_head_kv
    tensor("token_embd.weight", n_vocab, N_EMBD, scale=1.0)
    tensor("output_norm.weight", N_EMBD, ones=True)
    def vec(name, values):
        values = np.asarray(values, np.float32)
        c.tensors.append(TensorEntry(name, 0, values.shape, values.nbytes, values))
    for i in range(N_LAYER):
        tensor(f"blk.{i}.attn_norm.weight", N_EMBD, ones=True)
        tensor(f"blk.{i}.attn_q.weight", H * d, N_EMBD)
        tensor(f"blk.{i}.attn_k.weight", Hkv * d, N_EMBD)
        tensor(f"blk.{i}.attn_v.weight", Hkv * d, N_EMBD)
        if family == "qwen2":
            tensor(f"blk.{i}.attn_q.bias", H * d)
            tensor(f"blk.{i}.attn_k.bias", Hkv * d)
            tensor(f"blk.{i}.attn_v.bias", Hkv * d)
        tensor(f"blk.{i}.attn_output.weight", N_EMBD, H * d)
        if variant in (C.GDN, C.DN):
            tensor(f"blk.{i}.ahn_b.weight", H, N_EMBD)
        if variant == C.GDN:
            tensor(f"blk.{i}.ahn_a.weight", H, N_EMBD)
            vec(f"blk.{i}.ahn_a_log", np.log(rng.uniform(1, 16, H)))
            vec(f"blk.{i}.ahn_dt_bias", np.full(H, -3.0))
        if variant == C.MAMBA2:
            tensor(f"blk.{i}.ahn_dt.weight", H, N_EMBD)
            vec(f"blk.{i}.ahn_dt.bias", rng.standard_normal(H) * 0.1)
            vec(f"blk.{i}.ahn_dt_bias", np.full(H, -3.0))
            vec(f"blk.{i}.ahn_a_log", np.log(rng.uniform(1, 16, H)))
        tensor(f"blk.{i}.ahn_g.weight", H, N_EMBD)
        if variant == C.MAMBA2:
            vec(f"blk.{i}.ahn_g.bias", rng.standard_normal(H) * 0.1)
            tensor(f"blk.{i}.ahn_norm.weight", H * d, ones=True)
        else:
            tensor(f"blk.{i}.ahn_norm.weight", d, ones=True)
        tensor(f"blk.{i}.ahn_out.weight", H, d, d, scale=0.05)
        tensor(f"blk.{i}.ffn_norm.weight", N_EMBD, ones=True)
        tensor(f"blk.{i}.ffn_gate.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_up.weight", N_FF, N_EMBD)
        tensor(f"blk.{i}.ffn_down.weight", N_EMBD, N_FF)
    write_gguf(c, Path(out), progress=False)
    return Path(out)
