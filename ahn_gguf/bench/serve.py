"""`ahn-gguf bench serve`: llama.cpp's own server, stock vs AHN, with many conversations at once.

The same base GGUF twice: as is (stock full attention) and with its AHN attached (sinks + window
+ AHN memory). For each mode, each number of concurrent conversations N (default 1, 4, 16) and
each context length L (default 8 x W and 16 x W), one llama-server process is started with N
slots, each slot sized for L + the generated tokens (`-c N x (L + G)`, one unified K/V buffer,
`-kvu`, as `ahn-gguf serve --engine llama-server` runs it). N clients then send N different
prompts of exactly L tokens (held-out-independent text: the Python documentation, tokenized by
the server itself) at the same moment: first for one token each (the prefill phase), then the same
prompts again for G greedy tokens each (the decode phase; the slots find their prompts cached).

Measured, per run:
- aggregate prefill tokens/s: the prompts' tokens / the time until the last of the N answers of
  the prefill phase (the server batches all slots' prompts together);
- aggregate decode tokens/s: the tokens streamed in the decode phase while every conversation was
  decoding (from the last first token to the first last token) / that span, on the client's clock;
- the tokens the decode phase re-evaluated (an AHN slot rolls back to its last context checkpoint);
- K/V + state bytes: what the server allocated, read from its log (llama_kv_cache's buffer, gates
  included for an AHN, + llama_memory_recurrent's state buffer), and per conversation (/ N);
- how many such conversations fit in 1 GiB of that memory;
- server peak RSS (VmHWM).

Ratios (AHN / stock) are taken between runs of the same N and L in one invocation. The machine's
load matters to absolute figures, not much to ratios; threads default to all CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from ahn_gguf import reports
from ahn_gguf.errors import AHNError
from ahn_gguf.reports import ReportFiles

from . import parsed_defaults

GIB = 1 << 30
STOCK, AHN = "stock", "ahn"

# llama-server's log lines (at -lv 4) with the memory it allocated
KV_BUFFER = re.compile(r"llama_kv_cache:\s+\S+ KV buffer size =\s+([\d.]+) MiB")
RS_BUFFER = re.compile(r"llama_memory_recurrent:\s+\S+ RS buffer size =\s+([\d.]+) MiB")
AHN_CELLS = re.compile(r"AHN window = (\d+), sinks = (\d+) -> (\d+) window-cache cells")


class BenchServeError(AHNError, RuntimeError):
    """The benchmark could not run (no llama-server, a server that does not start, a failed request)."""


def _llama_server(explicit: str | None) -> Path:
    if explicit:
        return Path(explicit)
    here = Path(sysconfig.get_path("scripts")) / "llama-server"
    if here.is_file():
        return here
    found = shutil.which("llama-server")
    if not found:
        raise BenchServeError("llama-server is not installed in this environment: run `ahn-gguf build --tools`")
    return Path(found)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _peak_rss(pid: int) -> int | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def http_json(method: str, url: str, body: dict | None = None, timeout: float = 600) -> dict:
    """One JSON request with the standard library (the GPU machine of `bench gpu` has no httpx)."""
    import urllib.error
    import urllib.request

    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return json.loads(r.read())
    except urllib.error.HTTPError as e:
        raise BenchServeError(f"{method} {url}: HTTP {e.code}: {e.read()[:500]!r}") from e
    except (urllib.error.URLError, OSError) as e:
        raise BenchServeError(f"{method} {url}: {e}") from e


class Server:
    """One llama-server process; its log goes to a file (read for the memory it allocated)."""

    def __init__(self, binary: Path, model: str, n_slots: int, ctx_per_slot: int, threads: int, log: Path,
                 extra: list[str]):
        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = log
        cmd = [str(binary), "-m", model, "--host", "127.0.0.1", "--port", str(self.port), "-np", str(n_slots),
               "-c", str(n_slots * ctx_per_slot), "-kvu", "-t", str(threads), "-tb", str(threads), "-lv", "4",
               "--cache-ram", "0", *extra]
        self.cmd = cmd
        self._out = open(log, "w")
        self.proc = subprocess.Popen(cmd, stdout=self._out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise BenchServeError(f"llama-server exited ({self.proc.returncode}):\n{self.log.read_text()[-3000:]}")
            try:
                if http_json("GET", f"{self.base}/health", timeout=2).get("status") == "ok":
                    return
            except BenchServeError:
                pass  # loading: 503, or not listening yet
            time.sleep(0.3)
        raise BenchServeError(f"llama-server did not answer within {timeout:.0f} s: {' '.join(self.cmd)}")

    def memory(self) -> dict:
        text = self.log.read_text(errors="replace")
        kv = sum(float(x) for x in KV_BUFFER.findall(text))
        rs = sum(float(x) for x in RS_BUFFER.findall(text))
        m = AHN_CELLS.search(text)
        if kv == 0:
            raise BenchServeError(f"no K/V buffer size in llama-server's log {self.log}")
        return {"kv_bytes": int(kv * (1 << 20)), "state_bytes": int(rs * (1 << 20)),
                "window_cells": int(m.group(3)) if m else None}

    def close(self) -> int | None:
        rss = _peak_rss(self.proc.pid)
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()
        return rss


def prompt_tokens(server: Server, n: int, length: int, text_source: str | None) -> list[list[int]]:
    """n different prompts of exactly `length` tokens, cut from the text source in order."""
    import httpx

    from ahn_gguf.data import load_source

    docs, _ = load_source(text_source)
    need, tokens, pieces = n * length, [], []
    for doc in docs:
        pieces.append(doc.text)
        if sum(map(len, pieces)) > need * 3 or doc is docs[-1]:
            r = httpx.post(f"{server.base}/tokenize", json={"content": "\n\n".join(pieces)}, timeout=600)
            r.raise_for_status()
            tokens += r.json()["tokens"]
            pieces = []
            if len(tokens) >= need:
                break
    if len(tokens) < need:
        raise BenchServeError(f"the text source holds {len(tokens)} tokens; {need} are needed")
    return [tokens[i * length:(i + 1) * length] for i in range(n)]


def _concurrent(server: Server, prompts: list[list[int]], n_predict: int) -> tuple[float, list[tuple[list[float], dict]]]:
    """All prompts at once (one streaming client thread each, `cache_prompt` on): the time from the start to
    the last response, and per request every token's arrival time and the final message."""
    import httpx

    results: list[Any] = [None] * len(prompts)

    def client(i: int) -> None:
        body = {"prompt": prompts[i], "n_predict": n_predict, "temperature": 0.0, "cache_prompt": True,
                "ignore_eos": True, "stream": True}
        stamps, final = [], None
        try:
            with httpx.stream("POST", f"{server.base}/completion", json=body, timeout=3600) as r:
                if r.status_code != 200:
                    raise BenchServeError(f"HTTP {r.status_code}: {r.read()[:500]!r}")
                for line in r.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    msg = json.loads(line[6:])
                    if msg.get("stop"):
                        final = msg
                    else:
                        stamps.append(time.perf_counter())
            if final is None:
                raise BenchServeError(f"request {i}: the stream ended without its final message")
            results[i] = (stamps, final)
        except (httpx.HTTPError, BenchServeError) as e:
            results[i] = BenchServeError(f"request {i}: {e}")

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    errors = [r for r in results if isinstance(r, Exception)]
    if errors:
        raise errors[0]
    return wall, results


