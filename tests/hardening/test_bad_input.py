"""Bad input everywhere a user can reach: a clear Python exception naming the problem, never a
crash or a hang. Each case of the issue has its test, and 1000+ mutated copies of a small AHN
GGUF are loaded in subprocesses (a signal exit is a crash)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers import REPO_ROOT, TESTS_DIR
from tests.helpers.runtime import convert_fixture, patched_llama_cpp
from tests.helpers.tiny_model import ARCH, build_tiny_ahn_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    patched_llama_cpp()
    return build_tiny_ahn_gguf(tmp_path_factory.mktemp("tiny") / "tiny-ahn.gguf")


def _rewrite(src: Path, dst: Path, changes: dict) -> Path:
    """A copy of a GGUF with some metadata replaced (None: removed), tensors untouched."""
    from ahn_gguf.gguf_io.contents import KV, VT, read_gguf, write_gguf

    c = read_gguf(src)
    for key, value in changes.items():
        if value is None:
            c.kv.pop(key, None)
        elif isinstance(value, str):
            c.kv[key] = KV(VT.STRING, value)
        elif isinstance(value, list):
            c.kv[key] = KV(VT.ARRAY, value, VT.INT32)
        else:
            c.kv[key] = KV(VT.UINT32, value)
    write_gguf(c, dst, progress=False)
    return dst


def _load(path, **kw):
    from ahn_gguf import Llama

    kw.setdefault("n_threads", 1)
    kw.setdefault("n_threads_batch", 1)
    return Llama(str(path), n_ctx=kw.pop("n_ctx", 256), verbose=False, **kw)


def test_not_a_gguf(tmp_path):
    from ahn_gguf.errors import AHNModelError

    p = tmp_path / "notes.gguf"
    p.write_text("these are notes, not a model\n")
    with pytest.raises(AHNModelError, match="not a GGUF file"):
        _load(p)
    with pytest.raises(AHNModelError, match="not found"):
        _load(tmp_path / "missing.gguf")


@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, 0.999])
def test_truncated_gguf(tiny, tmp_path, keep):
    from ahn_gguf.errors import GGUFFormatError

    data = tiny.read_bytes()
    p = tmp_path / "cut.gguf"
    p.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(GGUFFormatError, match="truncated or corrupted"):
        _load(p)


def test_tensor_pointing_past_the_end(tiny, tmp_path):
    """A tensor offset beyond the file (a corrupted header word) is caught before llama.cpp maps it."""
    from ahn_gguf.errors import GGUFFormatError
    from ahn_gguf.gguf_io.check import check_gguf_file

    data = bytearray(tiny.read_bytes())
    info = check_gguf_file(tiny)
    # the offset of the last tensor is the last 8 bytes of the tensor-info section
    name = list(info.tensors)[-1]
    idx = bytes(data).rindex(name.encode())
    off_pos = idx + len(name) + 4 + 8 * len(info.tensors[name][0]) + 4
    data[off_pos:off_pos + 8] = (1 << 40).to_bytes(8, "little")
    p = tmp_path / "bad-offset.gguf"
    p.write_bytes(bytes(data))
    with pytest.raises(GGUFFormatError, match="outside the file"):
        _load(p)


@pytest.mark.parametrize("changes,match", [
    ({f"{ARCH}.ahn.variant": "DeltaNet"}, "does not have"),
    ({f"{ARCH}.ahn.variant": "LSTM"}, "expected one of"),
    ({f"{ARCH}.ahn.window": 0}, "window 0 out of range"),
    ({f"{ARCH}.ahn.window": None}, "without llamaahn.ahn.window"),
    ({f"{ARCH}.attention.head_count": 4}, "has shape"),
    ({f"{ARCH}.attention.head_count_kv": 0}, "head_count_kv"),
    ({f"{ARCH}.block_count": 3}, "must list 3 layer flags"),
    ({f"{ARCH}.ahn.layers": [1]}, "layer flags"),
    # llama-cpp-python compiles the template at load time (jinja2.TemplateSyntaxError otherwise)
    ({"tokenizer.chat_template": "{% for m in messages %}{{ m.content }"}, "chat_template is not a valid Jinja"),
])
def test_metadata_contradicts_tensors(tiny, tmp_path, changes, match):
    from ahn_gguf.errors import AHNModelError

    p = _rewrite(tiny, tmp_path / "bad-meta.gguf", changes)
    with pytest.raises(AHNModelError, match=match):
        _load(p)


@pytest.mark.parametrize("kw,match", [
    (dict(ahn_window=0), "ahn_window must be an integer >= 1"),
    (dict(ahn_window=-5), "ahn_window must be an integer >= 1"),
    (dict(ahn_window=2.5), "ahn_window must be an integer >= 1"),
    (dict(ahn_sinks=-1), "ahn_sinks must be an integer >= 0"),
    (dict(ahn_window=1 << 30), "beyond the supported maximum"),
    (dict(ahn_window=300, n_ctx=256), "exceeds n_ctx"),
    (dict(ahn_window=200, ahn_sinks=100, n_ctx=256), "exceeds n_ctx"),
    (dict(type_k=8), "must be F16"),
])
def test_window_and_sinks_out_of_range(tiny, kw, match):
    from ahn_gguf.errors import AHNModelError

    with pytest.raises(AHNModelError, match=match):
        _load(tiny, **kw)


def test_window_options_on_a_model_without_ahn(fixtures_root, tmp_path):
    from ahn_gguf.errors import AHNModelError

    stock = convert_fixture(fixtures_root, tmp_path, "llama", None)
    with pytest.raises(AHNModelError, match="has no AHN"):
        _load(stock, ahn_window=16)


def test_prompt_longer_than_n_ctx(tiny):
    llm = _load(tiny, n_ctx=100)  # padded to 256, as llama.cpp does
    assert llm.n_ctx() == 256
    for n in (300, 600):  # beyond the (padded) context
        with pytest.raises(ValueError, match="exceed context window"):
            llm.create_completion("x" * n, max_tokens=300)
    # the context still works afterwards
    assert llm.create_completion("short", max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] >= 1
    # between the 100 asked for and the padded 256: runs (llama-cpp-python's token and score arrays are
    # sized by the padded n_ctx: patches/llama-cpp-python/0002; it was a numpy broadcast error)
    out = llm.create_completion([1] + [5] * 199, max_tokens=4, temperature=0.0)
    assert out["usage"]["prompt_tokens"] == 200 and out["usage"]["completion_tokens"] == 4


def test_sidecar_for_another_base(fixtures_root, tmp_path):
    """An AHN sidecar made for the Qwen2 base, attached to the Llama base: refused, no output."""
    from ahn_gguf.convert import ConversionError, attach, convert_ahn_only

    side = convert_ahn_only(str(fixtures_root / "qwen2-ahn-gdn"), tmp_path / "qwen2-ahn.gguf", progress=False)
    base = convert_fixture(fixtures_root, tmp_path, "llama", None)
    out = tmp_path / "merged.gguf"
    with pytest.raises(ConversionError, match="(?i)does not fit|mismatch|belongs"):
        attach(base, str(side), out, progress=False)
    assert not out.exists()


def test_state_from_another_model(tiny, tmp_path, fixtures_root):
    """A llama state (and a chat session) saved with one model cannot be loaded into another."""
    from ahn_gguf.cli.chat import ChatSession, ChatStateError

    other = convert_fixture(fixtures_root, tmp_path, "llama", "gdn", "f16")
    a = _load(tiny)
    a.eval(a.tokenize(b"remember this", add_bos=True))
    state = a.save_state()
    b = _load(other, n_ctx=512)
    with pytest.raises((RuntimeError, ValueError)):
        b.load_state(state)
    # the context still works
    assert b.create_completion("ok", max_tokens=2, temperature=0.0)["usage"]["completion_tokens"] >= 1

    session = ChatSession(a)
    f = tmp_path / "session.ahn"
    session.save(f)
    with pytest.raises(ChatStateError, match="another model"):
        ChatSession(b).load(f)
    f.write_bytes(b"garbage")
    with pytest.raises(ChatStateError, match="not an ahn-gguf session file"):
        ChatSession(a).load(f)


# a case loads a 50 KB model and decodes 3 tokens: ~10 ms here; a case still running after this is a hang
FUZZ_CASE_LIMIT_S = 120


def _read_fuzz_log(log: Path) -> tuple[int | None, dict[int, dict]]:
    started, done = None, {}
    for line in log.read_text().splitlines() if log.exists() else []:
        if line.startswith("start "):
            started = int(line.split()[1])
        elif line.strip():
            rec = json.loads(line)
            done[rec["case"]] = rec
    return started, done


def _run_fuzz(base: Path, work: Path, first: int, count: int) -> list[dict]:
    """Cases first..first+count-1 in worker subprocesses. A worker killed by a signal is a crash, and
    one whose current case runs past FUZZ_CASE_LIMIT_S is a hang (killed): either is recorded with
    the case's mutation, and a new worker continues after that case."""
    from tests.helpers.fuzz_gguf import mutate

    data = base.read_bytes()
    results, i = [], first
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    while i < first + count:
        log = work / f"results-{i}.jsonl"
        proc = subprocess.Popen([sys.executable, str(TESTS_DIR / "helpers" / "fuzz_gguf.py"), str(base), str(i), str(first + count - i), str(work)],
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        current, since, hung = None, time.monotonic(), False
        while proc.poll() is None:
            time.sleep(0.5)
            started, _ = _read_fuzz_log(log)
            if started != current:
                current, since = started, time.monotonic()
            elif time.monotonic() - since > FUZZ_CASE_LIMIT_S:
                proc.kill()
                hung = True
        stderr = proc.communicate()[1]
        started, done = _read_fuzz_log(log)
        results.extend(done.values())
        if proc.returncode == 0 and not hung:
            break
        failed = started if started is not None else i
        results.append({"case": failed, "kind": mutate(data, failed)[0], "result": "hang" if hung else "crash",
                        "returncode": proc.returncode, "stderr": stderr[-2000:]})
        i = failed + 1
    return results


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fuzz_mutated_ahn_gguf(family, tmp_path, record_property):
    """1000 mutations per base family (SentencePiece vocabulary / byte-level BPE with merges), a third of
    them inside the metadata arrays (token strings, merges, scores, token types, AHN layer flags)."""
    patched_llama_cpp()
    base = build_tiny_ahn_gguf(tmp_path / f"tiny-{family}.gguf", family=family)
    n = int(os.environ.get("AHN_GGUF_FUZZ_CASES", "1000"))
    results = _run_fuzz(base, tmp_path, 0, n)
    crashes = [r for r in results if r["result"] in ("crash", "hang")]
    unclear = [r for r in results if r["result"] == "rejected" and not r["clear"]]
    loaded = sum(r["result"] == "loaded" for r in results)
    record_property("fuzz_cases", len(results))
    record_property("fuzz_loaded", loaded)
    in_arrays = sum(str(r.get("kind", "")).startswith("array:") for r in results)
    record_property("fuzz_array_mutations", in_arrays)
    print(f"fuzz {family}: {len(results)} cases ({in_arrays} inside metadata arrays), {loaded} loaded and decoded, "
          f"{len(results) - loaded - len(crashes)} rejected, {len(crashes)} crashes or hangs")
    assert len(results) >= n
    assert in_arrays >= n // 5, f"only {in_arrays} mutations inside the arrays"
    assert not crashes, f"{len(crashes)} crashes or hangs, first: {crashes[0]}"
    assert not unclear, f"{len(unclear)} rejections without a clear exception, first: {unclear[0]}"


def test_fuzz_structured_metadata(tiny, tmp_path):
    """Structurally valid files whose metadata contradicts the tensors: rejected, never crash."""
    from tests.helpers.fuzz_gguf import structured_cases

    results = []
    for k, (name, changes) in enumerate(structured_cases(str(tiny))):
        p = _rewrite(tiny, tmp_path / f"s{k}.gguf", changes)
        code = ("import sys, ahn_gguf, ahn_gguf.errors\n"
                "try:\n"
                f"    ahn_gguf.Llama({str(p)!r}, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False).create_completion('x', max_tokens=2)\n"
                "    print('LOADED')\n"
                "except (ahn_gguf.errors.AHNError, ValueError) as e:\n"
                "    print('REJECTED', e)\n")
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
        results.append((name, proc.returncode, proc.stdout.strip()[:200]))
    crashes = [r for r in results if r[1] != 0]
    assert not crashes, f"crashes or unclear errors: {crashes}"
    # contradictions must be rejected, not silently loaded
    loaded = [r for r in results if r[2].startswith("LOADED")]
    assert not loaded, f"loaded despite contradictory metadata: {loaded}"


def _with_kv(src: Path, dst: Path, key: str, kv) -> Path:
    from ahn_gguf.gguf_io.contents import read_gguf, write_gguf

    c = read_gguf(src)
    c.kv[key] = kv
    write_gguf(c, dst, progress=False)
    return dst


def _c_loader_result(path: Path) -> subprocess.CompletedProcess:
    """llama.cpp's own loader on `path`, without the Python pre-check, in a subprocess."""
    code = ("import sys, llama_cpp\n"
            "llama_cpp.llama_backend_init()\n"
            "p = llama_cpp.llama_model_default_params()\n"
            "m = llama_cpp.llama_model_load_from_file(sys.argv[1].encode(), p)\n"
            "print('LOADED' if m else 'NULL')\n")
    return subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=300)


