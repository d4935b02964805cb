"""Session files (`ahn_gguf.session`, `ahn-gguf chat`'s /save and /load): a saved conversation
continues exactly; nothing in a file is executed; a foreign, truncated, corrupted or another
model's file is a clean SessionFileError and leaves the context usable."""

from __future__ import annotations

import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest

from tests.helpers.runtime import patched_llama_cpp
from tests.helpers.tiny_model import build_tiny_ahn_gguf


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    patched_llama_cpp()
    d = tmp_path_factory.mktemp("session-models")
    return build_tiny_ahn_gguf(d / "a.gguf", seed=0), build_tiny_ahn_gguf(d / "b.gguf", seed=1)


def _llm(path, **kw):
    from ahn_gguf import Llama

    return Llama(str(path), n_ctx=kw.pop("n_ctx", 512), n_batch=64, n_threads=1, n_threads_batch=1, verbose=False, **kw)


def _greedy(llm, n):
    out = []
    for _ in range(n):
        logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
        t = int(np.argmax(logits))
        out.append(t)
        llm.eval([t])
    return out


def test_save_load_continues_exactly(models, tmp_path):
    from ahn_gguf.session import load_session, save_session

    a = _llm(models[0])
    prompt = np.random.default_rng(0).integers(3, 259, size=100).tolist()   # many windows (W = 8)
    a.eval(prompt)
    f = tmp_path / "s.ahnsession"
    size = save_session(a, f, {"note": "hello"})
    assert size == f.stat().st_size
    expected = _greedy(a, 12)

    b = _llm(models[0])
    assert load_session(b, f) == {"note": "hello"}
    assert b.n_tokens == len(prompt)
    # llama-cpp-python re-derives the last logits by evaluating; feed the first greedy token instead
    b.eval([expected[0]])
    assert _greedy(b, 11) == expected[1:]


def test_crafted_pickle_is_not_executed(models, tmp_path):
    from ahn_gguf.cli.chat import ChatSession
    from ahn_gguf.session import SessionFileError

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    f = tmp_path / "evil.session"
    f.write_bytes(pickle.dumps(Payload()))
    session = ChatSession(_llm(models[0]))
    with pytest.raises(SessionFileError, match="not an ahn-gguf session file"):
        session.load(f)
    assert not marker.exists(), "the pickle payload ran"
    # even behind our magic, the bytes are never unpickled
    f.write_bytes(b"AHNSESS\0" + pickle.dumps(Payload()))
    with pytest.raises(SessionFileError):
        session.load(f)
    assert not marker.exists()


def test_bad_files_are_clean_errors(models, tmp_path):
    from ahn_gguf.session import MAGIC, SessionFileError, load_session, save_session

    a = _llm(models[0])
    a.eval(list(range(3, 60)))
    good = tmp_path / "good.session"
    save_session(a, good, {"k": 1})
    data = good.read_bytes()
    target = _llm(models[0])

    cases = {
        "empty": (b"", "not an ahn-gguf session file"),
        "garbage": (b"garbage" * 10, "not an ahn-gguf session file"),
        "magic only": (MAGIC, "truncated"),
        "version": (data[:8] + struct.pack("<I", 99) + data[12:], "format version 99"),
        "truncated": (data[: len(data) - 7], "truncated or corrupted"),
        "padded": (data + b"\0" * 5, "truncated or corrupted"),
        "header length": (data[:56] + struct.pack("<Q", 1 << 60) + data[64:], "truncated or corrupted"),
        "header json": (data[:64] + b"\xff" + data[65:], "corrupted session header"),
        "settings": (data[:44] + struct.pack("<3I", 0, 9, 2) + data[56:], "AHN settings"),
    }
    for name, (blob, message) in cases.items():
        p = tmp_path / f"{name}.session"
        p.write_bytes(blob)
        with pytest.raises(SessionFileError, match=message):
            load_session(target, p)
    with pytest.raises(SessionFileError, match="no such session file"):
        load_session(target, tmp_path / "missing.session")
    # another model file
    other = _llm(models[1])
    with pytest.raises(SessionFileError, match="another model"):
        load_session(other, good)
    # a different window than the one saved
    narrow = _llm(models[0], ahn_window=6)
    with pytest.raises(SessionFileError, match="AHN settings"):
        load_session(narrow, good)
    # the target context still works after every refusal
    assert target.create_completion("ok", max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] >= 1


def test_corrupted_state_bytes_never_crash(models, tmp_path):
    """Flipped bytes inside the llama state (the part llama.cpp parses), each loaded in a subprocess:
    a clean error or a loaded state, never a signal."""
    from ahn_gguf.session import save_session

    a = _llm(models[0])
    a.eval(list(range(3, 80)))
    good = tmp_path / "good.session"
    save_session(a, good)
    code = (
        "import sys\n"
        "from ahn_gguf import Llama\n"
        "from ahn_gguf.session import SessionFileError, load_session\n"
        "llm = Llama(sys.argv[1], n_ctx=512, n_batch=64, n_threads=1, n_threads_batch=1, verbose=False)\n"
        "for p in sys.argv[2:]:\n"
        "    try:\n"
        "        load_session(llm, p)\n"
        "        llm.eval([5])\n"
        "        print('loaded', flush=True)\n"
        "    except SessionFileError as e:\n"
        "        print('rejected', flush=True)\n"
    )
    data = bytearray(good.read_bytes())
    state_start = len(data) - int(a.save_state().llama_state_size)
    rng = np.random.default_rng(0)
    paths = []
    for k in range(60):
        b = bytearray(data)
        # half the cases hit the state's own metadata (stream and cell counts, positions, sequence ids)
        end = min(len(b), state_start + 512) if k % 2 else len(b)
        for _ in range(int(rng.integers(1, 6))):
            i = int(rng.integers(state_start, end))
            b[i] = int(rng.integers(0, 256))
        p = tmp_path / f"m{k}.session"
        p.write_bytes(bytes(b))
        paths.append(str(p))
    proc = subprocess.run([sys.executable, "-c", code, str(models[0]), *paths], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"a corrupted state killed the process (rc {proc.returncode}):\n{proc.stderr[-2000:]}"
    lines = proc.stdout.split()
    assert len(lines) == len(paths) and set(lines) <= {"loaded", "rejected"}, proc.stdout