def run_point(server: Server, prompts: list[list[int]], gen_tokens: int) -> dict:
    """Two phases, so that neither is measured while the other runs.

    prefill: all N prompts at once, one token each: all prompt tokens / the time until the last answer.
    decode: the same N prompts again, `gen_tokens` each. The server finds each prompt in its slot (a stock
    slot keeps the whole prefix; an AHN slot rolls back to its last context checkpoint and evaluates the
    few hundred tokens after it), so every conversation decodes at about the same time: the tokens that
    arrived while all N were decoding (from the last first token to the first last token) / that span."""
    wall, first = _concurrent(server, prompts, 1)
    timings = [f["timings"] for _, f in first]
    prompt_n = sum(t["prompt_n"] for t in timings)
    if prompt_n < sum(map(len, prompts)) - len(prompts):
        raise BenchServeError(f"the server evaluated {prompt_n} prompt tokens of {sum(map(len, prompts))}: "
                              "a prompt was truncated or cached")
    _, second = _concurrent(server, prompts, gen_tokens)
    stamps = [st for st, _ in second]
    if any(len(st) < 2 for st in stamps):
        raise BenchServeError("a conversation streamed fewer than 2 tokens: raise --gen-tokens")
    all_decoding = max(st[0] for st in stamps)
    first_done = min(st[-1] for st in stamps)
    if first_done <= all_decoding:
        raise BenchServeError("one conversation finished before another started decoding: raise --gen-tokens")
    in_span = sum(sum(1 for x in st if all_decoding < x <= first_done) for st in stamps)
    t2 = [f["timings"] for _, f in second]
    return {
        "prefill_wall_s": wall,
        "prompt_tokens": prompt_n,
        "generated_tokens": sum(t["predicted_n"] for t in t2),
        "reevaluated_tokens": sum(t["prompt_n"] for t in t2),
        "prefill_tok_s": prompt_n / wall,
        "decode_tok_s": in_span / (first_done - all_decoding),
    }


