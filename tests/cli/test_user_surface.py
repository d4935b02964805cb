"""The everyday surfaces: `ahn-gguf chat` in a terminal, `ahn-gguf serve`, a 1M-token stream.

- chat: driven in a pseudo-terminal through two turns, /save, /reset, /load; the second turn
  evaluates only its own new tokens.
- serve: llama-cpp-python's OpenAI-compatible server on 127.0.0.1 with an AHN model: a
  streaming chat request, a completion, and concurrent requests that do not crash it.
- a 1M-token stream (chunked prefill and decode mixed) through one context: no NaN, and RSS
  flat but for llama-cpp-python's 4-byte-per-token history of token ids.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from tests.helpers.runtime import patched_llama_cpp, wait_for_http
from tests.helpers.tiny_model import build_tiny_ahn_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    patched_llama_cpp()
    return build_tiny_ahn_gguf(tmp_path_factory.mktemp("tiny-surface") / "tiny-ahn.gguf")


STATUS = re.compile(r"\[position (\d+)/\d+, last turn evaluated (\d+) prompt tokens")


def test_chat_in_a_terminal(tiny, tmp_path):
    pexpect = pytest.importorskip("pexpect", reason="pexpect is a dev dependency (pip install -e .[dev])")
    session = tmp_path / "session.ahn"
    child = pexpect.spawn(sys.executable, ["-m", "ahn_gguf.cli", "chat", str(tiny), "--n-ctx", "4096", "--max-tokens", "12",
                                           "--threads", "1"], encoding="utf-8", timeout=120, env=dict(os.environ, PYTHONUNBUFFERED="1"))
    try:
        child.expect("window 8, sinks 2")
        child.expect("> ")

        child.sendline("Hello there, this is the first turn of our conversation.")
        child.expect(STATUS)
        pos1, eval1 = int(child.match.group(1)), int(child.match.group(2))
        reply1 = child.before
        assert 0 < eval1 <= pos1, (pos1, eval1)
        assert reply1.strip(), "the first reply streamed nothing"
        child.expect("> ")

        child.sendline("And a second, shorter one.")
        child.expect(STATUS)
        pos2, eval2 = int(child.match.group(1)), int(child.match.group(2))
        # only the new turn's tokens were evaluated, not the first turn's again
        assert pos2 > pos1 and eval2 < pos1, f"second turn evaluated {eval2} tokens (history was {pos1})"
        child.expect("> ")

        child.sendline(f"/save {session}")
        child.expect(r"\[saved to")
        child.expect("> ")
        child.sendline("/reset")
        child.expect("cleared")
        child.expect("> ")
        child.sendline(f"/load {session}")
        child.expect(r"\[loaded .*: (\d+) messages, position (\d+)\]")
        assert int(child.match.group(1)) == 4 and int(child.match.group(2)) == pos2
        child.expect("> ")

        # the loaded session continues without re-evaluating its history
        child.sendline("A third turn after loading.")
        child.expect(STATUS)
        pos3, eval3 = int(child.match.group(1)), int(child.match.group(2))
        assert pos3 > pos2 and eval3 < pos2
        child.expect("> ")

        child.sendline("/load /nonexistent/file")
        child.expect("error: no such session file")
        child.expect("> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    assert child.exitstatus == 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_streams_and_survives_concurrency(tiny):
    httpx = pytest.importorskip("httpx", reason="httpx is a dev dependency (pip install -e .[dev])")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ahn_gguf.cli", "serve", str(tiny), "--port", str(port), "--n-ctx", "2048",
                             "--threads", "1"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_for_http(f"{base}/models", proc)

        models = httpx.get(f"{base}/models").json()
        assert models["data"][0]["id"] == tiny.name

        r = httpx.post(f"{base}/completions", json={"prompt": "Once upon a time", "max_tokens": 8, "temperature": 0}, timeout=120)
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1

        chunks = []
        with httpx.stream("POST", f"{base}/chat/completions", timeout=120,
                          json={"messages": [{"role": "user", "content": "Say something."}], "max_tokens": 8, "stream": True}) as s:
            assert s.status_code == 200
            for line in s.iter_lines():
                if line.startswith("data: ") and line != "data: [DONE]":
                    chunks.append(json.loads(line[6:]))
        assert len(chunks) >= 2, "the chat reply was not streamed"
        assert any(c["choices"][0]["delta"].get("content") for c in chunks)

        # several clients at once: every request answered, the server still up
        results = []

        def call(i):
            resp = httpx.post(f"{base}/completions", json={"prompt": f"Request {i}:", "max_tokens": 6}, timeout=300)
            results.append(resp.status_code)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert results == [200] * 6, results
        assert proc.poll() is None
        assert httpx.get(f"{base}/models").status_code == 200
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


def test_one_million_tokens_flat_memory(tiny, record_property):
    from ahn_gguf import Llama

    total = int(os.environ.get("AHN_GGUF_STREAM_TOKENS", str(1 << 20)))
    llm = Llama(str(tiny), n_ctx=total + 4096, n_batch=128, n_ubatch=128, flash_attn=True, verbose=False, n_threads=1, n_threads_batch=1)
    rng = np.random.default_rng(0)
    chunk = rng.integers(3, 259, size=16384).tolist()
    curve = []
    t0 = time.time()
    while llm.n_tokens < total:
        llm.eval(chunk[: min(len(chunk), total - llm.n_tokens)])          # chunked prefill
        for _ in range(16):                                                # then decode steps
            if llm.n_tokens >= total:
                break
            logits = np.ctypeslib.as_array(llm._ctx.get_logits(), shape=(llm.n_vocab(),))
            assert np.isfinite(logits).all(), f"non-finite logits at position {llm.n_tokens}"
            llm.eval([int(np.argmax(logits))])
        if not curve or llm.n_tokens - curve[-1][0] >= 65536:
            curve.append((llm.n_tokens, _rss_bytes(), llm.ahn_memory().total_bytes))
    curve.append((llm.n_tokens, _rss_bytes(), llm.ahn_memory().total_bytes))
    elapsed = time.time() - t0

    record_property("stream_rss_curve", json.dumps(curve))
    print(f"{llm.n_tokens} tokens in {elapsed:.0f} s; (position, RSS MiB, AHN memory bytes):")
    for pos, rss, mem in curve:
        print(f"  {pos:>8} {rss / 2**20:8.1f} {mem}")

    assert llm.n_tokens >= total
    assert len({mem for _, _, mem in curve}) == 1, "the AHN memory changed size"
    # after warm-up, RSS may only grow by llama-cpp-python's token-id history (4 bytes per token)
    # plus allocator noise; a full-attention cache of even this tiny model grows 256 B/token
    (p0, r0, _), (p1, r1, _) = curve[1], curve[-1]
    growth_per_token = (r1 - r0) / max(1, p1 - p0)
    record_property("rss_growth_bytes_per_token", growth_per_token)
    assert growth_per_token < 6.0, f"RSS grew {growth_per_token:.1f} bytes per token"
