"""`ahn-gguf bench gpu`: the paper's setting on one NVIDIA GPU, as one prepared run.

Two halves, because the GPU machine has no network and receives at most 64 MiB:

`ahn-gguf bench gpu --pack DIR` (here, from a checkout): writes DIR/llama.cpp-ahn.tar.xz, the
patched llama.cpp tree exactly as `ahn-gguf build` prepares it (both patch series applied, native/
copied into ggml-cpu and ggml-cuda), without what the build does not read (models/, docs/, other
backends: ~6 MB), the tiny parity fixtures (all three variants, head size 64 and 128: built here,
where the converter's dependencies are), and a manifest with their sha256.

`python -m ahn_gguf.bench.gpu --from-pack DIR --out OUT` (there: stdlib + numpy only, no pip):
1. builds llama-server, llama-perplexity and test-backend-ops with `GGML_CUDA=ON` for the GPU's
   own architecture only (nvidia-smi's compute capability), flash attention kernels included;
2. CUDA correctness: `test-backend-ops -o AHN_MEMORY,AHN_MEMORY_CACHE_FUSION -b CUDA0` (the op, and the
   op + the copy of its states into a cache, against the CPU backend),
   and whole-model parity on every fixture: llama-perplexity's KL divergence and top-1 agreement
   of the GPU run (all layers offloaded; fused op, then LLAMA_AHN_COMPOSED=1) and of the CPU copy
   state path (LLAMA_AHN_STATE_COPY=1) against the CPU in-place run;
3. writes a Qwen2.5-3B-shaped model twice, stock `qwen2` and `qwen2ahn` + AHN-GDN, the same random
   weights (seeded; Q4_K for every matrix, F32 norms and AHN tensors; a synthetic vocabulary):
   2 GB cannot be carried, and the speed of a model does not depend on its weights' values;
4. measures, one llama-server process per mode (all layers offloaded, flash attention on, one
   slot): stock full attention, sinks + window (S = 128, W = 32,640: the AHN file with its memory
   disabled), and + AHN, at 8k, 32k, 64k and 128k tokens: prefill tokens/s and decode tokens/s
   from the server's own timings, and the GPU memory it allocated for K/V + state (its log);
5. writes OUT/bench-gpu.json and OUT/bench-gpu.md. Back here, `ahn-gguf bench gpu --from-json
   OUT/bench-gpu.json` rewrites the report with its plot into reports/.

The same pipeline runs on the CPU (`--cpu-check`: no build, an installed llama-server, a tiny
shape and short lengths), which is how tests/bench/test_bench_gpu.py checks everything but CUDA.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ahn_gguf import reports
from ahn_gguf.atomic import atomic_output, write_text
from ahn_gguf.bench.formulas import QWEN25, Shape
from ahn_gguf.build.pins import sha256_file
from ahn_gguf.errors import AHNError
from ahn_gguf.reports import ReportFiles, save_figure

PACK_SOURCE = "llama.cpp-ahn.tar.xz"
PACK_MANIFEST = "manifest.json"
PACK_FIXTURES = "parity"
# what the CUDA build never reads: left out of the pack (the tree keeps its CMake files)
PACK_EXCLUDE = ("models", "docs", "media", "benches", ".devops",
                ".github", "ggml/src/ggml-sycl", "ggml/src/ggml-vulkan", "ggml/src/ggml-opencl", "ggml/src/ggml-cann",
                "ggml/src/ggml-musa", "ggml/src/ggml-hip", "ggml/src/ggml-webgpu", "ggml/src/ggml-metal",
                "ggml/src/ggml-zdnn", "ggml/src/ggml-kompute", "ggml/src/ggml-hexagon", "ggml/src/ggml-openvino",
                "ggml/src/ggml-zendnn", "vendor/cpp-httplib/tests")
BUILD_TARGETS = ("llama-server", "llama-perplexity", "test-backend-ops")
FIXTURES = [(v, d) for v in ("GatedDeltaNet", "DeltaNet", "Mamba2") for d in (64, 128)]

PAPER_SINKS, PAPER_WINDOW = 128, 32640
LENGTHS = (8192, 32768, 65536, 131072)
STOCK, WINDOW, AHN = "stock", "window", "ahn"
MODES = (STOCK, WINDOW, AHN)


# the shapes: formulas.Shape (the paper's formulas use the same one); Qwen2.5's RoPE base and RMSNorm eps
QWEN25_3B = QWEN25["Qwen2.5-3B"]
# the CPU check: every dimension a multiple of Q4_K's 256-weight block where the block needs it
TINY = Shape(n_layer=2, D=256, H=4, H_kv=2, d=64, ffn=512, vocab=1024, tied=True)
SHAPE_NAMES = {QWEN25_3B: "Qwen2.5-3B", TINY: "tiny"}
ROPE_BASE, RMS_EPS = 1e6, 1e-6


class BenchGPUError(AHNError, RuntimeError):
    """The GPU run could not go on (no GPU, a failed build, a server that does not start)."""


# --- a minimal GGUF writer (stdlib + numpy: the GPU machine has no gguf package) ------------------

GGUF_ALIGN = 32
T_UINT32, T_INT32, T_FLOAT32, T_BOOL, T_STRING, T_ARRAY = 4, 5, 6, 7, 8, 9
GGML_F32, GGML_Q4_K = 0, 12
QK_K, Q4_K_BYTES = 256, 144


def _s(x: str) -> bytes:
    b = x.encode()
    return struct.pack("<Q", len(b)) + b


def _kv(key: str, value: Any) -> bytes:
    if isinstance(value, bool):
        return _s(key) + struct.pack("<IB", T_BOOL, value)
    if isinstance(value, int):
        return _s(key) + struct.pack("<II", T_UINT32, value)
    if isinstance(value, float):
        return _s(key) + struct.pack("<If", T_FLOAT32, value)
    if isinstance(value, str):
        return _s(key) + struct.pack("<I", T_STRING) + _s(value)
    if isinstance(value, tuple) and value[0] == "i32":
        return _s(key) + struct.pack("<IIQ", T_ARRAY, T_INT32, len(value[1])) + np.asarray(value[1], "<i4").tobytes()
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return _s(key) + struct.pack("<II", T_ARRAY, T_STRING) + struct.pack("<Q", len(value)) + b"".join(map(_s, value))
    raise TypeError(f"{key}: unsupported value {type(value)}")


def random_q4_k(n: int, rng: np.random.Generator) -> bytes:
    """n weights (a multiple of 256) as Q4_K blocks with random 4-bit values and 6-bit scales, and
    fixed, small super-block scales (d = dmin = 2^-12, so |w| < 0.25: finite activations)."""
    blocks = rng.integers(0, 256, size=(n // QK_K, Q4_K_BYTES), dtype=np.uint8)
    scale = np.frombuffer(np.float16(2.0 ** -12).tobytes() * 2, np.uint8)
    blocks[:, :4] = scale
    return blocks.tobytes()


def _tensors(shape: Shape, ahn: bool, rng: np.random.Generator):
    """(name, ne, ggml type, bytes) of every tensor: the qwen2 layout, plus AHN-GDN per layer."""
    D, H, Hkv, d, F = shape.D, shape.H, shape.H_kv, shape.d, shape.ffn

    def q(name, *ne):
        return name, ne, GGML_Q4_K, random_q4_k(int(np.prod(ne)), rng)

    def f(name, *ne, value=None, scale=0.02):
        n = int(np.prod(ne))
        x = np.full(n, value, "<f4") if value is not None else (rng.standard_normal(n) * scale).astype("<f4")
        return name, ne, GGML_F32, x.tobytes()

    yield q("token_embd.weight", D, shape.vocab)
    yield f("output_norm.weight", D, value=1.0)
    for i in range(shape.n_layer):
        p = f"blk.{i}."
        yield f(p + "attn_norm.weight", D, value=1.0)
        yield q(p + "attn_q.weight", D, H * d)
        yield f(p + "attn_q.bias", H * d)
        yield q(p + "attn_k.weight", D, Hkv * d)
        yield f(p + "attn_k.bias", Hkv * d)
        yield q(p + "attn_v.weight", D, Hkv * d)
        yield f(p + "attn_v.bias", Hkv * d)
        yield q(p + "attn_output.weight", H * d, D)
        yield f(p + "ffn_norm.weight", D, value=1.0)
        yield q(p + "ffn_gate.weight", D, F)
        yield q(p + "ffn_up.weight", D, F)
        yield q(p + "ffn_down.weight", F, D)
        if ahn:
            yield f(p + "ahn_b.weight", D, H)
            yield f(p + "ahn_a.weight", D, H)
            yield f(p + "ahn_a_log", H, value=0.0)
            yield f(p + "ahn_dt_bias", H, value=0.0)
            yield f(p + "ahn_g.weight", D, H)
            yield f(p + "ahn_norm.weight", d, value=1.0)
            yield f(p + "ahn_out.weight", d, d, H)


def write_shaped_model(path: Path, shape: Shape, ahn: bool, seed: int = 0, window: int = PAPER_WINDOW,
                       sinks: int = PAPER_SINKS) -> Path:
    """A GGUF of `shape` with random weights (the same for the stock and the AHN file: one seed), written
    atomically. A synthetic byte-level vocabulary of shape.vocab tokens (256 bytes + numbered pieces)."""
    arch = "qwen2ahn" if ahn else "qwen2"
    from ahn_gguf import constants as C

    tokens = [f"<0x{i:02X}>" for i in range(256)] + [f"tok{i}" for i in range(256, shape.vocab - 2)] + \
             ["<|endoftext|>", "<|im_end|>"]
    kv = {
        "general.architecture": arch,
        "general.name": f"{SHAPE_NAMES.get(shape, 'custom')}-shaped random {'AHN-GDN' if ahn else 'stock'} (ahn-gguf bench gpu)",
        f"{arch}.context_length": 131072,
        f"{arch}.embedding_length": shape.D,
        f"{arch}.block_count": shape.n_layer,
        f"{arch}.feed_forward_length": shape.ffn,
        f"{arch}.attention.head_count": shape.H,
        f"{arch}.attention.head_count_kv": shape.H_kv,
        f"{arch}.attention.layer_norm_rms_epsilon": RMS_EPS,
        f"{arch}.rope.freq_base": ROPE_BASE,
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "qwen2",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": ("i32", [1] * (shape.vocab - 2) + [3, 3]),
        "tokenizer.ggml.merges": ["t o", "to k"],
        "tokenizer.ggml.bos_token_id": shape.vocab - 2,
        "tokenizer.ggml.eos_token_id": shape.vocab - 1,
    }
    if ahn:
        kv.update({C.KEY_VARIANT.format(arch=arch): "GatedDeltaNet", C.KEY_WINDOW.format(arch=arch): window,
                   C.KEY_SINKS.format(arch=arch): sinks, C.KEY_LAYERS.format(arch=arch): ("i32", [1] * shape.n_layer),
                   C.KEY_NORM_EPS.format(arch=arch): 1e-5})
    rng = np.random.default_rng(seed)
    infos, offset = [], 0
    tensors = list(_tensors(shape, False, rng))
    if ahn:  # the same base weights (drawn first, in the same order), then the AHN's
        names = {t[0] for t in tensors}
        tensors += [t for t in _tensors(shape, True, np.random.default_rng(seed + 1)) if t[0] not in names]
    for name, ne, ggml_type, data in tensors:
        infos.append(_s(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne) +
                     struct.pack("<IQ", ggml_type, offset))
        offset += -(-len(data) // GGUF_ALIGN) * GGUF_ALIGN
    header = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(_kv(k, v) for k, v in kv.items()) + b"".join(infos)
    with atomic_output(path) as tmp, open(tmp, "wb") as out:
        out.write(header + b"\0" * (-len(header) % GGUF_ALIGN))
        for _, _, _, data in tensors:
            out.write(data + b"\0" * (-len(data) % GGUF_ALIGN))
    return path


# --- pack (here) ------------------------------------------------------------------------------------


def pack(out_dir: Path) -> dict:
    """The carried inputs of the GPU run (see the module docstring); returns the manifest."""
    from ahn_gguf.build.llama_cpp import BuildConfig, build_key, prepare_source

    root = Path(__file__).resolve().parents[2]
    if not (root / "tests" / "helpers" / "tiny_model.py").is_file():
        raise BenchGPUError("--pack runs from a checkout (it builds the parity fixtures with tests/helpers/tiny_model.py)")
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = BuildConfig(cuda=True)
    key = build_key(cfg)
    with tempfile.TemporaryDirectory(prefix="ahn-gpu-pack-") as tmp:
        src = prepare_source(Path(tmp), cfg, key) / "vendor" / "llama.cpp"
        skip = {src / e for e in PACK_EXCLUDE}

        def keep(info: tarfile.TarInfo) -> tarfile.TarInfo | None:
            p = src.parent / info.name
            return None if any(p == s or s in p.parents for s in skip) else info

        archive = out_dir / PACK_SOURCE
        with atomic_output(archive) as part, tarfile.open(part, "w:xz", preset=6) as tf:
            tf.add(src, arcname="llama.cpp", filter=keep)
    fixtures = out_dir / PACK_FIXTURES
    fixtures.mkdir(exist_ok=True)
    # the checkout's root on the path for the import only: tests/ is a package there, not in the wheel
    sys.path.insert(0, str(root))
    try:
        from tests.helpers.tiny_model import build_tiny_ahn_gguf
    finally:
        sys.path.remove(str(root))
    for variant, head_dim in FIXTURES:
        build_tiny_ahn_gguf(fixtures / f"tiny-{variant}-{head_dim}.gguf", variant=variant, head_dim=head_dim)
    files = sorted(p for p in out_dir.rglob("*") if p.is_file() and p.name != PACK_MANIFEST)
    manifest = {"build_key": key, "files": {p.relative_to(out_dir).as_posix(): {"sha256": sha256_file(p), "bytes": p.stat().st_size}
                                            for p in files}}
    total = sum(f["bytes"] for f in manifest["files"].values())
    manifest["total_bytes"] = total
    write_text(out_dir / PACK_MANIFEST, json.dumps(manifest, indent=2) + "\n")
    print(f"packed {len(files)} files, {total / 2**20:.1f} MiB, into {out_dir} (build key {key})")
    return manifest


def check_pack(pack_dir: Path) -> dict:
    manifest = json.loads((pack_dir / PACK_MANIFEST).read_text())
    for rel, meta in manifest["files"].items():
        p = pack_dir / rel
        if not p.is_file() or sha256_file(p) != meta["sha256"]:
            raise BenchGPUError(f"{p}: missing or not the packed file (sha256 differs)")
    return manifest


# --- build (there) ----------------------------------------------------------------------------------


def gpu_arch() -> str:
    """The first GPU's compute capability as CMAKE_CUDA_ARCHITECTURES wants it (9.0 -> 90)."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap,name", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=60).stdout.strip().splitlines()
    except (OSError, subprocess.TimeoutExpired) as e:
        raise BenchGPUError(f"nvidia-smi: {e}") from e
    if not out:
        raise BenchGPUError("nvidia-smi lists no GPU")
    return out[0].split(",")[0].strip().replace(".", "")


