"""The real Qwen2 base (ahn_gguf.qwen_coder): assembled from its pinned pieces, dequantized into the
PyTorch reference, and the Q4_K_M GGUF through the patched llama.cpp against it, without and with
an AHN attached (window 64, 8 sinks, prompts of 8 x (S + W) tokens of held-out standard-library code).

The AHN here is freshly initialised with o_proj ~ N(0, 0.02^2) (not trained: a parity check of the
runtime's memory path on real quantized weights; the distilled AHN is the quality issue's)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ahn_gguf import qwen_coder

pytestmark = [pytest.mark.slow, pytest.mark.llama, pytest.mark.usefixtures("one_torch_thread")]

W, S = 64, 8
N_TOKENS = 8 * (S + W)


def log_softmax(x: np.ndarray) -> np.ndarray:
    m = x.max(-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(-1, keepdims=True))


def kl_and_top1(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    p, q = log_softmax(ref.astype(np.float64)), log_softmax(got.astype(np.float64))
    return float((np.exp(p) * (p - q)).sum(-1).mean()), float((p.argmax(-1) == q.argmax(-1)).mean())


@pytest.fixture(scope="module")
def base():
    from ahn_gguf.data import evaluation_documents, load_source, load_tokenizer
    from ahn_gguf.reference import load_reference

    folder = qwen_coder.hf_dir()
    docs, prov = load_source("python3.11-stdlib")
    text = evaluation_documents(docs, prov["eval_only"])[0].text
    return folder, load_reference(folder).eval(), load_tokenizer(folder), text


def runtime_logits(path, ids, n_ctx, **kw):
    from ahn_gguf.runtime import Llama

    llm = Llama(str(path), n_ctx=n_ctx, n_batch=128, n_ubatch=128, n_threads=1, n_threads_batch=1, logits_all=True,
                verbose=False, **kw)
    llm.eval(ids)
    out = np.array(llm.scores[:len(ids)], dtype=np.float32)
    llm.close()
    return out


def test_the_gguf_is_the_pinned_file_and_the_tokenizers_agree(base):
    from ahn_gguf.build.pins import sha256_file

    path = qwen_coder.gguf_path()
    assert path.stat().st_size == qwen_coder.GGUF_SIZE and sha256_file(path) == qwen_coder.GGUF_SHA256
    folder, model, tok, text = base
    cfg = model.config
    assert (cfg.family, cfg.num_hidden_layers, cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
            cfg.head_dim) == ("qwen2", 24, 896, 14, 2, 64)
    import llama_cpp

    llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
    sample = text[:4000] + "\n<|im_start|>user\n<tool_call> déjà vu 12345<|im_end|>"
    assert tok.encode(sample, add_special_tokens=False).ids == llm.tokenize(sample.encode(), add_bos=False, special=True)


def test_q4_k_m_runtime_matches_the_dequantized_reference_with_and_without_an_ahn(base, tmp_path):
    from ahn_gguf.convert import attach, convert_ahn_only
    from ahn_gguf.reference import attach_ahn, save_ahn

    folder, model, tok, text = base
    ids = tok.encode(text, add_special_tokens=False).ids[:N_TOKENS]
    assert len(ids) == N_TOKENS
    x = torch.tensor([ids])

    # the base alone: full attention, the stock qwen2 path of llama.cpp
    with torch.no_grad():
        ref_full = model(x, mode="full")[0].numpy()
    kl, top1 = kl_and_top1(ref_full, runtime_logits(qwen_coder.gguf_path(), ids, 1024))
    print(f"Q4_K_M base, full attention, {N_TOKENS} tokens: KL {kl:.5f}, top-1 agreement {top1:.4f}")
    assert kl <= 0.01 and top1 >= 0.97

    # + an AHN-GDN (fresh, o_proj non-zero so that the memory changes the logits), attached to the Q4_K_M file
    attach_ahn(model, "gdn", window=W, sinks=S, o_proj_std=0.02, seed=0)
    save_ahn(model, tmp_path / "ahn", dtype=torch.float32)
    sidecar = convert_ahn_only(str(tmp_path / "ahn"), tmp_path / "ahn.gguf", progress=False)
    merged = attach(qwen_coder.gguf_path(), str(sidecar), tmp_path / "qwen-coder-ahn.gguf", progress=False)
    with torch.no_grad():
        ref_ahn = model(x, mode="ahn", window=W, sinks=S)[0].numpy()
        ref_window = model(x, mode="window", window=W, sinks=S)[0].numpy()
    beyond = slice(S + W, None)
    kl_memory, _ = kl_and_top1(ref_ahn[beyond], ref_window[beyond])
    assert kl_memory > 1e-3, "the AHN does not change the logits: the check would not exercise it"
    got = runtime_logits(merged, ids, 1024)
    kl, top1 = kl_and_top1(ref_ahn, got)
    kl_b, top1_b = kl_and_top1(ref_ahn[beyond], got[beyond])
    print(f"Q4_K_M + AHN-GDN (W {W}, S {S}), {N_TOKENS} tokens: KL {kl:.5f} (beyond S+W {kl_b:.5f}), "
          f"top-1 {top1:.4f} ({top1_b:.4f}); the memory itself moves the logits by KL {kl_memory:.4f}")
    assert kl_b <= 0.01 and top1_b >= 0.97
