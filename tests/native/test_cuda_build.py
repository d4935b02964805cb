"""The CUDA side of the patched llama.cpp compiles here, with the installed nvcc.

A full GGML_CUDA=ON build does not fit CI (hundreds of nvcc compilations on 2 cores, and the
machine has no cuBLAS), so this compiles what the patch series adds to ggml-cuda: the glue
`ggml-cuda/ahn-memory.cu` with the kernels of native/cuda, exactly as placed by the build, for
sm_80 and sm_90. cuBLAS headers, which ggml-cuda's common header includes, come from NVIDIA's
pinned `nvidia-cublas` wheel (headers only are extracted). The kernels themselves are also
compiled and, on a GPU, run by tests/native/test_native_cuda.py; the whole CUDA build was run on a
borrowed H200 (see the closing notes and reports/).
"""

from __future__ import annotations

import shutil
import subprocess

import pytest

CUBLAS_WHEEL = dict(project="nvidia-cublas", version="13.0.2.14",
                    filename="nvidia_cublas-13.0.2.14-py3-none-manylinux_2_27_x86_64.whl",
                    sha256="0cf238ffdbe46c00cb9aa98e7bca745c223a5ca5a53e686ac8b3e5a08fe80d6c")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed on this machine")
@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_ggml_cuda_ahn_glue_compiles(arch, tmp_path_factory):
    from ahn_gguf.build.llama_cpp import BuildConfig, build_key, prepare_source
    from ahn_gguf.build.pins import PinnedFile, cache_dir, extract_from, pinned_path

    root = tmp_path_factory.getbasetemp() / "cuda-src"
    src = root / "llama_cpp_python-0.3.36"
    if not src.exists():
        cfg = BuildConfig(cuda=True)
        prepare_source(root, cfg, build_key(cfg))
    wheel = pinned_path(PinnedFile(sdist=False, **CUBLAS_WHEEL))
    include = extract_from(wheel, "nvidia/cu13/include", cache_dir() / "nvidia-cublas-13.0.2.14")

    cuda = src / "vendor" / "llama.cpp" / "ggml" / "src" / "ggml-cuda"
    out = tmp_path_factory.mktemp(arch) / "ahn-memory.o"
    cmd = ["nvcc", "-std=c++17", f"-arch={arch}", "-O2", "-c", str(cuda / "ahn-memory.cu"), "-o", str(out),
           "-I", str(cuda.parent.parent / "include"), "-I", str(cuda.parent), "-I", str(cuda), "-I", str(include)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert out.stat().st_size > 0
    # the object holds device code for the requested architecture (its ELF names the arch)
    assert arch.encode() in out.read_bytes()