def build_command(src: Path, build: Path, arch: str | None, jobs: int) -> list[list[str]]:
    from ahn_gguf.build.llama_cpp import cpu_cmake_args

    gen = ["-G", "Ninja"] if shutil.which("ninja") else []
    cuda = ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={arch}"] if arch else []
    configure = ["cmake", "-S", str(src), "-B", str(build), *gen, "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
                 "-DLLAMA_BUILD_TESTS=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_EXAMPLES=OFF",
                 "-DLLAMA_BUILD_APP=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_CURL=OFF",
                 "-DLLAMA_OPENSSL=OFF", *cpu_cmake_args(), *cuda]
    return [configure, ["cmake", "--build", str(build), "-j", str(jobs), "--target", *BUILD_TARGETS]]


def build_tools(pack_dir: Path, work: Path, arch: str | None, jobs: int, log: Path) -> tuple[Path, float]:
    t0 = time.time()
    with tarfile.open(pack_dir / PACK_SOURCE) as tf:
        tf.extractall(work, filter="data")
    src, build = work / "llama.cpp", work / "build"
    with open(log, "w") as out:
        for cmd in build_command(src, build, arch, jobs):
            print("+ " + " ".join(cmd), flush=True)
            proc = subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT)
            if proc.returncode != 0:
                raise BenchGPUError(f"build failed ({proc.returncode}): {' '.join(cmd)}\n" + log.read_text()[-4000:])
    return build / "bin", time.time() - t0


