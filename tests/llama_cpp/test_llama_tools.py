"""llama.cpp's own programs (`ahn-gguf build --tools`) on AHN GGUFs.

- llama-perplexity equals the Python runtime's perplexity over the same tokens and chunks;
- llama-cli (single turn, greedy) prints what the Python API generates;
- llama-server with 4 slots: 4 concurrent prompts of >= 8 x (S + W) tokens each get the greedy
  tokens they get alone; a follow-up turn re-evaluates only about its new tokens; malformed JSON,
  a prompt over the context and an absurd max_tokens are HTTP errors and the server stays up;
- RPC: one and two rpc-server processes on 127.0.0.1, the model's layers split across them and
  the local CPU: the logits of the local run (llama-perplexity's KL divergence against them).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.runtime import patched_llama_cpp, wait_for_http
from tests.helpers.tiny_model import SINKS, WINDOW, build_tiny_ahn_gguf

httpx = pytest.importorskip("httpx", reason="httpx is a dev dependency (pip install -e .[dev])")

TEXT = ("The memory keeps a window of recent tokens exactly and folds every older token into a fixed-size "
        "state, so a long conversation costs the same memory as a short one. ") * 40


@pytest.fixture(scope="module")
def tools():
    from ahn_gguf.build.llama_cpp import TOOLS, BuildConfig, ensure_tools

    patched_llama_cpp()
    bin_dir = ensure_tools(BuildConfig())
    return {t: bin_dir / t for t in TOOLS}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_ahn_gguf(tmp_path_factory.mktemp("tools") / "tiny-ahn.gguf")


def _run(cmd, **kw):
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{cmd[0]} failed ({proc.returncode}):\n{proc.stderr[-3000:]}"
    return proc


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _python_perplexity(model: Path, text: str, n_ctx: int, **kw) -> tuple[float, int]:
    """llama-perplexity's computation with ahn_gguf.Llama: chunks of n_ctx tokens, the first replaced by
    BOS, each scored over its second half, with the memory cleared between chunks."""
    import llama_cpp

    from ahn_gguf import Llama

    llm = Llama(str(model), n_ctx=n_ctx, n_batch=n_ctx, n_ubatch=n_ctx, logits_all=True, n_threads=1, n_threads_batch=1,
                verbose=False, **kw)
    tokens = llm.tokenize(text.encode(), add_bos=True, special=False)
    add_bos = bool(llama_cpp.llama_vocab_get_add_bos(llm._model.vocab))
    nll, count = 0.0, 0
    first = n_ctx // 2
    for c in range(len(tokens) // n_ctx):
        chunk = tokens[c * n_ctx:(c + 1) * n_ctx]
        if add_bos:
            chunk[0] = llm.token_bos()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
        llm.n_tokens = 0
        llm.eval(chunk)
        logits = np.array(llm.scores[:n_ctx], dtype=np.float64)
        for k in range(first, n_ctx - 1):
            row = logits[k] - logits[k].max()
            nll -= row[chunk[k + 1]] - np.log(np.exp(row).sum())
            count += 1
    return float(np.exp(nll / count)), count


@pytest.mark.parametrize("memory_type", ["f32", "f16"])
def test_perplexity_equals_python_runtime(memory_type, tools, tmp_path, record_property):
    """The default model (SmolLM2 + AHN) with its window narrowed to 64 tokens, so that the memory works in
    every 512-token chunk: llama-perplexity and the Python runtime score the same tokens the same way, with the
    memory stored in F32 and in F16 (`--override-kv llamaahn.ahn.window=int:64,llamaahn.ahn.memory_type=str:f16`;
    the default model records f16)."""
    from ahn_gguf.default_model import DATA_DIR, default_model_path

    model = default_model_path()
    prose = (DATA_DIR / "demo-document.txt").read_text()[:12000]   # Python documentation, real text
    text = tmp_path / "text.txt"
    text.write_text(prose)
    n_ctx, window = 512, 64
    # flash attention off, as in llama-cpp-python's default: the same kernels on both sides
    proc = _run([tools["llama-perplexity"], "-m", model, "-f", text, "-c", n_ctx, "-b", n_ctx, "-t", 1, "-tb", 1, "-fa", "off",
                 "--override-kv", f"llamaahn.ahn.window=int:{window},llamaahn.ahn.memory_type=str:{memory_type}",
                 "-lv", 4], timeout=600)
    # both overrides reached the model (llama.cpp keeps only the last of repeated --override-kv flags)
    assert f"AHN window = {window}," in proc.stderr and f"per-token gates ({memory_type})" in proc.stderr, \
        proc.stderr[-2000:]
    m = re.search(r"Final estimate: PPL = ([0-9.]+)", proc.stdout + proc.stderr)
    assert m, proc.stderr[-2000:]
    ppl_cpp = float(m.group(1))
    ppl_py, count = _python_perplexity(model, prose, n_ctx, ahn_window=window, ahn_memory_type=memory_type)
    record_property("ppl_llama_perplexity", ppl_cpp)
    record_property("ppl_python", ppl_py)
    print(f"llama-perplexity {ppl_cpp:.4f}, Python runtime {ppl_py:.4f} over {count} scored tokens (W = {window})")
    # llama-perplexity prints 4 decimals: the two agree to that
    assert abs(ppl_cpp - ppl_py) <= 1e-4 * ppl_py + 5e-5, (ppl_cpp, ppl_py)


def test_cli_greedy_equals_python_api(tools, record_property):
    """llama-completion (plain completion) and llama-cli (one chat turn), greedy, on the default model."""
    from ahn_gguf import Llama
    from ahn_gguf.default_model import default_model_path

    model = default_model_path()
    prompt = "The three primary colours are"
    llm = Llama(str(model), n_ctx=2048, n_threads=1, n_threads_batch=1, verbose=False)
    want = llm.create_completion(prompt, max_tokens=24, temperature=0.0)["choices"][0]["text"]
    # flash attention off on both sides: llama-cpp-python's default is off, llama.cpp's programs default to
    # "auto" (on for the CPU), and the two kernels' rounding differs enough to flip a near-tie in greedy
    # decoding (seen on one CI machine: "human eye, which" vs "human eye:")
    proc = _run([tools["llama-completion"], "-m", model, "-p", prompt, "-n", 24, "--temp", 0, "-no-cnv", "-t", 1, "-tb", 1,
                 "-c", 2048, "-fa", "off", "--no-display-prompt", "--no-warmup"], timeout=600, stdin=subprocess.DEVNULL)
    print(f"Python: {want!r}\nllama-completion: {proc.stdout!r}")
    assert want.strip() and proc.stdout.strip().startswith(want.strip()), (proc.stdout, want)

    question = "Name one primary colour."
    chat = llm.create_chat_completion(messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0.0)
    want_chat = chat["choices"][0]["message"]["content"].strip()
    proc = _run([tools["llama-cli"], "-m", model, "-p", question, "-st", "-n", 24, "--temp", 0, "-t", 1, "-tb", 1,
                 "-c", 2048, "-fa", "off", "--no-warmup"], timeout=600, stdin=subprocess.DEVNULL)
    record_property("cli_text", proc.stdout[-500:])
    print(f"Python chat: {want_chat!r}\nllama-cli: {proc.stdout[-500:]!r}")
    assert want_chat and want_chat in proc.stdout, (proc.stdout[-1000:], want_chat)


class _Server:
    def __init__(self, binary: Path, model: Path, *args):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen([str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                                      "-t", "1", "-tb", "1", *map(str, args)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wait_for_http(f"{self.base}/health", self.proc)

    def completion(self, prompt, n_predict=16, **kw):
        r = httpx.post(f"{self.base}/completion", timeout=600,
                       json={"prompt": prompt, "n_predict": n_predict, "temperature": 0, "return_tokens": True, **kw})
        assert r.status_code == 200, r.text[:500]
        return r.json()

    def close(self):
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def test_server_four_slots(tools, tiny, record_property):
    rng = np.random.default_rng(0)
    n = 8 * (SINKS + WINDOW)
    prompts = [rng.integers(3, 259, size=n + 13 * i).tolist() for i in range(4)]   # token ids: different, >= 8 (S + W)
    srv = _Server(tools["llama-server"], tiny, "-np", 4, "-c", 4 * 512, "-b", 64, "-ub", 64)
    try:
        alone = [srv.completion(p)["tokens"] for p in prompts]
        together = [None] * 4

        def go(i):
            together[i] = srv.completion(prompts[i])["tokens"]

        threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert together == alone, "concurrent slots changed the greedy tokens"

        # a multi-turn conversation: the second turn re-evaluates about its new tokens only
        conversation = rng.integers(3, 259, size=400).tolist()
        first = srv.completion(conversation, n_predict=8, cache_prompt=True)
        history = conversation + first["tokens"]
        follow = srv.completion(history + [70, 71, 72, 73, 74], n_predict=8, cache_prompt=True)
        t = follow["timings"]
        record_property("server_followup_cached", t["cache_n"])
        record_property("server_followup_evaluated", t["prompt_n"])
        print(f"follow-up turn: {t['cache_n']} prompt tokens from the cache, {t['prompt_n']} evaluated of {len(history) + 5}")
        assert t["cache_n"] >= len(history) - 64 and t["prompt_n"] <= 5 + 64, t

        # bad requests: HTTP errors, the server stays up
        assert httpx.post(f"{srv.base}/completion", content=b'{"prompt": ', headers={"Content-Type": "application/json"}).status_code >= 400
        over = httpx.post(f"{srv.base}/completion", json={"prompt": [5] * 3000, "n_predict": 4}, timeout=120)
        assert over.status_code >= 400, over.text[:300]
        absurd = httpx.post(f"{srv.base}/v1/chat/completions", timeout=120,
                            json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**12})
        assert absurd.status_code == 400, absurd.text[:300]
        assert srv.proc.poll() is None
        assert httpx.get(f"{srv.base}/health").status_code == 200
    finally:
        srv.close()


def test_server_slots_share_a_tight_window_cache_across_ubatches(tools, tiny, record_property):
    """4 slots whose prompts arrive together, the default n_batch 2048 over ubatches of 512, and a window
    cache with no slack (4 x (S + W) + 512 = 1,792 cells, a multiple of 256: no padding): each batch holds
    several slots' prompts, split into several ubatches. The cache's trial placement of a batch
    purged cells that an earlier ubatch still reads (llama-server aborted: "the K/V of position ...
    left the cache before it was evicted"; patches/llama.cpp/0002 keeps them). The greedy tokens are
    each prompt's alone."""
    span = 320                  # S + W
    rng = np.random.default_rng(1)
    prompts = [rng.integers(3, 259, size=8 * span + 17 * i).tolist() for i in range(4)]   # >= 8 (S + W)
    srv = _Server(tools["llama-server"], tiny, "-np", 4, "-c", 4 * 2700, "-kvu", "-lv", 4,
                  "--override-kv", f"llamaahn.ahn.window=int:{span - SINKS}", "--cache-ram", 0)
    try:
        alone = [srv.completion(p, n_predict=8)["tokens"] for p in prompts]
        together = [None] * 4

        def go(i):
            together[i] = srv.completion(prompts[i], n_predict=8)["tokens"]

        threads = [threading.Thread(target=go, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert srv.proc.poll() is None, "llama-server died"
        assert together == alone, "concurrent slots changed the greedy tokens"
    finally:
        srv.close()
        out = srv.proc.stdout.read()
    m = re.search(r"AHN window = (\d+), sinks = (\d+) -> (\d+) window-cache cells", out)
    assert m and int(m.group(3)) == 4 * span + 512 == 1792, out[-2000:]
    record_property("tight_cache_cells", int(m.group(3)))


def _kld(output: str) -> tuple[float, float]:
    mean = re.search(r"Mean\s+KLD:\s+([-0-9.e]+)", output)
    same = re.search(r"Same top p:\s+([0-9.]+)", output)
    assert mean and same, output[-3000:]
    return float(mean.group(1)), float(same.group(1))


@pytest.mark.parametrize("n_servers", [1, 2])
def test_rpc_devices_give_the_local_logits(tools, tiny, tmp_path, n_servers, record_property):
    text = tmp_path / "text.txt"
    text.write_text(TEXT)
    base = tmp_path / "local.kld"
    common = ["-m", tiny, "-f", text, "-c", 256, "-b", 256, "-t", 1, "-tb", 1, "-fa", "off"]
    _run([tools["llama-perplexity"], *common, "--kl-divergence-base", base], timeout=600)

    servers, endpoints = [], []
    try:
        for _ in range(n_servers):
            port = _free_port()
            servers.append(subprocess.Popen([str(tools["rpc-server"]), "-H", "127.0.0.1", "-p", str(port), "-t", "1"],
                                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
            endpoints.append(f"127.0.0.1:{port}")
        time.sleep(1.5)
        for s in servers:
            assert s.poll() is None, s.stdout.read()
        # the model's 2 blocks: one on the RPC server and one on the local CPU (-ngl 2 = the output + 1 block),
        # or one per RPC server (-ts 1,2 over the 3 units block 0, block 1, output)
        split = ["-ngl", 99, "-ts", "1,2"] if n_servers > 1 else ["-ngl", 2]
        proc = _run([tools["llama-perplexity"], *common, "--rpc", ",".join(endpoints), *split, "-lv", 4,
                     "--kl-divergence-base", base, "--kl-divergence"], timeout=600)
        out = proc.stdout + proc.stderr
        mean, same = _kld(out)
        record_property("rpc_mean_kld", mean)
        record_property("rpc_same_top", same)
        # every server holds an AHN layer: its weights, its window K/V and its recurrent state (the AHN op runs there)
        for endpoint in endpoints:
            for what in ("model", "KV", "RS"):
                assert f"[{endpoint}] {what} buffer size" in out, (endpoint, what, out[-3000:])
        on_cpu = "CPU KV buffer size" in out
        assert on_cpu == (n_servers == 1), out[-3000:]
        print(f"{n_servers} rpc-server(s){' + the local CPU' if on_cpu else ''}: mean KLD {mean:.3g} vs the local run, "
              f"same top token {same:.2f}%")

        # the default model (SmolLM2 + AHN): the same greedy text with its layers on the RPC servers
        from ahn_gguf.default_model import default_model_path

        gen = [tools["llama-completion"], "-m", default_model_path(), "-p", "The three primary colours are", "-n", 24,
               "--temp", 0, "-no-cnv", "-t", 1, "-tb", 1, "-c", 1024, "--no-display-prompt", "--no-warmup"]
        local = _run(gen, timeout=600, stdin=subprocess.DEVNULL).stdout
        remote = _run([*gen, "--rpc", ",".join(endpoints), "-ngl", 99, *(["-ts", "1,1"] if n_servers > 1 else [])],
                      timeout=600, stdin=subprocess.DEVNULL).stdout
        assert local.strip() and remote == local, (remote, local)
        # the same computation on another device: KL ~ float rounding of the F16 K/V cache and the op order
        assert mean <= 1e-4 and same >= 99.0, (mean, same)
    finally:
        for s in servers:
            s.terminate()
            try:
                s.wait(timeout=10)
            except subprocess.TimeoutExpired:
                s.kill()


@pytest.mark.parametrize("n_ctx", [2048, 16384])
def test_serve_engine_llama_server(tools, tiny, n_ctx, record_property):
    """`ahn-gguf serve --engine llama-server --parallel 2 --window 12 --memory-type f16`: llama.cpp's server
    with 2 slots and the AHN settings asked for, whose window cache is sized by the slots' S + W (+ one
    ubatch) and not by the context."""
    import sys

    port = _free_port()
    env = dict(os.environ, PATH=f"{tools['llama-server'].parent}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.Popen([sys.executable, "-m", "ahn_gguf.cli", "serve", str(tiny), "--engine", "llama-server", "--parallel", "2",
                             "--port", str(port), "--threads", "1", "--n-ctx", str(n_ctx), "--api-key", "k",
                             "--window", "12", "--memory-type", "f16", "--llama-server-args", "-lv 4"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/health", proc)
        body = {"prompt": [5] * 100, "n_predict": 4, "temperature": 0}
        assert httpx.post(f"{base}/completion", json=body, timeout=60).status_code == 401   # --api-key reaches llama-server
        r = httpx.post(f"{base}/completion", json=body, headers={"Authorization": "Bearer k"}, timeout=300)
        assert r.status_code == 200 and r.json()["tokens_predicted"] == 4
    finally:
        proc.terminate()
        out = proc.communicate(timeout=30)[0]
    m = re.search(r"AHN window = (\d+), sinks = (\d+) -> (\d+) window-cache cells", out)
    assert m, out[-3000:]
    # every override reached llama-server (the window, the sinks and the memory type: one --override-kv list)
    assert (int(m.group(1)), int(m.group(2))) == (12, 2) and "per-token gates (f16)" in out, out[-3000:]
    cells = int(m.group(3))
    record_property(f"llama_server_window_cells_nctx{n_ctx}", cells)
    # one unified cache: 2 slots x (S + W) + one ubatch (512), padded to 256 -- the same whatever -c is
    assert cells == 768, out[-2000:]
    assert f"n_ctx_seq = {2 * n_ctx}" in out or f"n_ctx_seq = {n_ctx}" in out


def test_bench_serve_quick(tools, tmp_path, record_property):
    """`ahn-gguf bench serve --quick` on the default model and its stock base: every point measured, the
    memory read from the servers' logs, the ratios and the report written (a benchmark, so no speed is
    asserted: its figures are in reports/bench-serve.md)."""
    import json
    import sys

    out = tmp_path / "reports"
    _run([sys.executable, "-m", "ahn_gguf.cli", "bench", "serve", "--quick", "--threads", "1",
          "--llama-server", tools["llama-server"], "--out", out], timeout=1200)
    result = json.loads((out / "bench-serve-quick.json").read_text())
    points = {(p["mode"], p["conversations"]): p for p in result["points"]}
    assert set(points) == {("stock", 1), ("ahn", 1), ("stock", 2), ("ahn", 2)}
    W, S, G = result["window"], result["sinks"], result["gen_tokens"]
    for (mode, n), p in points.items():
        assert p["prompt_tokens"] == n * 2 * W and p["generated_tokens"] == n * G
        assert p["prefill_tok_s"] > 0 and p["decode_tok_s"] > 0 and p["kv_bytes"] > 0
        # the decode phase finds the prompts in their slots: a stock slot re-evaluates ~1 token, an AHN slot what
        # follows its last context checkpoint (at most the prompt)
        assert p["reevaluated_tokens"] <= (2 * n if mode == "stock" else n * 2 * W), p
        if mode == "ahn":
            # the window cache: N x (S + W) + one ubatch, padded to 256 cells, and never more than the context
            # (-c N x (L + G + 8), padded to 256 too); one recurrent state per slot
            pad = lambda x: -(-x // 256) * 256
            assert p["window_cells"] == min(pad(n * (S + W) + 512), pad(n * (2 * W + G + 8))), p
            assert p["state_bytes"] > 0
        else:
            assert p["window_cells"] is None and p["state_bytes"] == 0
    assert len(result["ratios"]) == 2
    record_property("bench_serve_quick_ratios", json.dumps(result["ratios"]))
    assert "| stock | 2 |" in (out / "bench-serve-quick.md").read_text()
