"""The GPU distillation pack (ahn_gguf.distill.gpu) on the CPU: pieces under the carry limit, staged
call by call, checked, assembled without network, trained for a few steps, brought back, resumed."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ahn_gguf.distill import gpu

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pack(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpu-pack")
    text = root / "text"
    text.mkdir()
    rng = random.Random(0)
    words = "memory window state token layer gate recurrent sink cache model".split()
    for i in range(6):
        (text / f"doc{i}.txt").write_text(" ".join(rng.choice(words) for _ in range(900)) + "\n")
    manifest = gpu.make_pack(root / "pack", data=str(text), piece_mib=40)
    return root / "pack", manifest


def offline_env(tmp_path: Path) -> dict:
    """No pip index, no apt-get or dpkg on PATH, an empty cache: only what the pack carries is there."""
    empty = tmp_path / "empty-cache"
    empty.mkdir(exist_ok=True)
    return dict(os.environ, PATH=str(Path(sys.executable).parent), PIP_NO_INDEX="1", AHN_GGUF_CACHE=str(empty),
                OMP_NUM_THREADS="1")


def call(pack_dir: Path, carried: list[str], tmp_path: Path, work: Path, out: Path, *extra: str):
    """One device call: a folder holding only this call's pieces and the manifest."""
    here = tmp_path / f"carry-{len(list(tmp_path.glob('carry-*')))}"
    here.mkdir()
    for name in [*carried, gpu.MANIFEST]:
        os.link(pack_dir / name, here / name)
    return subprocess.run([sys.executable, "-m", "ahn_gguf.distill.gpu", "run", "--pack", str(here), "--work", str(work),
                           "--out", str(out), "--device", "cpu", "--no-bf16", *extra], capture_output=True, text=True,
                          timeout=1200, env=offline_env(tmp_path))


DISTILL = ["--", "--steps", "2", "--seq-len", "128", "--spans", "40,48", "--sinks", "4", "--window", "36",
           "--default-sinks", "4", "--val-every", "2", "--threads", "1", "--lr", "1e-3"]


def test_pack_pieces_fit_the_carry_limit(pack):
    pack_dir, m = pack
    assert len(m["gguf_pieces"]) == 3                  # 98 MB in pieces of 40 MiB
    for c in m["calls"]:
        assert sum(m["files"][n]["bytes"] for n in c) <= (gpu.CARRY_LIMIT_MIB - 4) << 20
    assert sorted(n for c in m["calls"] for n in c) == sorted(m["files"])
    total = sum(m["files"][n]["bytes"] for n in m["gguf_pieces"])
    from ahn_gguf.smollm2 import gguf_path

    assert total == gguf_path().stat().st_size and m["data"].startswith("@text/")


def test_calls_stage_then_train_then_resume_offline(pack, tmp_path):
    pack_dir, m = pack
    work, out = tmp_path / "work", tmp_path / "out"
    *first, last = m["calls"]
    for carried in first:
        proc = call(pack_dir, carried, tmp_path, work, out, *DISTILL)
        assert proc.returncode == 0 and "still missing" in proc.stdout, proc.stdout + proc.stderr
    proc = call(pack_dir, last, tmp_path, work, out, *DISTILL)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    log = json.loads((out / "run" / "training-log.json").read_text())
    assert [r["step"] for r in log["records"]] == [1, 2] and [v["step"] for v in log["validation"]] == [0, 2]
    assert (out / "run" / "model.safetensors").is_file() and (out / "run" / "checkpoint" / "state.pt").is_file()
    assert log["base"]["weights"].startswith("Q4_1 GGUF dequantized")

    # a damaged piece is refused by its sha256
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / gpu.MANIFEST).write_bytes((pack_dir / gpu.MANIFEST).read_bytes())
    (bad / m["gguf_pieces"][0]).write_bytes(b"\0" * m["files"][m["gguf_pieces"][0]]["bytes"])
    proc = subprocess.run([sys.executable, "-m", "ahn_gguf.distill.gpu", "run", "--pack", str(bad), "--work",
                           str(tmp_path / "work2"), "--out", str(tmp_path / "out2"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=300, env=offline_env(tmp_path))
    assert proc.returncode == 1 and "sha256" in proc.stderr

    # the run folder brought back continues here with `ahn-gguf distill --resume` (same settings)
    from ahn_gguf.distill.trainer import DistillConfig, Distiller

    base = work / "base"
    cfg = DistillConfig(base=str(base), out_dir=str(out / "run"), seq_len=128, steps=2, spans=(40, 48), sinks=(4,),
                        window=36, default_sinks=4, val_every=2, lr=1e-3, threads=1, progress=False,
                        data=log["config"]["data"], checkpoint_every_s=1e9)
    resumed = Distiller(cfg, resume=True)
    assert resumed.step == 2 and [r["loss"] for r in resumed.log.records] == [r["loss"] for r in log["records"]]


def test_a_pack_can_carry_the_qwen_coder_base(tmp_path, monkeypatch):
    """--base qwen2.5-coder-0.5b: its 491 MB Q4_K_M GGUF in pieces, every call under the limit, the pieces
    concatenated give the pinned file; there, the base is dequantized by qwen_coder's own writer."""
    from ahn_gguf import qwen_coder
    from ahn_gguf.build.pins import sha256_file

    text = tmp_path / "text"
    text.mkdir()
    (text / "doc.txt").write_text("def f(x):\n    return x\n" * 200)
    m = gpu.make_pack(tmp_path / "pack", data=str(text), piece_mib=56, base="qwen2.5-coder-0.5b")
    assert m["base"] == "qwen2.5-coder-0.5b" and m["gguf"] == qwen_coder.GGUF_NAME
    assert len(m["gguf_pieces"]) == 9 and len(m["calls"]) == 9
    for c in m["calls"]:
        assert sum(m["files"][n]["bytes"] for n in c) <= (gpu.CARRY_LIMIT_MIB - 4) << 20
    work = tmp_path / "work"
    manifest, missing = gpu.stage(tmp_path / "pack", work)
    assert not missing
    written = []
    monkeypatch.setattr(qwen_coder, "write_hf_dir", lambda src, target: written.append((src, target)))
    monkeypatch.setenv("AHN_GGUF_CACHE", str(tmp_path / "cache"))     # assemble sets both: restored after the test
    monkeypatch.setenv("AHN_GGUF_GGUF_PY", str(tmp_path / "none"))
    base, spec = gpu.assemble(manifest, work)
    assert sha256_file(work / qwen_coder.GGUF_NAME) == qwen_coder.GGUF_SHA256
    assert written == [(work / qwen_coder.GGUF_NAME, base)] and spec == str(work / "inputs" / "text" / "0-text")
    with pytest.raises(gpu.GPUPackError, match="a pack carries one of"):
        gpu.make_pack(tmp_path / "other", base="llama-7b")