# --- correctness (there) ----------------------------------------------------------------------------


def backend_ops(bin_dir: Path) -> dict:
    proc = subprocess.run([str(bin_dir / "test-backend-ops"), "-o", "AHN_MEMORY,AHN_MEMORY_CACHE_FUSION", "-b", "CUDA0"],
                          capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    import re

    m = re.search(r"(\d+)/(\d+) tests passed", out)
    return {"returncode": proc.returncode, "passed": int(m.group(1)) if m else 0, "total": int(m.group(2)) if m else 0,
            "ok": proc.returncode == 0 and bool(m) and m.group(1) == m.group(2), "tail": out[-1500:]}


PARITY_TEXT = ("The memory keeps a window of recent tokens exactly and folds every older token into a fixed-size "
               "state, so a long conversation costs the same memory as a short one. ") * 40


def _kld(output: str) -> tuple[float, float]:
    """Mean KL divergence and same-top-token percentage from llama-perplexity's output.

    The summary at the end is preferred. llama.cpp's logger is a leaked singleton whose queue is not
    flushed at exit (common/log.cpp, `common_log_main`), so on a slow machine the summary's last
    lines can be lost (a CI run lost everything after "0.1% KLD"). The per-chunk rows carry the
    same running totals and are printed while the run goes on: the row of the last chunk is used
    when the summary is incomplete, and only that row (an earlier one would be a partial figure).
    """
    import re

    mean = re.search(r"^Mean\s+KLD:\s+([-0-9.e]+)", output, re.M)
    same = re.search(r"^Same top p:\s+([0-9.]+)", output, re.M)
    if mean and same:
        return float(mean.group(1)), float(same.group(1))
    chunks = re.search(r"kl_divergence: computing over (\d+) chunks", output)
    num = r"[-+0-9.eEinfa]+"
    pm = r"\s*±\s*"
    row = (re.search(rf"^\s*{chunks.group(1)}\s+{num}{pm}{num}\s+{num}{pm}{num}\s+({num}){pm}{num}\s+{num}{pm}{num}\s*%"
                     rf"\s+({num}){pm}{num}\s*%\s*$", output, re.M) if chunks else None)
    if row:
        return float(row.group(1)), float(row.group(2))
    raise BenchGPUError("no KL divergence in llama-perplexity's output (neither its summary nor its last chunk's row):\n"
                        + output[-2000:])


def parity(bin_dir: Path, fixtures: list[Path], work: Path, gpu: bool, threads: int) -> list[dict]:
    """Per fixture: KL and top-1 agreement of each other path against the CPU in-place run (its logits saved)."""
    text = work / "parity.txt"
    text.write_text(PARITY_TEXT)
    rows = []
    for fx in fixtures:
        base = work / f"{fx.stem}.kld"
        common = [str(bin_dir / "llama-perplexity"), "-m", str(fx), "-f", str(text), "-c", "256", "-b", "64",
                  "-t", str(threads), "-fa", "off", "--kl-divergence-base", str(base)]
        ref = subprocess.run([*common, "-ngl", "0"], capture_output=True, text=True, timeout=600)
        if ref.returncode != 0:
            raise BenchGPUError(f"{fx.name}: the CPU reference run failed:\n{ref.stderr[-2000:]}")
        paths = [("CPU, state copy (LLAMA_AHN_STATE_COPY=1)", "0", {"LLAMA_AHN_STATE_COPY": "1"})]
        if gpu:
            paths += [("GPU, fused op", "99", {}), ("GPU, composed (LLAMA_AHN_COMPOSED=1)", "99", {"LLAMA_AHN_COMPOSED": "1"})]
        for label, ngl, env in paths:
            proc = subprocess.run([*common, "-ngl", ngl, "--kl-divergence"], capture_output=True, text=True, timeout=600,
                                  env=dict(os.environ, **env))
            if proc.returncode != 0:
                raise BenchGPUError(f"{fx.name} {label}: llama-perplexity failed:\n{proc.stderr[-2000:]}")
            mean, same = _kld(proc.stdout + proc.stderr)
            rows.append({"model": fx.stem, "path": label, "mean_kld": mean, "same_top_pct": same})
    return rows


# --- speed (there) ----------------------------------------------------------------------------------


def measure_mode(server_bin: Path, model: Path, mode: str, lengths: list[int], gen: int, ngl: int, log: Path,
                 threads: int, seed: int = 0) -> dict:
    """One llama-server process: a prompt of each length (random token ids), then `gen` greedy tokens."""
    from ahn_gguf.bench.serve import Server, http_json

    extra = ["-ngl", str(ngl), "-fa", "on"]
    if mode == WINDOW:
        extra += ["--override-kv", "qwen2ahn.ahn.memory_enabled=bool:false"]
    srv = Server(server_bin, str(model), 1, max(lengths) + gen + 64, threads, log, extra)
    rng = np.random.default_rng(seed)
    points = []
    try:
        srv.wait_ready(timeout=900)
        vocab = int(http_json("GET", f"{srv.base}/props").get("n_vocab") or 256)
        for L in lengths:
            prompt = rng.integers(0, min(vocab, 1 << 16) - 2, size=L).tolist()
            body = {"prompt": prompt, "n_predict": gen, "temperature": 0.0, "cache_prompt": False, "ignore_eos": True}
            t = http_json("POST", f"{srv.base}/completion", body, timeout=3600)["timings"]
            if t["prompt_n"] < L - 1:
                raise BenchGPUError(f"{mode} at {L}: the server evaluated {t['prompt_n']} of {L} prompt tokens")
            points.append({"mode": mode, "tokens": L, "prefill_tok_s": t["prompt_per_second"],
                           "decode_tok_s": t["predicted_per_second"], "prompt_n": t["prompt_n"], "predicted_n": t["predicted_n"]})
            print(f"{mode:6s} {L:7d} tokens: prefill {t['prompt_per_second']:9.1f} tok/s, decode "
                  f"{t['predicted_per_second']:7.1f} tok/s", flush=True)
        mem = srv.memory()
    finally:
        srv.close()
    return {"points": points, **mem}


def run(args: argparse.Namespace) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="ahn-gpu-", dir=args.work))
    result: dict = {"started": time.strftime("%Y-%m-%d %H:%M:%S"), "cpu_check": bool(args.cpu_check)}
    t_start = time.time()
    shape = TINY if args.cpu_check else QWEN25_3B
    lengths = [int(x) for x in str(args.lengths).split(",")] if args.lengths else \
        ([512, 1024] if args.cpu_check else list(LENGTHS))
    window, sinks = (args.window, args.sinks) if args.window else ((128, 4) if args.cpu_check else (PAPER_WINDOW, PAPER_SINKS))
    if args.cpu_check:
        bin_dir = Path(args.bin_dir) if args.bin_dir else Path(sys.executable).parent
        result["build"] = {"skipped": "--cpu-check uses the installed llama.cpp programs", "bin_dir": str(bin_dir)}
        gpu = False
    else:
        pack_dir = Path(args.from_pack)
        manifest = check_pack(pack_dir)
        arch = gpu_arch()
        bin_dir, seconds = build_tools(pack_dir, work, arch, args.jobs or os.cpu_count() or 4, out / "build.log")
        result["build"] = {"arch": arch, "seconds": seconds, "build_key": manifest["build_key"]}
        gpu = True
        try:
            result["gpu"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                                           capture_output=True, text=True, timeout=60).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            result["gpu"] = "unknown"
    print(f"build: {result['build']}", flush=True)
    if gpu:
        result["backend_ops"] = backend_ops(bin_dir)
        print(f"test-backend-ops AHN_MEMORY, AHN_MEMORY_CACHE_FUSION on CUDA0: {result['backend_ops']['passed']}/{result['backend_ops']['total']}", flush=True)
    fixtures = sorted((Path(args.from_pack) / PACK_FIXTURES).glob("*.gguf")) if args.from_pack else \
        [Path(p) for p in (args.fixtures or [])]
    result["parity"] = parity(bin_dir, fixtures, work, gpu, args.threads) if fixtures else []
    for row in result["parity"]:
        print(f"parity {row['model']:24s} {row['path']:40s} KLD {row['mean_kld']:.2e}  same top {row['same_top_pct']:.2f}%", flush=True)

    t0 = time.time()
    stock = write_shaped_model(work / "stock.gguf", shape, ahn=False)
    ahn = write_shaped_model(work / "ahn.gguf", shape, ahn=True, window=window, sinks=sinks)
    result["model"] = {"name": SHAPE_NAMES[shape], "shape": asdict(shape), "window": window, "sinks": sinks, "seconds_to_write": time.time() - t0,
                       "bytes": {"stock": stock.stat().st_size, "ahn": ahn.stat().st_size},
                       "weights": "random (seeded); Q4_K for every matrix, F32 norms, biases and AHN tensors; synthetic vocabulary"}
    result["lengths"], result["gen_tokens"] = lengths, args.gen_tokens
    result["modes"] = {}
    for mode in MODES:
        model = stock if mode == STOCK else ahn
        result["modes"][mode] = measure_mode(bin_dir / "llama-server", model, mode, lengths, args.gen_tokens,
                                             0 if args.cpu_check else 99, out / f"server-{mode}.log", args.threads)
    result["seconds"] = time.time() - t_start
    result["ratios"], result["targets"] = summarize(result)
    shutil.rmtree(work, ignore_errors=True)
    return result