def test_duplicate_tokens_are_a_load_error(tiny, tmp_path):
    """Two equal token strings aborted stock llama.cpp (llama-vocab.cpp GGML_ASSERT): now the C loader
    returns NULL with the reason logged, and the Python pre-check names the tokens."""
    from ahn_gguf.errors import GGUFFormatError
    from ahn_gguf.gguf_io.contents import KV, VT
    from ahn_gguf.gguf_io.header import read_metadata

    tokens = list(read_metadata(tiny)["tokenizer.ggml.tokens"])
    tokens[7] = tokens[8]
    bad = _with_kv(tiny, tmp_path / "dup.gguf", "tokenizer.ggml.tokens", KV(VT.ARRAY, tokens, VT.STRING))
    with pytest.raises(GGUFFormatError, match="token 8 .* duplicates token 7"):
        _load(bad)
    proc = _c_loader_result(bad)
    assert proc.returncode == 0, f"the C loader died (rc {proc.returncode}): {proc.stderr[-1500:]}"
    assert proc.stdout.strip() == "NULL"
    assert "duplicates token 7" in proc.stderr


@pytest.mark.parametrize("key, value, message", [
    ("block_count", 0, "block_count 0"),
    ("block_count", 100000, "block_count 100000"),
    ("rope.dimension_count", 16, "rope.dimension_count 16"),
    ("attention.head_count_kv", 0, "head_count_kv 0"),
    ("expert_count", 1000000, "expert_count"),
])
def test_c_loader_rejects_bad_hparams(tiny, tmp_path, key, value, message):
    """What were GGML_ASSERTs (or a division by zero) on a file's hyper-parameters are load errors."""
    from ahn_gguf.gguf_io.contents import KV, VT

    bad = _with_kv(tiny, tmp_path / "bad.gguf", f"{ARCH}.{key}", KV(VT.UINT32, value))
    proc = _c_loader_result(bad)
    assert proc.returncode == 0, f"the C loader died (rc {proc.returncode}): {proc.stderr[-1500:]}"
    assert proc.stdout.strip() == "NULL", proc.stdout
    assert message in proc.stderr, proc.stderr[-1500:]


