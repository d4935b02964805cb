"""`ahn-gguf bench gpu` on the CPU: everything of the prepared GPU run but CUDA itself.

The pack (the patched llama.cpp tree without what the build does not read, the parity fixtures, a
manifest of sha256) is made, verified, and its tree configures with CMake; the build's command line
asks for the one GPU architecture; the random shaped models load in llama.cpp; the whole
measurement pipeline (--cpu-check: three modes, one server each, parity, report) runs on the
installed llama.cpp programs.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from tests.helpers.runtime import patched_llama_cpp
from tests.helpers.tiny_model import build_tiny_ahn_gguf


@pytest.fixture(scope="module")
def tools():
    from ahn_gguf.build.llama_cpp import BuildConfig, ensure_tools

    patched_llama_cpp()
    return ensure_tools(BuildConfig())


def test_pack_is_complete_small_and_configures(tmp_path):
    from ahn_gguf.bench import gpu

    manifest = gpu.pack(tmp_path / "pack")
    assert manifest["total_bytes"] < 48 * 2**20, "the GPU run receives at most 64 MiB, the checkout included"
    assert sorted(Path(f).name for f in manifest["files"]) == sorted(
        [gpu.PACK_SOURCE] + [f"tiny-{v}-{d}.gguf" for v, d in gpu.FIXTURES])
    gpu.check_pack(tmp_path / "pack")
    with tarfile.open(tmp_path / "pack" / gpu.PACK_SOURCE) as tf:
        names = set(tf.getnames())
        tf.extractall(tmp_path / "src", filter="data")
    # the patched tree with native/ in both backends, and without the models and docs
    for need in ("llama.cpp/src/models/ahn-base.cpp", "llama.cpp/ggml/src/ggml-cpu/ahn/ahn_memory.c",
                 "llama.cpp/ggml/src/ggml-cuda/ahn/cuda/ahn_memory_cuda.cuh", "llama.cpp/ggml/src/ggml-cuda/ahn/ahn_memory.h",
                 "llama.cpp/tests/test-backend-ops.cpp", "llama.cpp/tools/server/server.cpp"):
        assert need in names, need
    assert not any(n.startswith(("llama.cpp/models/", "llama.cpp/docs/")) for n in names)

    # the build's commands: the one architecture asked for, the three targets; the tree configures (CPU)
    cuda = gpu.build_command(tmp_path / "src" / "llama.cpp", tmp_path / "b", "90", 16)
    assert "-DGGML_CUDA=ON" in cuda[0] and "-DCMAKE_CUDA_ARCHITECTURES=90" in cuda[0]
    assert cuda[1][-3:] == list(gpu.BUILD_TARGETS)
    configure = gpu.build_command(tmp_path / "src" / "llama.cpp", tmp_path / "build", None, 2)[0]
    proc = subprocess.run(configure, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    # a damaged pack is refused before anything runs
    fx = next((tmp_path / "pack" / gpu.PACK_FIXTURES).glob("*.gguf"))
    fx.write_bytes(fx.read_bytes()[:-1] + b"\x00")
    with pytest.raises(gpu.BenchGPUError, match="sha256"):
        gpu.check_pack(tmp_path / "pack")


def test_shaped_models_share_their_base_weights(tmp_path):
    """The stock and the AHN file of one seed hold the same base tensors, byte for byte."""
    from ahn_gguf.bench import gpu
    from ahn_gguf.gguf_io.header import parse_header

    stock = gpu.write_shaped_model(tmp_path / "s.gguf", gpu.TINY, ahn=False)
    ahn = gpu.write_shaped_model(tmp_path / "a.gguf", gpu.TINY, ahn=True, window=128, sinks=4)
    hs, ha = (parse_header(p.read_bytes()) for p in (stock, ahn))
    ts = {t.name: t for t in hs.tensors}
    ta = {t.name: t for t in ha.tensors}
    assert set(ts) < set(ta) and all(n.startswith("blk.") and ".ahn_" in n for n in set(ta) - set(ts))
    sb, ab = stock.read_bytes(), ahn.read_bytes()
    for name, t in ts.items():
        a = ta[name]
        assert (t.ggml_type, tuple(t.ne)) == (a.ggml_type, tuple(a.ne))
        n = t.nbytes
        assert sb[hs.data_start + t.offset:hs.data_start + t.offset + n] == ab[ha.data_start + a.offset:ha.data_start + a.offset + n], name
    assert ha.kv["qwen2ahn.ahn.window"].value == 128 and hs.kv["general.architecture"].value == "qwen2"


def test_cpu_check_runs_the_whole_pipeline(tools, tmp_path):
    fixture = build_tiny_ahn_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "ahn_gguf.cli", "bench", "gpu", "--cpu-check", "--bin-dir", str(tools),
                           "--fixtures", str(fixture), "--threads", "1", "--gen-tokens", "8", "--out", str(out)],
                          capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    result = json.loads((out / "bench-gpu-cpu-check.json").read_text())
    assert set(result["modes"]) == {"stock", "window", "ahn"}
    for mode, m in result["modes"].items():
        assert [p["tokens"] for p in m["points"]] == [512, 1024]
        assert all(p["prefill_tok_s"] > 0 and p["decode_tok_s"] > 0 and p["predicted_n"] == 8 for p in m["points"])
        assert m["kv_bytes"] > 0
        assert (m["state_bytes"] > 0) == (mode != "stock")   # the window-only mode still allocates the states
    # the window cache of the AHN file: S + W + one ubatch, padded to 256; the stock one: the whole context
    assert result["modes"]["ahn"]["window_cells"] == 768 and result["modes"]["stock"]["window_cells"] is None
    # the two CPU state paths are the same computation: bit-identical logits
    (row,) = result["parity"]
    assert row["path"].startswith("CPU, state copy") and row["mean_kld"] == 0.0 and row["same_top_pct"] == 100.0
    assert len(result["ratios"]) == 4 and len(result["targets"]) == 5
    md = (out / "bench-gpu-cpu-check.md").read_text()
    assert "random (seeded)" in md and "| ahn | 1024 |" in md


# llama-perplexity --kl-divergence output: two chunk rows, then the summary (numbers of a real run,
# the summary's made different from the rows so the test sees which one was read).
_KLD_ROWS = """kl_divergence: computing over 2 chunks, n_ctx=256, batch_size=64, n_seq=1
chunk             PPL               ln(PPL(Q)/PPL(base))          KL Divergence              Δp RMS            Same top p
   1      13.2016 ±    0.8311      -0.00049 ±    0.00102       0.00146 ±    0.00012     0.912 ±  0.101 %    98.824 ±  0.658 %
   2      12.9542 ±    0.5612      -0.00031 ±    0.00071       0.00152 ±    0.00009     0.934 ±  0.072 %    98.431 ±  0.542 %
"""
_KLD_SUMMARY = """
====== KL divergence statistics ======
Mean    KLD:   0.001500 ±   0.000090
Maximum KLD:   0.031000
 0.1%   KLD:   0.000001
Minimum KLD:   0.000000

====== Token probability statistics ======
RMS Δp    :  0.934 ± 0.072 %
Same top p: 98.400 ± 0.542 %
"""


def test_kld_reads_the_summary_or_the_last_chunk_row_never_an_earlier_one():
    """llama.cpp's logger is not flushed at exit: a slow machine can lose the summary's last lines
    (a CI run lost everything after "0.1% KLD"). The last chunk's row carries the same totals."""
    from ahn_gguf.bench import gpu

    assert gpu._kld(_KLD_ROWS + _KLD_SUMMARY) == (0.0015, 98.4)
    lost_tail = _KLD_ROWS + _KLD_SUMMARY[:_KLD_SUMMARY.index("Minimum KLD")]
    assert gpu._kld(lost_tail) == (0.00152, 98.431)
    only_first_row = _KLD_ROWS[:_KLD_ROWS.index("   2 ")]
    with pytest.raises(gpu.BenchGPUError, match="last chunk"):
        gpu._kld(only_first_row)