def summarize(result: dict) -> tuple[list[dict], list[dict]]:
    modes = result["modes"]
    by = {(m, p["tokens"]): p for m in modes for p in modes[m]["points"]}
    mem = {m: modes[m]["kv_bytes"] + modes[m]["state_bytes"] for m in modes}
    ratios = []
    for L in result["lengths"]:
        s = by[(STOCK, L)]
        for m in (WINDOW, AHN):
            p = by[(m, L)]
            ratios.append({"mode": m, "tokens": L, "prefill": p["prefill_tok_s"] / s["prefill_tok_s"],
                           "decode": p["decode_tok_s"] / s["decode_tok_s"]})
    longest, shortest = max(result["lengths"]), min(result["lengths"])
    r_long = next(r for r in ratios if r["mode"] == AHN and r["tokens"] == longest)
    r_short = next(r for r in ratios if r["mode"] == AHN and r["tokens"] == shortest)
    targets = [
        {"what": f"AHN prefill / stock at {longest}", "target": ">= 1.8", "measured": r_long["prefill"], "met": r_long["prefill"] >= 1.8},
        {"what": f"AHN decode / stock at {longest}", "target": ">= 1.8", "measured": r_long["decode"], "met": r_long["decode"] >= 1.8},
        {"what": "AHN K/V + state / stock K/V (allocated)", "target": "<= 0.30", "measured": mem[AHN] / mem[STOCK],
         "met": mem[AHN] / mem[STOCK] <= 0.30},
        {"what": f"AHN prefill / stock at {shortest} (inside the window)", "target": "within 5%", "measured": r_short["prefill"],
         "met": abs(r_short["prefill"] - 1) <= 0.05},
        {"what": f"AHN decode / stock at {shortest} (inside the window)", "target": "within 5%", "measured": r_short["decode"],
         "met": abs(r_short["decode"] - 1) <= 0.05},
    ]
    return ratios, targets


