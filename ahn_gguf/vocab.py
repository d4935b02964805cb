"""Hugging Face tokenizers rebuilt from GGUF vocabularies: the real bases' and the fixtures'.

A GGUF carries its whole byte-level BPE vocabulary (tokens, types, merges, pre-tokenizer name,
chat template), so the tokenizer of the Hugging Face folder it was converted from can be made
again without any download: `tokenizer_from_gguf` (the "qwen2" and "smollm"/"starcoder"
pre-tokenizers; checked against llama.cpp's tokenizer test vectors in tests/quality/test_fixtures.py, and
against llama.cpp's own tokenization of the real models in tests/quality/test_qwen_coder.py), and
`write_tokenizer`, which writes tokenizer.json, tokenizer_config.json, vocab.json, merges.txt and
generation_config.json into a model folder. Used by the dequantized real bases (ahn_gguf.gguf_io.to_hf)
and the synthetic fixtures (ahn_gguf.fixtures). No torch.
"""

from __future__ import annotations

import json
from pathlib import Path

from .atomic import write_text
from .build.pins import extract_member, smollm2_gguf
from .errors import UsageError
from .gguf_io.header import read_metadata

QWEN2_VOCAB_MEMBER = "vendor/llama.cpp/models/ggml-vocab-qwen2.gguf"
QWEN25_TEMPLATE_MEMBER = "vendor/llama.cpp/models/templates/Qwen-Qwen2.5-7B-Instruct.jinja"

# Qwen2's pre-tokenizer (its tokenizer.json; llama.cpp's "qwen2" pre-type)
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                     r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Qwen2.5 added tokens beyond the Qwen1.5/2 vocabulary that llama.cpp's vocab file holds
# (ids 151646..151664; the first 14 are special, the rest are plain added tokens)
QWEN25_EXTRA_TOKENS = (
    ("<|object_ref_start|>", True), ("<|object_ref_end|>", True), ("<|box_start|>", True),
    ("<|box_end|>", True), ("<|quad_start|>", True), ("<|quad_end|>", True),
    ("<|vision_start|>", True), ("<|vision_end|>", True), ("<|vision_pad|>", True),
    ("<|image_pad|>", True), ("<|video_pad|>", True), ("<tool_call>", False), ("</tool_call>", False),
    ("<|fim_prefix|>", False), ("<|fim_middle|>", False), ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False), ("<|repo_name|>", False), ("<|file_sep|>", False),
)

QWEN2_GENERATION_CONFIG = {
    "bos_token_id": 151643, "pad_token_id": 151643, "do_sample": True, "eos_token_id": [151645, 151643],
    "repetition_penalty": 1.05, "temperature": 0.7, "top_p": 0.8, "top_k": 20, "transformers_version": "4.37.0",
}
LLAMA_GENERATION_CONFIG = {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 2, "transformers_version": "4.42.3"}


# --- GGUF vocabularies -------------------------------------------------------------------------

def qwen2_vocab_gguf() -> Path:
    return extract_member(QWEN2_VOCAB_MEMBER)



# llama.cpp token types
_NORMAL, _CONTROL, _USER_DEFINED = 1, 3, 4


