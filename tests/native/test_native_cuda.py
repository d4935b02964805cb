"""The CUDA AHN memory op (native/cuda/) against the CPU scalar kernel and the reference.

`python -m pytest tests/native/test_native_cuda.py -m cuda` on a machine with a GPU does it all:
builds native/cuda/ahn_memory_cuda.cu with nvcc for the local GPU (cached like the CPU
library), runs the op on device copies of the same random inputs, and compares.
Without a GPU those tests skip with the reason; test_cuda_compiles runs wherever nvcc is.

Tolerance (max |x - ref| / max |ref|, as in test_native.py): 1e-5 against the scalar
kernel and against the reference. The GPU sums in another order and contracts to FMA;
measured differences are around 1e-6.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest

from ahn_gguf import constants, native
from tests.helpers.native_cases import make_case, reference, rel_err

TOL = 1e-5
VARIANTS = [constants.GDN, constants.DN, constants.MAMBA2]


def test_cuda_compiles(tmp_path):
    """The kernel builds for Ampere (sm_80) and Hopper (sm_90) with the local nvcc."""
    if native.nvcc_path() is None:
        pytest.skip("nvcc not installed: cannot check that the CUDA kernel compiles")
    cmd = native.nvcc_command(["sm_80", "sm_90"], tmp_path / "ahn_memory_cuda.o", shared=False)
    r = subprocess.run(cmd + ["-Xptxas", "-warn-spills"], capture_output=True, text=True)
    assert r.returncode == 0, f"$ {' '.join(cmd)}\n{r.stdout}{r.stderr}"
    assert "spill" not in r.stderr.lower() and "warning" not in r.stderr.lower(), r.stderr


@pytest.fixture(scope="module")
def cuda():
    if native.nvcc_path() is None:
        pytest.skip("nvcc not installed")
    if not native.cuda_device_present():
        pytest.skip("no CUDA device (nvidia-smi lists none)")
    L = native.cuda_lib()
    if L.ahn_cuda_device_count() < 1:
        pytest.skip("the CUDA runtime sees no device")
    return L


def cpu_and_gpu(case):
    kw_cpu, kw_gpu = case.kwargs(), case.kwargs()
    out_cpu = native.memory_step(**kw_cpu, kernel="scalar")
    out_gpu = native.memory_step(**kw_gpu, device="cuda")
    return (out_cpu, kw_cpu["state"]), (out_gpu, kw_gpu["state"])


@pytest.mark.cuda
@pytest.mark.parametrize("n_tokens", [1, 2, 63, 300])
@pytest.mark.parametrize("n_rep", [1, 7])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_matches_scalar_and_reference(cuda, variant, d, n_rep, n_tokens):
    rng = np.random.default_rng([d, n_rep, n_tokens, VARIANTS.index(variant), 1])
    case = make_case(rng, variant, d=d, n_rep=n_rep, n_head_kv=2 if n_rep < 7 else 1, n_seqs=3,
                     n_tokens=n_tokens, kv_size=max(32, n_tokens), n_stream=2)
    (co, cs), (go, gs) = cpu_and_gpu(case)
    assert rel_err(go, co) < TOL and rel_err(gs, cs) < TOL
    ro, rs = reference(case)
    assert rel_err(go, ro) < TOL and rel_err(gs, rs) < TOL


@pytest.mark.cuda
@pytest.mark.parametrize("v_transposed", [False, True])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d", [64, 128])
def test_cuda_cache_layouts(cuda, d, variant, kv_dtype, v_transposed):
    rng = np.random.default_rng([d, int(v_transposed), np.dtype(kv_dtype).itemsize, 2])
    case = make_case(rng, variant, d=d, n_rep=2, n_seqs=2, n_tokens=40, kv_size=50, n_stream=3,
                     kv_dtype=kv_dtype, v_transposed=v_transposed)
    (co, cs), (go, gs) = cpu_and_gpu(case)
    assert rel_err(go, co) < TOL and rel_err(gs, cs) < TOL


@pytest.mark.cuda
@pytest.mark.parametrize("evict_prob", [0.0, 1.0])
def test_cuda_eviction_extremes(cuda, evict_prob):
    case = make_case(np.random.default_rng(8), "gdn", d=128, n_tokens=33, evict_prob=evict_prob)
    (co, cs), (go, gs) = cpu_and_gpu(case)
    assert rel_err(go, co) < TOL and rel_err(gs, cs) < TOL
    if evict_prob == 0.0:
        assert np.array_equal(gs, case.state)


@pytest.mark.cuda
def test_cuda_many_sequences(cuda):
    """A decode-shaped step over many sequences (grid z) and heads (grid y)."""
    case = make_case(np.random.default_rng(12), "mamba2", d=64, n_rep=3, n_head_kv=3, n_seqs=40, n_tokens=1,
                     kv_size=64, n_stream=1, evict_prob=1.0)
    (co, cs), (go, gs) = cpu_and_gpu(case)
    assert rel_err(go, co) < TOL and rel_err(gs, cs) < TOL


@pytest.mark.cuda
def test_cuda_rejects_other_head_dims(cuda):
    case = make_case(np.random.default_rng(4), "dn", d=40, n_tokens=3)
    with pytest.raises(ValueError, match="handles d in"):
        native.memory_step(**case.kwargs(), device="cuda")


@pytest.mark.cuda
def test_cuda_timing_runs(cuda):
    case = make_case(np.random.default_rng(13), "gdn", d=128, n_tokens=1, evict_prob=1.0)
    ms = native.time_cuda(native.prepare_step(**case.kwargs()), n_iter=5)
    assert 0.0 < ms < 1000.0