def markdown(result: dict, plot_name: str | None = None) -> str:
    m = result["model"]
    sh = m["shape"]
    where = "CPU check (no CUDA)" if result["cpu_check"] else f"{result.get('gpu', 'GPU')}"
    lines = [f"# AHN on {'the CPU (pipeline check)' if result['cpu_check'] else 'a GPU'}: stock full attention vs sinks + window vs + AHN", "",
             f"`ahn-gguf bench gpu`, {result['started']}, {where}. Model: {m['name']}-shaped "
             f"({sh['n_layer']} layers, hidden {sh['D']}, {sh['H']} heads / {sh['H_kv']} KV heads of {sh['d']}, FFN {sh['ffn']}, "
             f"vocabulary {sh['vocab']}), **{m['weights']}** -- the speed of a model does not depend on its weights' values. "
             f"AHN-GDN in every layer, S = {m['sinks']}, W = {m['window']}. llama-server, one slot, all layers offloaded, "
             f"flash attention on; prompts of random token ids, then {result['gen_tokens']} greedy tokens; prefill and decode "
             "tokens/s are the server's own timings. One server process per mode.", ""]
    b = result["build"]
    if "seconds" in b:
        lines += [f"Build: `GGML_CUDA=ON`, `CMAKE_CUDA_ARCHITECTURES={b['arch']}`, {', '.join(BUILD_TARGETS)}: "
                  f"{b['seconds']:.0f} s (build key {b['build_key']}).", ""]
    if "backend_ops" in result:
        bo = result["backend_ops"]
        lines += [f"`test-backend-ops -o AHN_MEMORY,AHN_MEMORY_CACHE_FUSION -b CUDA0`: **{bo['passed']}/{bo['total']} passed**.", ""]
    if result["parity"]:
        lines += ["Whole-model parity, against the CPU run with the states updated in place (llama-perplexity "
                  "`--kl-divergence`, 256-token chunks, F16 K/V):", "",
                  "| fixture | path | mean KLD | same top token |", "| --- | --- | ---: | ---: |"]
        lines += [f"| {r['model']} | {r['path']} | {r['mean_kld']:.2e} | {r['same_top_pct']:.2f}% |" for r in result["parity"]]
        lines.append("")
    lines += ["| mode | tokens | prefill tok/s | decode tok/s | vs stock: prefill | decode |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    ratio = {(r["mode"], r["tokens"]): r for r in result["ratios"]}
    for mode in MODES:
        for p in result["modes"][mode]["points"]:
            r = ratio.get((mode, p["tokens"]))
            lines.append(f"| {mode} | {p['tokens']} | {p['prefill_tok_s']:.1f} | {p['decode_tok_s']:.1f} | "
                         f"{'' if r is None else format(r['prefill'], '.2f') + 'x'} | {'' if r is None else format(r['decode'], '.2f') + 'x'} |")
    lines += ["", "Memory the server allocated (its log; n_ctx = the longest prompt + the generated tokens):", "",
              "| mode | K/V (MiB) | AHN state (MiB) | window cells |", "| --- | ---: | ---: | ---: |"]
    for mode in MODES:
        mm = result["modes"][mode]
        lines.append(f"| {mode} | {mm['kv_bytes'] / 2**20:.1f} | {mm['state_bytes'] / 2**20:.1f} | {mm['window_cells'] or ''} |")
    lines += ["", "## Targets", "", "| target | wanted | measured | met |", "| --- | --- | ---: | --- |"]
    lines += [f"| {t['what']} | {t['target']} | {t['measured']:.3f} | {'yes' if t['met'] else 'no'} |" for t in result["targets"]]
    if plot_name:
        lines += ["", f"![prefill and decode vs context]({plot_name})"]
    lines += ["", f"Whole run: {result['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def plot(result: dict, path: Path) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for mode in MODES:
        pts = result["modes"][mode]["points"]
        xs = [p["tokens"] for p in pts]
        axes[0].plot(xs, [p["prefill_tok_s"] for p in pts], marker="o", label=mode)
        axes[1].plot(xs, [p["decode_tok_s"] for p in pts], marker="o", label=mode)
    for ax, what in zip(axes, ("prefill", "decode")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (tokens)")
        ax.set_ylabel(f"{what} tokens/s")
        ax.set_ylim(bottom=0)
        ax.legend()
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)
    return True


def write_report(result: dict, out_dir: Path, stem: str) -> ReportFiles:
    return reports.write_report(out_dir, stem, result, lambda names: markdown(result, names[0] if names else None),
                                lambda d, s: [f"{s}.png"] if plot(result, d / f"{s}.png") else [])


# --- command line --------------------------------------------------------------------------------


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--pack", metavar="DIR", default=None, help="here: write the carried inputs of the GPU run into DIR and exit")
    p.add_argument("--from-pack", metavar="DIR", default=None, help="there: the packed inputs (build, parity, measure)")
    p.add_argument("--from-json", metavar="JSON", default=None, help="measure nothing: rewrite the report (+ plot) of a run into --out")
    p.add_argument("--cpu-check", action="store_true",
                   help="the pipeline on the CPU: no build (the installed llama.cpp programs), a tiny shape, short lengths")
    p.add_argument("--bin-dir", default=None, help="--cpu-check: folder of llama-server / llama-perplexity (default: this Python's)")
    p.add_argument("--fixtures", nargs="*", default=None, help="--cpu-check: GGUFs for the parity runs")
    p.add_argument("--lengths", default=None, help="prompt lengths (default 8192,32768,65536,131072; 512,1024 with --cpu-check)")
    p.add_argument("--window", type=int, default=None, help=f"window W (default {PAPER_WINDOW}; 128 with --cpu-check)")
    p.add_argument("--sinks", type=int, default=None, help=f"sinks S (default {PAPER_SINKS}; 4 with --cpu-check)")
    p.add_argument("--gen-tokens", type=int, default=32, help="greedy tokens after each prompt (default 32)")
    p.add_argument("--threads", type=int, default=min(8, os.cpu_count() or 1), help="CPU threads of llama-server and llama-perplexity (default min(8, CPUs))")
    p.add_argument("--jobs", type=int, default=0, help="build jobs (default: all CPUs)")
    p.add_argument("--work", default=None, help="scratch folder (default: the system's temp folder)")
    p.add_argument("--out", default="reports", help="folder of the report (default reports/)")
    p.add_argument("--name", default=None, help="file stem (default bench-gpu, bench-gpu-cpu-check with --cpu-check)")


def default_args(**overrides: Any) -> argparse.Namespace:
    from . import parsed_defaults

    return parsed_defaults(add_arguments, "gpu", overrides)


def main(args: argparse.Namespace) -> int:
    try:
        if args.pack:
            pack(Path(args.pack))
            return 0
        if args.from_json:
            result = json.loads(Path(args.from_json).read_text())
        else:
            if not args.cpu_check and not args.from_pack:
                raise BenchGPUError("give --from-pack DIR (made by `ahn-gguf bench gpu --pack DIR`), or --cpu-check")
            if args.cpu_check and args.window and args.window < 1:
                raise BenchGPUError("--window must be >= 1")
            result = run(args)
    except BenchGPUError as e:
        print(f"ahn-gguf bench gpu: error: {e}", file=sys.stderr)
        return 1
    stem = args.name or ("bench-gpu-cpu-check" if result["cpu_check"] else "bench-gpu")
    md, js = write_report(result, Path(args.out), stem)
    print(f"wrote {md} and {js}")
    for t in result["targets"]:
        print(f"target {t['what']}: {t['measured']:.3f} ({t['target']}: {'met' if t['met'] else 'NOT met'})")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m ahn_gguf.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
