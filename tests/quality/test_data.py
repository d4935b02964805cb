"""Training text (ahn_gguf.data): the document split, tokenization and packing, the data order,
and the real sources (Python 3.11 docs from Debian's python3.11-doc; SmolLM2 Q4_1 dequantized)."""

from __future__ import annotations

import random

import numpy as np
import pytest

from ahn_gguf import data
from ahn_gguf.fixtures import LLAMA_BASE

LETTERS = "abcdefghijklm"


def name_with_hash(prefix: str, below: bool, start: int = 0) -> str:
    """A file name whose stable hash is below (or not below) the held-out fraction."""
    i = start
    while True:
        name = f"{prefix}{i:03d}.txt"
        if (data.stable_hash(name) < data.HELDOUT_FRACTION) == below:
            return name
        i += 1


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Long documents that hash into the held-out set (marked with 'QXJ'), long ones that do
    not, and short ones (which are never held out, whatever their hash)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)

    def words(n):
        return " ".join("".join(rng.choice(LETTERS) for _ in range(rng.randint(2, 7))) for _ in range(n))

    held = []
    for k in range(3):
        name = name_with_hash(f"held{k}_", True)
        (root / name).write_text(("QXJ " + words(50) + "\n") * 140)      # > HELDOUT_MIN_CHARS
        held.append(name)
    for k in range(4):
        (root / name_with_hash(f"long{k}_", False)).write_text(words(7000))
    (root / "sub").mkdir()
    (root / "sub" / name_with_hash("short", True)).write_text("QXJ short " + words(300))  # short: trains
    return root, held


def test_split_holds_out_long_documents_by_path_hash(corpus):
    root, held = corpus
    docs = data.load_text_folder(root)
    split = data.split_documents(docs)
    assert sorted(d.path for d in split.heldout) == sorted(held)
    assert len(split.train) + len(split.heldout) == len(docs)
    assert all(len(d.text) >= data.HELDOUT_MIN_CHARS for d in split.heldout)
    # the decision depends on (path, length) alone: stable under reordering and other documents
    again = data.split_documents(list(reversed(docs))[:-2])
    assert {d.path for d in again.heldout} <= set(held)
    assert all(data.is_heldout(d) for d in split.heldout) and not any(data.is_heldout(d) for d in split.train)


