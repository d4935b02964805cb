"""The one GGUF header parser (ahn_gguf.gguf_io.header) against gguf-py, the pinned llama.cpp's own."""

from __future__ import annotations

import pytest


def test_block_table_matches_gguf_py():
    from ahn_gguf.build.pins import import_gguf_py
    from ahn_gguf.gguf_io.header import GGML_BLOCK

    gguf = import_gguf_py()
    assert GGML_BLOCK == {int(t): tuple(v) for t, v in gguf.GGML_QUANT_SIZES.items()}


def test_header_matches_gguf_reader(tmp_path):
    """Keys, values, tensor shapes/types/offsets as gguf-py's GGUFReader reads them."""
    from ahn_gguf.build.pins import import_gguf_py
    from ahn_gguf.gguf_io.header import parse_header
    from tests.helpers.tiny_model import build_tiny_ahn_gguf

    path = build_tiny_ahn_gguf(tmp_path / "tiny.gguf")
    h = parse_header(path.read_bytes(), str(path))
    r = import_gguf_py().GGUFReader(path)
    assert list(h.kv) == [k for k in r.fields if not k.startswith("GGUF.")]
    for t, rt in zip(h.tensors, r.tensors):
        assert (t.name, t.ne, t.ggml_type, t.nbytes) == (rt.name, tuple(int(x) for x in rt.shape), int(rt.tensor_type), int(rt.n_bytes))
        assert h.data_start + t.offset == int(rt.data_offset)
    assert h.kv["tokenizer.ggml.tokens"].value[:3] == ["<unk>", "<s>", "</s>"]
    # validation-only parsing skips decoding string arrays, and agrees on everything else
    lazy = parse_header(path.read_bytes(), str(path), string_arrays=False)
    assert lazy.kv["tokenizer.ggml.tokens"].value is None and lazy.tensors == h.tensors


def test_rejects_big_endian_and_unknown_versions():
    from ahn_gguf.errors import GGUFFormatError
    from ahn_gguf.gguf_io.header import parse_header

    with pytest.raises(GGUFFormatError, match="big-endian"):
        parse_header(b"GGUF" + (3).to_bytes(4, "big") + bytes(16))
    with pytest.raises(GGUFFormatError, match="unsupported GGUF version 7"):
        parse_header(b"GGUF" + (7).to_bytes(4, "little") + bytes(16))
    with pytest.raises(GGUFFormatError, match="not a GGUF file"):
        parse_header(b"PK\x03\x04 a zip file")