def test_max_tokens_holds_when_every_token_ends_inside_a_character(tiny):
    """A model that keeps emitting UTF-8 lead bytes (a fuzzed GGUF whose weights were corrupted did)
    still stops at max_tokens: llama-cpp-python skipped its length check while the text ended inside
    a character, so the request generated without end (patches/llama-cpp-python/0003). Run in a
    subprocess, so that a regression fails on the timeout instead of hanging the suite."""
    code = f"""
import numpy as np
import ahn_gguf
from llama_cpp import LogitsProcessorList
llm = ahn_gguf.Llama({str(tiny)!r}, n_ctx=256, n_threads=1, n_threads_batch=1, verbose=False)
lead = next(t for t in range(llm.n_vocab()) if llm.detokenize([t]) == b"\\xe0")
def only_lead_bytes(ids, logits):
    logits[:] = -np.inf
    logits[lead] = 0.0
    return logits
for stream in (False, True):
    kw = dict(max_tokens=7, temperature=0.0, logits_processor=LogitsProcessorList([only_lead_bytes]), stream=stream)
    out = llm.create_completion("x", **kw)
    if stream:
        chunks = list(out)
        print("stream", len(chunks), chunks[-1]["choices"][0]["finish_reason"])
    else:
        print("plain", out["usage"]["completion_tokens"], out["choices"][0]["finish_reason"])
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = proc.stdout.split("\n")
    assert "plain 7 length" in lines, proc.stdout
    assert any(line.startswith("stream ") and line.endswith(" length") for line in lines), proc.stdout
