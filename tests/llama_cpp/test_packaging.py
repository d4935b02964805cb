"""ahn-gguf as a package: the wheel and the sdist install into fresh virtual environments with
the base dependencies only, and `ahn-gguf build` + `ahn-gguf run` work there as from a checkout;
the inference modules import with torch made unimportable."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT
INFERENCE_MODULES = ("ahn_gguf", "ahn_gguf.cli", "ahn_gguf.runtime", "ahn_gguf.cli.chat", "ahn_gguf.cli.serve", "ahn_gguf.session",
                     "ahn_gguf.cli.run", "ahn_gguf.build.llama_cpp", "ahn_gguf.default_model", "ahn_gguf.convert")


def _run(cmd, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert proc.returncode == 0, f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def dists(tmp_path_factory):
    pytest.importorskip("build", reason="the `build` package is a dev dependency (pip install -e .[dev])")
    out = tmp_path_factory.mktemp("dist")
    _run([sys.executable, "-m", "build", "--no-isolation", "-o", str(out), str(ROOT)], timeout=600)
    wheel, = out.glob("*.whl")
    sdist, = out.glob("*.tar.gz")
    return wheel, sdist


def test_wheel_carries_the_build_inputs(dists):
    names = zipfile.ZipFile(dists[0]).namelist()
    patches = sorted(p.relative_to(ROOT / "patches").as_posix() for p in (ROOT / "patches").rglob("*.patch"))
    assert sorted(n[len("ahn_gguf/_patches/"):] for n in names if n.startswith("ahn_gguf/_patches/") and n.endswith(".patch")) == patches
    for f in ("ahn_memory.h", "ahn_memory.c", "ahn_memory_avx2.c", "cuda/ahn_memory_cuda.cuh"):
        assert f"ahn_gguf/_native/{f}" in names
    for sidecar in ("smollm2-135m-ahn-gdn", "qwen2.5-coder-0.5b-ahn-gdn"):   # the embedded models' AHNs and logs
        assert f"ahn_gguf/data/{sidecar}.gguf" in names and f"ahn_gguf/data/{sidecar}.training-log.json" in names
    assert "ahn_gguf/convert/pipeline.py" in names


@pytest.mark.parametrize("kind", ["wheel", "sdist"])
def test_fresh_venv_install_builds_and_runs(dists, kind, tmp_path):
    """pip install <wheel|sdist> (base dependencies only), then `ahn-gguf build` (the cached patched
    wheel: the same key as this checkout's) and `ahn-gguf run` on the default model."""
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], timeout=300)
    py = venv / "bin" / "python"
    dist = dists[0] if kind == "wheel" else dists[1]
    _run([str(py), "-m", "pip", "install", "-q", str(dist)], timeout=1200)
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)
    # the installed package, not this checkout: everything runs from elsewhere
    no_torch = subprocess.run([str(py), "-c", "import torch"], cwd=tmp_path, env=env, capture_output=True)
    assert no_torch.returncode != 0, "torch is not a base dependency"
    key_here = _run([sys.executable, "-m", "ahn_gguf.cli", "build", "--print-key"], timeout=120).stdout.strip()
    key_there = _run([str(venv / "bin" / "ahn-gguf"), "build", "--print-key"], cwd=tmp_path, env=env, timeout=120).stdout.strip()
    assert key_there == key_here, "the installed package hashes other build inputs than the checkout"
    _run([str(venv / "bin" / "ahn-gguf"), "build"], cwd=tmp_path, env=env, timeout=3600)
    out = _run([str(venv / "bin" / "ahn-gguf"), "run", "--max-tokens", "8", "--threads", "1"], cwd=tmp_path, env=env, timeout=1200)
    assert out.stdout.strip(), "ahn-gguf run printed nothing"
    mods = ", ".join(INFERENCE_MODULES)
    _run([str(py), "-c", f"import {mods}"], cwd=tmp_path, env=env, timeout=120)


def test_inference_imports_without_torch(tmp_path):
    """With torch made unimportable in this environment, every inference module imports."""
    code = ("import sys\n"
            "for name in ('torch', 'transformers', 'safetensors'):\n"
            "    sys.modules[name] = None   # `import torch` now raises ImportError\n"
            f"import {', '.join(INFERENCE_MODULES)}\n"
            "from ahn_gguf.default_model import default_model_path\n"
            "print(default_model_path())\n")
    proc = _run([sys.executable, "-c", code], cwd=tmp_path, timeout=600)
    assert proc.stdout.strip().endswith(".gguf")