def tokenizer_from_gguf(meta: dict, extra_tokens=(), user_defined: bool = False):
    """A `tokenizers.Tokenizer` equal to the HF tokenizer a GGUF vocabulary was converted from.

    Supports the two pre-tokenizers the fixtures need: "qwen2" (NFC, Qwen2's split regex,
    byte-level) and "smollm" / "starcoder" (single digits, then GPT-2's byte-level regex).
    Checked against llama.cpp's tokenizer test vectors (tests/quality/test_fixtures.py).
    `extra_tokens`: (content, special) pairs appended as added tokens after the vocabulary.
    `user_defined`: the vocabulary's user-defined tokens become plain added tokens (a real Qwen2.5 GGUF's
    <tool_call>; llama.cpp's test vocabulary ggml-vocab-qwen2 marks 290 tokens so, which its HF tokenizer lacks).
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    pre = meta["tokenizer.ggml.pre"]
    tokens, types = meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.token_type"]
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise UsageError(f"not a byte-level BPE vocabulary: tokenizer.ggml.model {meta.get('tokenizer.ggml.model')!r}")
    # the BPE model holds the normal tokens; SmolLM-style vocabularies also keep their
    # control tokens at the front of it (their ids are < the first normal token's)
    first_normal = types.index(_NORMAL)
    vocab = {tok: i for i, (tok, ty) in enumerate(zip(tokens, types)) if ty == _NORMAL or i < first_normal}
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    tk = Tokenizer(models.BPE(vocab=vocab, merges=merges, dropout=None, unk_token=None, fuse_unk=False,
                              byte_fallback=False))
    if pre == "qwen2":
        tk.normalizer = normalizers.NFC()
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(QWEN2_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ])
        tk.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
        tk.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    elif pre in ("smollm", "starcoder"):
        tk.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=True),
        ])
        tk.post_processor = processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True)
        tk.decoder = decoders.ByteLevel(add_prefix_space=True, trim_offsets=True, use_regex=True)
    else:
        raise UsageError(f"unsupported pre-tokenizer {pre!r} (fixtures know qwen2, smollm, starcoder)")
    kinds = (_CONTROL, _USER_DEFINED) if user_defined else (_CONTROL,)
    added = [(tok, ty == _CONTROL) for tok, ty in zip(tokens, types) if ty in kinds]
    added += list(extra_tokens)
    # added in id order, so each gets the next id after the vocabulary (or its own id if in it)
    for content, special in added:
        token = AddedToken(content, special=special, normalized=False)
        if special:
            tk.add_special_tokens([token])
        else:
            tk.add_tokens([token])
    return tk


def _added_tokens_decoder(tk) -> dict:
    out = {}
    for tid, tok in sorted(tk.get_added_tokens_decoder().items()):
        out[str(tid)] = {"content": tok.content, "lstrip": tok.lstrip, "normalized": tok.normalized,
                         "rstrip": tok.rstrip, "single_word": tok.single_word, "special": tok.special}
    return out


def write_tokenizer(folder: Path, family: str, source_gguf: Path | None = None) -> None:
    """tokenizer.json, tokenizer_config.json, vocab.json, merges.txt, generation_config.json.
    Llama family: SmolLM2's vocabulary, from `source_gguf` (default: the pinned SmolLM2 GGUF)."""
    if family == "qwen2":
        if source_gguf is not None:   # a real Qwen2.5 GGUF: its vocabulary and template hold every token
            meta = read_metadata(source_gguf)
            tk = tokenizer_from_gguf(meta, user_defined=True)
            template = meta.get("tokenizer.chat_template") or extract_member(QWEN25_TEMPLATE_MEMBER).read_text()
        else:
            meta = read_metadata(qwen2_vocab_gguf())
            tk = tokenizer_from_gguf(meta, QWEN25_EXTRA_TOKENS)
            template = extract_member(QWEN25_TEMPLATE_MEMBER).read_text()
        specials = [t.content for t in tk.get_added_tokens_decoder().values() if t.special]
        tok_config = {
            "add_bos_token": False, "add_prefix_space": False,
            "added_tokens_decoder": _added_tokens_decoder(tk),
            "additional_special_tokens": [s for s in specials if s != "<|endoftext|>"],
            "bos_token": None, "chat_template": template, "clean_up_tokenization_spaces": False,
            "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 131072,
            "pad_token": "<|endoftext|>", "split_special_tokens": False,
            "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
        }
        gen = QWEN2_GENERATION_CONFIG
    else:
        meta = read_metadata(source_gguf or smollm2_gguf())
        tk = tokenizer_from_gguf(meta)
        tokens = meta["tokenizer.ggml.tokens"]
        tok_config = {
            "add_prefix_space": False, "added_tokens_decoder": _added_tokens_decoder(tk),
            "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
            "bos_token": tokens[meta["tokenizer.ggml.bos_token_id"]],
            "chat_template": meta["tokenizer.chat_template"], "clean_up_tokenization_spaces": False,
            "eos_token": tokens[meta["tokenizer.ggml.eos_token_id"]], "model_max_length": 8192,
            "pad_token": tokens[meta["tokenizer.ggml.padding_token_id"]],
            "tokenizer_class": "GPT2Tokenizer",
            "unk_token": tokens[meta["tokenizer.ggml.unknown_token_id"]], "vocab_size": len(tokens),
        }
        gen = LLAMA_GENERATION_CONFIG
    tk.save(str(folder / "tokenizer.json"))
    model = json.loads(tk.to_str())["model"]
    write_json(folder / "vocab.json", model["vocab"], indent=None)
    with open(folder / "merges.txt", "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
        for m in model["merges"]:
            f.write((m if isinstance(m, str) else " ".join(m)) + "\n")
    write_json(folder / "tokenizer_config.json", tok_config)
    write_json(folder / "generation_config.json", gen)


def write_json(path: Path, obj, indent: int | None = 2) -> None:
    """JSON as Hugging Face writes its config files (UTF-8, not ASCII-escaped), atomically."""
    write_text(path, json.dumps(obj, indent=indent, ensure_ascii=False) + "\n")