def test_held_out_text_never_reaches_a_training_batch(fixtures_root, corpus):
    root, _ = corpus
    tok = data.load_tokenizer(fixtures_root / LLAMA_BASE)
    split = data.split_documents(data.load_text_folder(root))
    seqs = data.training_sequences(split, tok, 256)
    assert len(seqs) > 20
    stream = data.TrainSequences(seqs, seed=3)
    seen = np.concatenate([stream.next_batch(4) for _ in range(3 * len(seqs) // 4)])
    texts = tok.decode_batch(seen.tolist())
    # the only 'QXJ' a training batch may hold is the short document's, which is not held out
    assert all("QXJ" not in t or "QXJ short" in t for t in texts)
    held_ids = data.tokenize(split.heldout, tok)
    held_rows = {tuple(h[i:i + 256]) for h in held_ids for i in range(0, len(h) - 255, 256)}
    assert not held_rows & {tuple(r) for r in seqs}


def test_tokenization_and_packing_are_deterministic(fixtures_root, corpus):
    root, _ = corpus
    tok = data.load_tokenizer(fixtures_root / LLAMA_BASE)
    docs = data.load_text_folder(root)
    a = data.pack(data.tokenize(docs, tok), 128)
    b = data.pack(data.tokenize(data.load_text_folder(root), data.load_tokenizer(fixtures_root / LLAMA_BASE)), 128)
    assert a.dtype == np.int32 and a.shape[1] == 128
    np.testing.assert_array_equal(a, b)
    # pieces never straddle two documents, tails are dropped
    ids = data.tokenize(docs, tok)
    assert len(a) == sum(len(t) // 128 for t in ids)
    np.testing.assert_array_equal(a[0], ids[0][:128])


def test_pack_cuts_each_document_into_whole_pieces():
    docs = [np.arange(10, dtype=np.int32), np.arange(100, 103, dtype=np.int32), np.arange(200, 208, dtype=np.int32)]
    np.testing.assert_array_equal(data.pack(docs, 4), [[0, 1, 2, 3], [4, 5, 6, 7], [200, 201, 202, 203],
                                                       [204, 205, 206, 207]])
    assert data.pack(docs, 50).shape == (0, 50)


def test_training_order_is_seeded_and_resumable():
    seqs = np.arange(30, dtype=np.int32).reshape(10, 3)
    a = data.TrainSequences(seqs, seed=7)
    batches = [a.next_batch(3) for _ in range(8)]           # crosses two epoch boundaries
    firsts = np.concatenate(batches)[:, 0] // 3
    assert sorted(firsts[:10]) == list(range(10)) and sorted(firsts[10:20]) == list(range(10))
    assert list(firsts[:10]) != list(firsts[10:20])          # reshuffled each epoch
    b = data.TrainSequences(seqs, seed=7)
    for _ in range(3):
        b.next_batch(3)
    state = b.state_dict()
    c = data.TrainSequences(seqs, seed=7)
    c.load_state_dict(state)
    for want in batches[3:]:
        np.testing.assert_array_equal(c.next_batch(3), want)
    with pytest.raises(data.DataError):
        data.TrainSequences(seqs[:5], seed=7).load_state_dict(state)
    with pytest.raises(data.DataError):
        data.TrainSequences(seqs[:0])


def test_unknown_sources_are_refused(tmp_path):
    with pytest.raises(data.DataError):
        data.load_source(str(tmp_path / "missing"))
    with pytest.raises(data.DataError, match="no text files"):
        data.load_text_folder(tmp_path)


# --- the real sources (cached downloads; skipped where they cannot be fetched) -----------------------

@pytest.fixture(scope="module")
def python_docs():
    try:
        return data.python_docs()
    except data.DataError as e:
        pytest.skip(f"python3.11-doc unavailable: {e}")


def test_python_docs_split(python_docs):
    """497 reST sources; the held-out set is the one the report names, all >= 32k characters."""
    assert len(python_docs) == 497
    assert all(d.path.endswith(".rst.txt") for d in python_docs)
    split = data.split_documents(python_docs)
    assert [d.path for d in split.heldout] == [
        "c-api/unicode.rst.txt", "install/index.rst.txt", "library/test.rst.txt", "library/unittest.mock.rst.txt",
        "using/windows.rst.txt", "whatsnew/2.6.rst.txt", "whatsnew/2.7.rst.txt", "whatsnew/3.0.rst.txt",
        "whatsnew/3.5.rst.txt"]
    held = {d.path for d in split.heldout}
    assert not held & {d.path for d in split.train}


def test_smollm2_q_k_unpermute_inverts_llama_cpp():
    """llama.cpp's convert_hf_to_gguf permutes Llama q/k rows for its rotary layout; smollm2 undoes it."""
    from ahn_gguf.smollm2 import _reverse_permute

    def permute(w, n_head):  # convert_hf_to_gguf.LlamaModel.permute
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    w = np.random.default_rng(0).standard_normal((3 * 64, 10)).astype(np.float32)
    np.testing.assert_array_equal(_reverse_permute(permute(w, 3), 3), w)


def test_smollm2_config_from_the_gguf():
    from ahn_gguf.fixtures import read_gguf_metadata, smollm2_gguf
    from ahn_gguf.smollm2 import hf_config

    cfg = hf_config(read_gguf_metadata(smollm2_gguf()))
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["max_position_embeddings"], cfg["vocab_size"]) == (30, 576, 9, 3, 64, 8192, 49152)
    assert cfg["tie_word_embeddings"] and cfg["rope_theta"] == 100000.0 and cfg["rms_norm_eps"] == 1e-5


@pytest.mark.slow
def test_smollm2_dequantized_equals_transformers_gguf_loader():
    """Our dequantization == transformers' GGUF loader (with the pinned gguf-py), bit for bit."""
    import sys

    import torch

    from ahn_gguf import smollm2
    from ahn_gguf.build.pins import extract_member
    from ahn_gguf.reference import load_reference

    root = str(extract_member("vendor/llama.cpp/gguf-py"))
    sys.path.insert(0, root)
    try:
        import gguf

        if getattr(gguf, "__version__", None) is None:
            gguf.__version__ = "0.19.0"  # transformers reads a version; the pinned gguf-py has no metadata
        from transformers import AutoModelForCausalLM

        path = smollm2.gguf_path()
        hf = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    except Exception as e:  # pragma: no cover - depends on transformers' GGUF support
        pytest.skip(f"transformers cannot load the GGUF here: {e}")
    finally:
        sys.path.remove(root)
    ours = load_reference(smollm2.hf_dir()).state_dict()
    theirs = hf.state_dict()
    for k, v in ours.items():
        assert torch.equal(v, theirs[k]), k
