"""The two patch series: patches/llama.cpp/ applies with `git am` to a bare llama.cpp tree of the
pinned commit (0c1e57098, the vendor tree of the llama-cpp-python 0.3.36 sdist) and gives exactly
the tree the build compiles; patches/llama-cpp-python/ applies with `git am` to the rest of the
sdist; the developers' round trip (`--dev-tree`, `--export-patches`) gives the series back byte for
byte; and the build key changes when any byte of any build input does."""

from __future__ import annotations

import filecmp
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from ahn_gguf.build import llama_cpp as build
from ahn_gguf.build.pins import SDIST_ROOT, sdist_path
from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT
GIT = ["git", "-c", "user.name=test", "-c", "user.email=test@example.invalid", "-c", "init.defaultBranch=main"]


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([*GIT, *args], cwd=repo, capture_output=True, text=True)
    assert proc.returncode == 0, f"git {' '.join(args)}: {proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def sdist_tree(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sdist")
    with tarfile.open(sdist_path()) as tf:
        tf.extractall(out, filter="data")
    return out / SDIST_ROOT


def _pristine_repo(src: Path, dest: Path, drop: tuple[str, ...] = ()) -> Path:
    shutil.copytree(src, dest, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    for d in drop:
        shutil.rmtree(dest / d)
    _git(dest, "init", "-q")
    _git(dest, "add", "-A", "-f", ".")
    _git(dest, "commit", "-qm", "pristine")
    return dest


def _diff_trees(a: Path, b: Path, ignore: set[str]) -> list[str]:
    """Relative paths that differ between two trees (missing on one side, or different bytes)."""
    out = []

    def walk(c: filecmp.dircmp, rel: str):
        for name in c.left_only + c.right_only + c.diff_files + c.funny_files:
            if name not in ignore:
                out.append(f"{rel}{name}")
        for name, sub in c.subdirs.items():
            if name not in ignore:
                walk(sub, f"{rel}{name}/")

    walk(filecmp.dircmp(a, b, ignore=[]), "")
    return out


def test_llama_cpp_series_applies_with_git_am(sdist_tree, tmp_path):
    """`git am patches/llama.cpp/*.patch` on llama.cpp 0c1e57098, as a llama.cpp user does it; the
    result is the tree `ahn-gguf build` compiles (native/ aside, which the build copies in)."""
    patches = build.patch_series("llama.cpp")
    assert len(patches) >= 12
    repo = _pristine_repo(sdist_tree / "vendor" / "llama.cpp", tmp_path / "llama.cpp")
    _git(repo, "am", "-q", *map(str, patches))
    log = _git(repo, "log", "--format=%s", "-n", str(len(patches))).stdout.splitlines()
    assert len(log) == len(patches) and all(log), "one commit per patch, each with a subject"
    # one concern each: the architectures, the fused graph, the composed path and the in-place states apart
    subjects = " | ".join(log)
    for concern in ("AHN architectures", "memory step in the graph", "LLAMA_AHN_COMPOSED", "updated where they live"):
        assert concern in subjects, f"no patch for {concern!r}: {subjects}"

    built = tmp_path / "built"
    cfg = build.BuildConfig()
    build.prepare_source(built, cfg, build.build_key(cfg))
    differ = _diff_trees(repo, built / SDIST_ROOT / "vendor" / "llama.cpp", ignore={".git", "ahn"})
    assert not differ, f"git am gives another tree than the build: {differ[:10]}"


def test_bindings_series_applies_with_git_am(sdist_tree, tmp_path):
    """patches/llama-cpp-python/ touches llama-cpp-python's own files only, and applies with git am."""
    patches = build.patch_series("llama-cpp-python")
    for p in patches:
        touched = [line.split()[-1] for line in p.read_text().splitlines() if line.startswith("+++ b/")]
        assert touched and all(not t.startswith("b/vendor/") for t in touched), f"{p.name} touches {touched}"
    repo = _pristine_repo(sdist_tree, tmp_path / "llama-cpp-python", drop=("vendor/llama.cpp",))
    _git(repo, "am", "-q", *map(str, patches))
    text = (repo / "llama_cpp" / "llama.py").read_text()
    assert "np.ndarray((self._n_ctx,)" in text
    assert "if len(completion_tokens) < max_tokens:" in text


def test_dev_tree_round_trip(tmp_path, monkeypatch):
    """--dev-tree then --export-patches with no edits writes the same series, byte for byte."""
    copy = tmp_path / "patches"
    shutil.copytree(ROOT / "patches", copy)
    monkeypatch.setattr(build, "PATCHES_DIR", copy)
    build.make_dev_tree(tmp_path / "dev")
    dev = tmp_path / "dev"
    assert (dev / "llama-cpp-python" / "vendor" / "llama.cpp").resolve() == (dev / "llama.cpp").resolve()
    assert (dev / "llama.cpp" / "ggml" / "src" / "ggml-cpu" / "ahn" / "ahn_memory.c").is_file()
    status = _git(dev / "llama.cpp", "status", "--porcelain").stdout
    assert status == "", f"the copied native/ files must be untracked and ignored: {status}"
    for p in copy.rglob("*.patch"):
        p.unlink()
    build.export_patches(dev)
    ours = {p.relative_to(copy): p.read_bytes() for p in copy.rglob("*.patch")}
    theirs = {p.relative_to(ROOT / "patches"): p.read_bytes() for p in (ROOT / "patches").rglob("*.patch")}
    assert ours.keys() == theirs.keys()
    changed = [str(k) for k in ours if ours[k] != theirs[k]]
    assert not changed, f"the round trip changed {changed}"


def test_build_key_sees_every_byte_of_every_input(tmp_path, monkeypatch):
    """A byte changed in any patch (either series) or any native source gives another key."""
    patches, native = tmp_path / "patches", tmp_path / "native"
    shutil.copytree(build.PATCHES_DIR, patches)
    shutil.copytree(build.NATIVE_DIR, native)
    monkeypatch.setattr(build, "PATCHES_DIR", patches)
    monkeypatch.setattr(build, "NATIVE_DIR", native)
    cfg = build.BuildConfig()
    base = build.build_key(cfg)
    files = build.patch_files() + build.native_files(cfg)
    assert any("llama-cpp-python" in str(f) for f in files) and any(f.suffix == ".c" for f in files)
    for f in files:
        data = f.read_bytes()
        f.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))
        assert build.build_key(cfg) != base, f"the key ignores {f.relative_to(tmp_path)}"
        f.write_bytes(data)
    assert build.build_key(cfg) == base
