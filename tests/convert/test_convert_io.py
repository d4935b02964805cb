"""GGUF reading/writing of the converter: agreement with gguf-py's GGUFReader, byte-exact copies,
and all-or-nothing outputs under failures and interrupts."""

from __future__ import annotations

import filecmp

import numpy as np
import pytest

from ahn_gguf.cli import main as cli_main
from ahn_gguf.constants import GDN
from ahn_gguf.convert import ConversionError
from ahn_gguf.fixtures import ahn_folder, smollm2_gguf
from ahn_gguf.gguf_io.contents import KV, VT, GGUFContents, TensorEntry, gguf, read_gguf, write_gguf

QT = gguf.GGMLQuantizationType


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def assert_agrees_with_gguf_reader(path):
    """Every key (type, element type, value) and tensor (name, type, shape, bytes) as GGUFReader reads it."""
    ours, theirs = read_gguf(path), gguf.GGUFReader(path)
    fields = {k: f for k, f in theirs.fields.items() if not k.startswith("GGUF.")}
    assert list(ours.kv) == list(fields)
    for key, field in fields.items():
        kv = ours.kv[key]
        assert kv.type == field.types[0], key
        if kv.type == VT.ARRAY:
            assert kv.sub_type == field.types[1], key
        want = field.contents()
        assert kv.value == want or (isinstance(want, float) and np.float32(kv.value) == np.float32(want)), key
    assert [t.name for t in ours.tensors] == [t.name for t in theirs.tensors]
    for a, b in zip(ours.tensors, theirs.tensors):
        assert a.ggml_type == b.tensor_type, a.name
        assert a.shape == tuple(int(x) for x in reversed(b.shape)), a.name  # GGUFReader: ne order
        assert np.array_equal(a.data, np.asarray(b.data).reshape(-1).view(np.uint8)), a.name
    return ours


@pytest.fixture(scope="module")
def sidecar(fixtures_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("io") / "ahn.gguf"
    assert cli_main(["convert", "--ahn-only", str(fixtures_root / ahn_folder("qwen2", GDN)), "-o", str(out),
                     "--no-progress"]) == 0
    return out


def test_reader_agrees_with_gguf_reader_on_sidecar(sidecar):
    c = assert_agrees_with_gguf_reader(sidecar)
    assert c.arch == "ahn" and all(t.ggml_type == QT.F32 for t in c.tensors)


def test_reader_agrees_with_gguf_reader_on_real_quantized_model():
    """SmolLM2-135M Q4_1 (a real llama.cpp file: Q4_1, Q8_0, F32 tensors, 49k-token vocabulary)."""
    c = assert_agrees_with_gguf_reader(smollm2_gguf())
    assert {t.ggml_type for t in c.tensors} >= {QT.Q4_1, QT.F32}


def test_copy_is_byte_identical(tmp_path):
    """read_gguf + write_gguf reproduce a llama.cpp-written file byte for byte."""
    out = tmp_path / "copy.gguf"
    write_gguf(read_gguf(smollm2_gguf()), out, progress=False)
    assert filecmp.cmp(smollm2_gguf(), out, shallow=False)
    assert leftovers(tmp_path) == []


class Boom(Exception):
    pass


class FailingData:
    """Tensor data that writes half its bytes, then fails (a disk error or a bug mid-write)."""

    def __init__(self, nbytes: int, exc: BaseException):
        self.nbytes, self.exc = nbytes, exc

    def tofile(self, f):
        f.write(b"\0" * (self.nbytes // 2))
        raise self.exc


def contents_with_failure(exc: BaseException) -> GGUFContents:
    c = GGUFContents()
    c.kv["general.architecture"] = KV(VT.STRING, "llama")
    ok = np.arange(64, dtype=np.float32)
    c.tensors = [TensorEntry("a.weight", QT.F32, (64,), ok.nbytes, ok),
                 TensorEntry("b.weight", QT.F32, (4096,), 4096 * 4, FailingData(4096 * 4, exc))]
    return c


@pytest.mark.parametrize("exc", [Boom("disk full"), KeyboardInterrupt()])
def test_failure_mid_write_leaves_no_output(tmp_path, exc):
    out = tmp_path / "model.gguf"
    with pytest.raises(type(exc)):
        write_gguf(contents_with_failure(exc), out, progress=False)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_failure_mid_write_keeps_existing_output(tmp_path):
    """--force over an existing file: a failed write leaves the old file as it was."""
    out = tmp_path / "model.gguf"
    out.write_bytes(b"previous model")
    with pytest.raises(Boom):
        write_gguf(contents_with_failure(Boom("disk full")), out, progress=False)
    assert out.read_bytes() == b"previous model"
    assert leftovers(tmp_path) == []


def test_interrupt_during_cli_conversion_leaves_nothing(fixtures_root, tmp_path, monkeypatch):
    """Ctrl-C while the converter writes tensors (simulated in the progress bar's update): exit code
    130, no output, no temporary file."""
    import tqdm

    calls = []

    class InterruptingBar(tqdm.tqdm):
        def update(self, n=1):
            calls.append(n)
            raise KeyboardInterrupt

    monkeypatch.setattr(tqdm, "tqdm", InterruptingBar)
    out = tmp_path / "ahn.gguf"
    rc = cli_main(["convert", "--ahn-only", str(fixtures_root / ahn_folder("llama", GDN)), "-o", str(out)])
    assert rc == 130 and calls, "the write was not interrupted"
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_corrupt_inputs_are_refused(tmp_path):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a gguf file at all, just text")
    with pytest.raises(ConversionError, match="not a GGUF file"):
        read_gguf(bad)
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(smollm2_gguf().read_bytes()[:2_000_000])
    with pytest.raises(ConversionError, match="truncated"):
        read_gguf(truncated)