def run(args: argparse.Namespace) -> dict:
    from ahn_gguf.gguf_io.check import check_gguf_file

    binary = _llama_server(args.llama_server)
    ahn_model = args.ahn or str(_default_ahn())
    stock_model = args.stock or str(_default_stock())
    info = check_gguf_file(ahn_model)
    if info.ahn_window is None:
        raise BenchServeError(f"{ahn_model} has no AHN")
    W, S = args.window or info.ahn_window, info.ahn_sinks
    multiples = [int(x) for x in str(args.multiples).split(",")]
    convs = [int(x) for x in str(args.conversations).split(",")]
    G = args.gen_tokens
    result: dict = {"stock_model": os.path.basename(stock_model), "ahn_model": os.path.basename(ahn_model),
                    "window": W, "sinks": S, "gen_tokens": G, "threads": args.threads, "multiples": multiples,
                    "conversations": convs, "llama_server": str(binary), "server_args": args.server_args,
                    "window_overridden": bool(args.window), "points": []}
    prompts_cache: dict[tuple[int, int], list[list[int]]] = {}
    with tempfile.TemporaryDirectory(prefix="ahn-bench-serve-") as tmp:
        for k in multiples:
            L = k * W
            for n in convs:
                for mode, model in ((STOCK, stock_model), (AHN, ahn_model)):
                    extra = (["--override-kv", f"{info.arch}.ahn.window=int:{W}"] if mode == AHN and args.window else []) + \
                        shlex.split(args.server_args)
                    srv = Server(binary, model, n, L + G + 8, args.threads, Path(tmp) / f"{mode}-{n}-{L}.log", extra=extra)
                    try:
                        srv.wait_ready()
                        if (n, L) not in prompts_cache:
                            prompts_cache[(n, L)] = prompt_tokens(srv, n, L, args.text)
                        point = run_point(srv, prompts_cache[(n, L)], G)
                        mem = srv.memory()
                    finally:
                        rss = srv.close()
                    per_conv = (mem["kv_bytes"] + mem["state_bytes"]) / n
                    point.update(mode=mode, conversations=n, multiple=k, context=L, rss_bytes=rss, **mem,
                                 memory_per_conversation=per_conv, conversations_per_gib=int(GIB // per_conv))
                    result["points"].append(point)
                    print(f"{mode:5s} N={n:2d} L={L:6d}: prefill {point['prefill_tok_s']:8.1f} tok/s, decode "
                          f"{point['decode_tok_s']:7.1f} tok/s, K/V+state {per_conv / 2**20:7.2f} MiB/conv "
                          f"({point['conversations_per_gib']} per GiB), RSS {(rss or 0) / 2**20:.0f} MiB", flush=True)
    result["ratios"] = ratios(result["points"])
    result["targets"] = targets(result)
    return result


def ratios(points: list[dict]) -> list[dict]:
    out = []
    by = {(p["mode"], p["conversations"], p["context"]): p for p in points}
    for (mode, n, L), a in sorted(by.items()):
        s = by.get((STOCK, n, L))
        if mode != AHN or s is None:
            continue
        out.append({"conversations": n, "context": L, "multiple": a["multiple"],
                    "prefill": a["prefill_tok_s"] / s["prefill_tok_s"],
                    "decode": a["decode_tok_s"] / s["decode_tok_s"],
                    "conversations_per_gib": a["conversations_per_gib"] / max(1, s["conversations_per_gib"]),
                    "memory": a["memory_per_conversation"] / s["memory_per_conversation"],
                    "rss": (a["rss_bytes"] / s["rss_bytes"]) if a["rss_bytes"] and s["rss_bytes"] else None})
    return out


def targets(result: dict) -> list[dict]:
    """The issue's targets, at 16 x W: >= 5x conversations per GiB; aggregate decode >= 2x at 16 conversations."""
    out = []
    for r in result["ratios"]:
        if r["multiple"] != 16:
            continue
        out.append({"what": f"conversations per GiB at 16 x W, N = {r['conversations']}", "target": 5.0,
                    "measured": r["conversations_per_gib"], "met": r["conversations_per_gib"] >= 5.0})
        if r["conversations"] == 16:
            out.append({"what": "aggregate decode at 16 x W, 16 conversations", "target": 2.0,
                        "measured": r["decode"], "met": r["decode"] >= 2.0})
    return out


def markdown(result: dict) -> str:
    W, S = result["window"], result["sinks"]
    lines = [
        "# llama-server: stock vs AHN, many conversations at once",
        "",
        f"`ahn-gguf bench serve`: {result['stock_model']} (stock) vs {result['ahn_model']} (S = {S}, W = {W}), "
        f"llama.cpp's llama-server with N slots (`-kvu`, `-c N x (L + {result['gen_tokens']})`), N clients at once, "
        f"each a different prompt of exactly L tokens, first for 1 token (prefill phase), then again for "
        f"{result['gen_tokens']} greedy tokens (decode phase, the prompts found in the slots), {result['threads']} threads. "
        "One server process per row.",
        "Prefill: all prompt tokens / the time until the last prefill-phase answer. Decode: the tokens streamed "
        "while all N conversations were decoding / that span (client clock); re-evaluated: the prompt tokens the "
        "decode phase evaluated again (an AHN slot rolls back to its last context checkpoint). K/V + state: what the server allocated (its log: the K/V buffer, "
        "gates included, + the recurrent state buffer) per conversation; per GiB: how many such conversations "
        "1 GiB of it holds. RSS: the server's peak resident memory (model weights included).",
        f"llama-server options added: `{result.get('server_args', '')}`."
        + (f" The AHN's window was set to W = {W} for this run (`--override-kv`; the GGUF's own differs): speed and "
           "memory depend on W, not on what the AHN was trained for." if result.get("window_overridden") else ""),
        "",
        "| mode | N | L | prefill tok/s | decode tok/s | re-evaluated | K/V + state per conv (MiB) | convs per GiB | peak RSS (MiB) |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for p in result["points"]:
        lines.append(f"| {p['mode']} | {p['conversations']} | {p['context']} ({p['multiple']}W) | {p['prefill_tok_s']:.1f} | "
                     f"{p['decode_tok_s']:.1f} | {p['reevaluated_tokens']} | {p['memory_per_conversation'] / 2**20:.2f} | {p['conversations_per_gib']} | "
                     f"{(p['rss_bytes'] or 0) / 2**20:.0f} |")
    lines += ["", "## AHN / stock, same N and L, same run", "",
              "| N | L | prefill | decode | convs per GiB | memory per conv | peak RSS |",
              "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in result["ratios"]:
        lines.append(f"| {r['conversations']} | {r['context']} ({r['multiple']}W) | {r['prefill']:.2f}x | {r['decode']:.2f}x | "
                     f"{r['conversations_per_gib']:.2f}x | {r['memory']:.3f}x | "
                     f"{'' if r['rss'] is None else format(r['rss'], '.2f') + 'x'} |")
    if result["targets"]:
        lines += ["", "## Targets", "", "| target | wanted | measured | met |", "| --- | ---: | ---: | --- |"]
        for t in result["targets"]:
            lines.append(f"| {t['what']} | >= {t['target']:.1f}x | {t['measured']:.2f}x | {'yes' if t['met'] else 'no'} |")
    lines += ["", "What bounds it: an AHN slot holds S + W cells plus its state and gates whatever L is, and the "
              "slots share one ubatch of window cells (so N = 1 pays the ubatch alone); a stock slot holds L + G "
              "cells. Decode attends over S + W cells instead of L; at small models the per-token matmuls, which "
              "both modes pay alike, bound the decode ratio.", ""]
    return "\n".join(lines)


def write_report(result: dict, out_dir: Path, stem: str) -> ReportFiles:
    return reports.write_report(out_dir, stem, result, lambda _names: markdown(result))


def _default_ahn() -> Path:
    from ahn_gguf.default_model import default_model_path

    return default_model_path()


def _default_stock() -> Path:
    from ahn_gguf.smollm2 import gguf_path

    return gguf_path()


# --- command line --------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--stock", default=None, help="the stock base GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--ahn", default=None, help="the same base with its AHN attached (default: the embedded default model)")
    p.add_argument("--conversations", default="1,4,16", help="concurrent conversations N, comma-separated (default 1,4,16)")
    p.add_argument("--multiples", default="8,16", help="context lengths L as multiples of the AHN's window W (default 8,16)")
    p.add_argument("--gen-tokens", type=int, default=32, help="greedy tokens generated per conversation (default 32)")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="llama-server -t / -tb (default: all CPUs)")
    p.add_argument("--window", type=int, default=None,
                   help="the AHN's window W for this run (--override-kv; default: the GGUF's); L is a multiple of it")
    p.add_argument("--server-args", default="--poll 0", metavar="ARGS",
                   help="more llama-server options, as one string (default \"--poll 0\": compute threads sleep instead of "
                        "spinning between steps, so that the server's HTTP thread and the clients get the CPU)")
    p.add_argument("--text", default=None, help="text of the prompts: a folder of text files (default: the Python 3.11 docs)")
    p.add_argument("--llama-server", default=None, help="the llama-server binary (default: this environment's, from "
                   "`ahn-gguf build --tools`)")
    p.add_argument("--quick", action="store_true", help="N = 1,2 at 2 x W, 8 tokens: validates the pipeline in a minute")
    p.add_argument("--out", default="reports", help="folder of the report (default reports/)")
    p.add_argument("--name", default=None, help="file stem (default bench-serve, bench-serve-quick with --quick)")


def default_args(**overrides: Any) -> argparse.Namespace:
    return parsed_defaults(add_arguments, "serve", overrides)


def main(args: argparse.Namespace) -> int:
    if args.quick:
        args.conversations, args.multiples, args.gen_tokens = "1,2", "2", 8
    try:
        result = run(args)
    except BenchServeError as e:
        print(f"ahn-gguf bench serve: error: {e}", file=sys.stderr)
        return 1
    md, js = write_report(result, Path(args.out), args.name or ("bench-serve-quick" if args.quick else "bench-serve"))
    print(f"wrote {md} and {js}")
    for t in result["targets"]:
        print(f"target {t['what']}: {t['measured']:.2f}x (>= {t['target']:.1f}x: {'met' if t['met'] else 'NOT met'})")
    return 0
