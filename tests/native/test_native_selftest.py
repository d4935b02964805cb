"""native/ahn_memory_selftest.c: every kernel vs scalar in plain C, here and on aarch64.

The NEON kernel cannot run on this x86 machine; it is cross-compiled with
aarch64-linux-gnu-gcc (Debian: apt-get install gcc-aarch64-linux-gnu) and run under
qemu-aarch64 (apt-get install qemu-user). Without those tools the tests say so and skip.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from ahn_gguf import native

SRC = native.NATIVE_DIR
KERNEL_FILES = ["ahn_memory.c", "ahn_memory_scalar.c", "ahn_memory_avx2.c", "ahn_memory_avx512.c", "ahn_memory_neon.c"]
WARNINGS = ["-Wall", "-Wextra", "-Werror"]
AARCH64_CC = "aarch64-linux-gnu-gcc"
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"


def compile_selftest(cc: str, out: Path, per_file_flags: dict[str, list[str]]) -> None:
    objs = []
    for name in KERNEL_FILES + ["ahn_memory_selftest.c"]:
        obj = out.parent / (name + ".o")
        cmd = [cc, "-std=c11", "-O2", *WARNINGS, *per_file_flags.get(name, []), "-c", str(SRC / name), "-o", str(obj)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        assert r.returncode == 0, f"{' '.join(cmd)}\n{r.stderr}"
        objs.append(str(obj))
    r = subprocess.run([cc, *objs, "-lm", "-o", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_selftest_here(tmp_path):
    """Built with the native compiler and this architecture's flags: all kernels == scalar."""
    flags = {name: f for name, f in ((p.name, f) for p, f in native.c_sources())}
    exe = tmp_path / "selftest"
    compile_selftest(shutil.which("cc") or "cc", exe, flags)
    r = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all kernels agree with scalar" in r.stdout


def test_neon_cross_compiles(tmp_path):
    """The NEON kernel (and the dispatcher) compile warning-free for aarch64."""
    if shutil.which(AARCH64_CC) is None:
        pytest.skip(f"{AARCH64_CC} not installed (apt-get install gcc-aarch64-linux-gnu)")
    for name in ("ahn_memory_neon.c", "ahn_memory.c"):
        r = subprocess.run([AARCH64_CC, "-std=c11", "-O3", *WARNINGS, "-c", str(SRC / name), "-o", str(tmp_path / "x.o")],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
    nm = subprocess.run(["aarch64-linux-gnu-objdump", "-d", str(tmp_path / "x.o")], capture_output=True, text=True)
    if nm.returncode == 0:  # the dispatcher object references the real NEON kernel
        assert "ahn_memory_step_neon" in nm.stdout


def test_neon_matches_scalar_under_qemu(tmp_path):
    if shutil.which(AARCH64_CC) is None:
        pytest.skip(f"{AARCH64_CC} not installed (apt-get install gcc-aarch64-linux-gnu)")
    qemu = shutil.which("qemu-aarch64") or shutil.which("qemu-aarch64-static")
    if qemu is None:
        pytest.skip("qemu-aarch64 not installed (apt-get install qemu-user)")
    exe = tmp_path / "selftest_aarch64"
    compile_selftest(AARCH64_CC, exe, {})
    r = subprocess.run([qemu, "-L", AARCH64_SYSROOT, str(exe)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "best kernel: neon" in r.stdout
    assert r.stdout.count("neon ") == 24 and "FAIL" not in r.stdout
