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


def reference_with_memory(model, x):
    """The reference's logits with the AHN (W, S), and how far its memory moves them from the window alone
    beyond S + W (KL): a parity check must exercise the memory."""
    with torch.no_grad():
        ref_ahn = model(x, mode="ahn", window=W, sinks=S)[0].numpy()
        ref_window = model(x, mode="window", window=W, sinks=S)[0].numpy()
    kl_memory, _ = kl_and_top1(ref_ahn[S + W:], ref_window[S + W:])
    return ref_ahn, kl_memory


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
    ref_ahn, kl_memory = reference_with_memory(model, x)
    beyond = slice(S + W, None)
    assert kl_memory > 1e-3, "the AHN does not change the logits: the check would not exercise it"
    got = runtime_logits(merged, ids, 1024)
    kl, top1 = kl_and_top1(ref_ahn, got)
    kl_b, top1_b = kl_and_top1(ref_ahn[beyond], got[beyond])
    print(f"Q4_K_M + AHN-GDN (W {W}, S {S}), {N_TOKENS} tokens: KL {kl:.5f} (beyond S+W {kl_b:.5f}), "
          f"top-1 {top1:.4f} ({top1_b:.4f}); the memory itself moves the logits by KL {kl_memory:.4f}")
    assert kl_b <= 0.01 and top1_b >= 0.97


def test_the_embedded_qwen_model_runs_its_distilled_ahn_as_the_reference_does(base):
    """`qwen2.5-coder-0.5b` (the Q4_K_M GGUF + the committed sidecar, merged in the cache) against the
    reference on the dequantized weights with the same AHN tensors, read back from the sidecar; at a
    small W (any W runs: the parity is the runtime's) on 8 x (S + W) tokens of held-out code."""
    from ahn_gguf.convert.ahn import hf_tensors_from_gguf
    from ahn_gguf.default_model import MODELS, resolve_model
    from ahn_gguf.gguf_io.check import check_gguf_file
    from ahn_gguf.reference import attach_ahn

    folder, model, tok, text = base
    path = resolve_model("qwen2.5-coder-0.5b")
    info = check_gguf_file(path)
    assert (info.arch, info.ahn_window, info.ahn_sinks) == ("qwen2ahn", 1024, 32)   # what it was trained for
    variant, arrays = hf_tensors_from_gguf(MODELS["qwen2.5-coder-0.5b"].sidecar)
    assert variant == "GatedDeltaNet"
    attach_ahn(model, "gdn", window=W, sinks=S)
    missing = model.load_state_dict({k: torch.from_numpy(v) for k, v in arrays.items()}, strict=False)
    assert not missing.unexpected_keys and all(k.endswith(".D") for k in missing.missing_keys if ".ahn." in k)
    ids = tok.encode(text, add_special_tokens=False).ids[:N_TOKENS]
    x = torch.tensor([ids])
    ref_ahn, kl_memory = reference_with_memory(model, x)
    beyond = slice(S + W, None)
    assert kl_memory > 1e-4, "the distilled AHN does not change the logits"
    got = runtime_logits(path, ids, 1024, ahn_window=W, ahn_sinks=S)
    kl_b, top1_b = kl_and_top1(ref_ahn[beyond], got[beyond])
    print(f"embedded Qwen2.5-Coder + distilled AHN-GDN at W {W}, S {S}, {N_TOKENS} tokens: KL {kl_b:.5f} "
          f"beyond S+W, top-1 {top1_b:.4f}; the memory moves the reference's logits by KL {kl_memory:.5f}")
    assert kl_b <= 0.01 and top1_b >= 0.97


def test_ahn_gguf_run_takes_the_embedded_qwen_model_by_name():
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "ahn_gguf.cli", "run", "qwen2.5-coder-0.5b", "--raw", "--threads", "1",
                        "-p", "def fibonacci(n):\n", "--max-tokens", "12"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "AHN state" in r.stdout and "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.ahn-gdn-" in r.stdout + r.stderr


def test_f32_gguf_of_the_same_weights_matches_the_reference_to_1e_4(base, tmp_path):
    """The dequantized weights converted back to an F32 GGUF (llama.cpp's converter) + an AHN-GDN, F32 K/V:
    with quantization out of the way the runtime must agree with the reference to KL <= 1e-4."""
    from ahn_gguf.convert import convert
    from ahn_gguf.reference import attach_ahn, save_ahn

    folder, model, tok, text = base
    ids = tok.encode(text, add_special_tokens=False).ids[:N_TOKENS]
    attach_ahn(model, "gdn", window=W, sinks=S, o_proj_std=0.02, seed=1)
    save_ahn(model, tmp_path / "ahn", dtype=torch.float32)
    path = convert(str(folder), str(tmp_path / "ahn"), tmp_path / "qwen-coder-f32-ahn.gguf", outtype="f32",
                   progress=False)
    with torch.no_grad():
        ref = model(torch.tensor([ids]), mode="ahn", window=W, sinks=S)[0].numpy()
    got = runtime_logits(path, ids, 1024, type_k=0, type_v=0)     # GGML_TYPE_F32 K/V
    path.unlink()
    kl, top1 = kl_and_top1(ref, got)
    beyond = slice(S + W, None)
    kl_b, top1_b = kl_and_top1(ref[beyond], got[beyond])
    print(f"F32 GGUF of the dequantized Q4_K_M weights + AHN-GDN (W {W}, S {S}), F32 K/V, {N_TOKENS} tokens: "
          f"KL {kl:.2e} (beyond S+W {kl_b:.2e}), top-1 {top1:.4f} ({top1_b:.4f})")
    assert kl_b <= 1e-4 and top1_b >= 0.99


def test_ahn_gguf_chat_takes_the_embedded_qwen_model_by_name():
    import os
    import sys

    pexpect = pytest.importorskip("pexpect", reason="pexpect is a dev dependency (pip install -e .[dev])")
    child = pexpect.spawn(sys.executable, ["-m", "ahn_gguf.cli", "chat", "qwen2.5-coder-0.5b", "--max-tokens", "48",
                                           "--threads", "1"], encoding="utf-8", timeout=600,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        child.expect("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M.ahn-gdn-")
        child.expect("window 1024, sinks 32")
        child.expect("> ")
        child.sendline("Write a Python function that returns the square of x.")
        child.expect(r"\[position (\d+)/\d+, last turn evaluated (\d+) prompt tokens")
        assert "def" in child.before or "return" in child.before, child.before
        child.expect("> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
