"""The native AHN memory op (native/, through ahn_gguf.native) against the reference.

The reference is the project's per-token loop, ahn_gguf.reference.recurrence.naive_scan
(float32 torch), fed K/V rows gathered by idx and repeat-interleaved to query heads;
tests/helpers/native_cases.numpy_scan (float64, written from docs/AHN-SPEC.md) stands in if that module
is missing, and the two are checked against each other.

Tolerances, all as max |x - ref| / max |ref| over the whole output or state tensor
(tests/helpers/native_cases.rel_err):
  * every kernel vs the reference: 1e-5. Both accumulate in float32; measured errors
    are < 1e-6 up to T = 300, so this is ~10x headroom, while a wrong gate, norm eps,
    head mapping or row shows up as errors of 1e-2 or more.
  * each SIMD kernel vs the scalar kernel: 1e-5 (same float32 math, different
    summation order).
  * threads: bit-identical (a (sequence, head) unit always runs the same code).
F16 K/V and F16 gates: the reference is fed the very F16 values the kernel reads (converted
exactly), so the same tolerances apply.
"""

from __future__ import annotations

import dataclasses
import os
import threading

import numpy as np
import pytest

from ahn_gguf import constants, native
from tests.helpers.native_cases import Case, make_case, naive_scan, numpy_scan, reference, rel_err

TOL_REF = 1e-5
TOL_KERNELS = 1e-5
VARIANTS = [constants.GDN, constants.DN, constants.MAMBA2]


@pytest.fixture(scope="module")
def kernels() -> list[str]:
    ks = native.available_kernels()
    assert ks[-1] == "scalar"
    return ks


def run_kernel(case: Case, kernel: str, n_threads: int = 1):
    kw = case.kwargs()
    out = native.memory_step(**kw, kernel=kernel, n_threads=n_threads)
    return out, kw["state"]


def check_all_kernels(case: Case, kernels: list[str]) -> None:
    """Every kernel that handles the case == the reference, and SIMD == scalar."""
    ref_out, ref_state = reference(case)
    ks = kernels if case.meta["d"] in native.SIMD_HEAD_DIMS else ["scalar"]
    results = {k: run_kernel(case, k) for k in ks + ["auto"]}
    for k, (out, state) in results.items():
        assert rel_err(out, ref_out) < TOL_REF, f"{k}: readout differs from the reference"
        assert rel_err(state, ref_state) < TOL_REF, f"{k}: final state differs from the reference"
    s_out, s_state = results["scalar"]
    for k, (out, state) in results.items():
        assert rel_err(out, s_out) < TOL_KERNELS, f"{k} vs scalar: readout"
        assert rel_err(state, s_state) < TOL_KERNELS, f"{k} vs scalar: state"


# --- the main table: variants x head dims x GQA ratios x token counts -------------------------


@pytest.mark.parametrize("n_tokens", [1, 2, 63, 300])
@pytest.mark.parametrize("n_rep", [1, 2, 7])
@pytest.mark.parametrize("d", [64, 128])
@pytest.mark.parametrize("variant", VARIANTS)
def test_matches_reference(variant, d, n_rep, n_tokens, kernels):
    rng = np.random.default_rng([d, n_rep, n_tokens, VARIANTS.index(variant)])
    case = make_case(rng, variant, d=d, n_rep=n_rep, n_head_kv=2 if n_rep < 7 else 1, n_seqs=3,
                     n_tokens=n_tokens, kv_size=max(32, n_tokens), n_stream=2)
    check_all_kernels(case, kernels)


@pytest.mark.parametrize("d", [40, 8, 200])
@pytest.mark.parametrize("variant", VARIANTS)
def test_other_head_dims_use_scalar(variant, d, kernels):
    """d outside {64, 128}: 'auto' falls back to the scalar kernel, which handles any d <= 256."""
    case = make_case(np.random.default_rng(d), variant, d=d, n_rep=2, n_tokens=17)
    check_all_kernels(case, kernels)


@pytest.mark.parametrize("v_transposed", [False, True])
@pytest.mark.parametrize("kv_dtype", [np.float32, np.float16])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d", [64, 128])
def test_cache_layouts(variant, d, kv_dtype, v_transposed, kernels):
    """F16 / F32 K and V, a transposed V cache, rows scrambled over 3 streams."""
    rng = np.random.default_rng([d, int(v_transposed), np.dtype(kv_dtype).itemsize])
    case = make_case(rng, variant, d=d, n_rep=2, n_seqs=2, n_tokens=40, kv_size=50, n_stream=3,
                     kv_dtype=kv_dtype, v_transposed=v_transposed)
    assert case.k_cache.dtype == kv_dtype
    check_all_kernels(case, kernels)


@pytest.mark.parametrize("n_tokens", [1, 37])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("d", [64, 128, 40])
def test_f16_gates(variant, d, n_tokens, kernels):
    """An F16 gate store (ahn.memory_type = f16) read in place by every kernel, F16 K/V beside it,
    strided rows over 2 streams; d = 40 takes the scalar kernel."""
    rng = np.random.default_rng([d, n_tokens, VARIANTS.index(variant), 16])
    case = make_case(rng, variant, d=d, n_rep=2, n_seqs=2, n_tokens=n_tokens, kv_size=48, n_stream=2,
                     kv_dtype=np.float16, gates_dtype=np.float16)
    assert case.gates.dtype == np.float16 and not case.gates.flags.c_contiguous
    check_all_kernels(case, kernels)
    # the same gates widened to F32 beforehand (what the graph's cast did before): the same result
    wide = dataclasses.replace(case, gates=case.gates.astype(np.float32))
    for k in (kernels if d in native.SIMD_HEAD_DIMS else ["scalar"]):
        out16, st16 = run_kernel(case, k)
        out32, st32 = run_kernel(wide, k)
        assert np.array_equal(out16, out32) and np.array_equal(st16, st32), k


@pytest.mark.parametrize("evict_prob", [0.0, 0.15, 1.0])
def test_eviction_patterns(evict_prob, kernels):
    """Nothing evicted (read only), sparse evictions, one per token."""
    case = make_case(np.random.default_rng(7), "gdn", d=64, n_tokens=50, evict_prob=evict_prob)
    check_all_kernels(case, kernels)
    if evict_prob == 0.0:  # read-only: the state must come back bit-identical
        for k in kernels:
            _, state = run_kernel(case, k)
            assert np.array_equal(state, case.state)


def test_zero_state_zero_queries_edge_cases(kernels):
    """Zero start state and an all-zero query row: finite results (the L2-norm eps)."""
    for variant in VARIANTS:
        case = make_case(np.random.default_rng(3), variant, d=128, n_tokens=5)
        case.state[:] = 0.0
        case.q[0, 0] = 0.0
        check_all_kernels(case, kernels)
        out, _ = run_kernel(case, "auto")
        assert np.all(np.isfinite(out))
        assert np.all(out[0, 0] == 0.0)


def test_reference_matches_naive_scan():
    """The numpy loop here and the project's PyTorch reference agree (when it exists)."""
    if naive_scan is None:
        pytest.skip("ahn_gguf.reference.recurrence.naive_scan not in this checkout; numpy_scan is the reference")
    for variant in VARIANTS:
        case = make_case(np.random.default_rng(11), variant, d=64, n_tokens=30)
        a_out, a_state = reference(case, use_naive_scan=True)
        b_out, b_state = reference(case, use_naive_scan=False)
        # naive_scan works in float32, numpy_scan in float64
        assert rel_err(a_out, b_out) < TOL_REF and rel_err(a_state, b_state) < TOL_REF


def test_numpy_reference_is_the_spec():
    """numpy_scan on a 1-head, d = 2 example worked by hand from docs/AHN-SPEC.md (GDN)."""
    k = np.array([[[3.0, 4.0]]])
    v = np.array([[[1.0, 2.0]]])
    q = np.array([[[0.0, 1.0]]])
    g = np.array([[np.log(0.5)]])
    b = np.array([[0.5]])
    M0 = np.array([[[1.0, 0.0], [0.0, 1.0]]])
    o, M = numpy_scan("gdn", q, k, v, g, b, np.array([True]), M0)
    kn = np.array([3.0, 4.0]) / np.sqrt(25.0 + 1e-6)
    Md = 0.5 * M0[0]
    delta = 0.5 * (np.array([1.0, 2.0]) - Md.T @ kn)
    M_expect = Md + np.outer(kn, delta)
    qn = np.array([0.0, 1.0]) / np.sqrt(1.0 + 1e-6)
    assert np.allclose(M[0], M_expect, rtol=1e-12)
    assert np.allclose(o[0, 0], M_expect.T @ qn / np.sqrt(2.0), rtol=1e-12)


# --- threads ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_threads", [1, 2, 3])
def test_threads_split_is_exact(n_threads, kernels):
    """ith/nth split over (sequence, head) units: any thread count gives the same bits."""
    case = make_case(np.random.default_rng(5), "gdn", d=64, n_rep=7, n_head_kv=1, n_seqs=2, n_tokens=20)
    for k in kernels + ["auto"]:
        out1, state1 = run_kernel(case, k, 1)
        outn, staten = run_kernel(case, k, n_threads)
        assert np.array_equal(out1, outn) and np.array_equal(state1, staten), k


def test_more_threads_than_units():
    case = make_case(np.random.default_rng(6), "dn", d=64, n_rep=1, n_head_kv=1, n_seqs=1, n_tokens=4)
    out1, _ = run_kernel(case, "auto", 1)
    out8, _ = run_kernel(case, "auto", 8)
    assert np.array_equal(out1, out8)


def test_python_threads_run_concurrently():
    """Calls from several Python threads (cffi drops the GIL) each get their own right answer."""
    cases = [make_case(np.random.default_rng(100 + i), "mamba2", d=128, n_tokens=30) for i in range(4)]
    expected = [run_kernel(c, "auto")[0] for c in cases]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        got[i] = run_kernel(cases[i], "auto")[0]

    ts = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(4):
        assert np.array_equal(got[i], expected[i])


# --- the library and its dispatch ---------------------------------------------------------------------


def test_kernel_names(kernels):
    assert native.kernel_name() == kernels[0]
    assert set(kernels) <= set(native.KERNELS)
    if native._is_x86():
        import platform

        flags = open("/proc/cpuinfo").read() if platform.system() == "Linux" else ""
        if " avx512bw " in flags and " avx512vl " in flags:
            assert "avx512" in kernels
        if " avx2 " in flags and " fma " in flags and " f16c " in flags:
            assert "avx2" in kernels


def test_library_is_cached(tmp_path, monkeypatch):
    """The second build_library() compiles nothing: a compiler wrapper logs every compile, the cache
    starts empty, and the library file is the same file (same inode, same mtime) afterwards."""
    import shutil
    import stat

    real = shutil.which(os.environ.get("CC", "cc"))
    log = tmp_path / "compiles.log"
    wrapper = tmp_path / "cc-logging"
    wrapper.write_text(f'#!/bin/sh\ncase " $* " in *" -c "*|*" -shared "*) echo "$*" >> {log};; esac\nexec {real} "$@"\n')
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("AHN_GGUF_CACHE", str(tmp_path / "cache"))   # native.cache_dir() = $AHN_GGUF_CACHE/native
    first = native.build_library(str(wrapper))
    compiles = log.read_text().splitlines()
    assert len(compiles) == len(native.c_sources()) + 1          # every source, then the link
    before = first.stat()
    second = native.build_library(str(wrapper))
    assert second == first and log.read_text().splitlines() == compiles   # no compiler run
    after = second.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_cdef_mirrors_header():
    """The struct cffi sees has the header's fields, in order (read from the header itself)."""
    f = native.ffi()
    fields = [name for name, _ in f.typeof("struct ahn_memory_args").fields]
    assert fields[:7] == ["variant", "d", "n_head", "n_head_kv", "n_tokens", "n_seqs", "kv_size"]
    assert fields[-2:] == ["state", "out"]
    assert f.sizeof("struct ahn_memory_args") % 8 == 0


def test_prepared_step_reruns():
    """prepare_step once, run twice == two memory_step calls (what the benchmark relies on)."""
    case = make_case(np.random.default_rng(9), "gdn", d=64, n_tokens=3)
    step = native.prepare_step(**case.kwargs())
    step.run()
    out2 = step.run().copy()
    kw = case.kwargs()
    native.memory_step(**kw)
    ref2 = native.memory_step(**kw)
    assert np.array_equal(out2, ref2) and np.array_equal(step.state, kw["state"])


# --- bad inputs raise, never crash ------------------------------------------------------------------


def _base():
    return make_case(np.random.default_rng(1), "gdn", d=64, n_rep=2, n_seqs=2, n_tokens=4, kv_size=16, n_stream=2).kwargs()


@pytest.mark.parametrize("mutate, match", [
    (lambda kw: kw.update(q=kw["q"].astype(np.float64)), "q must be float32"),
    (lambda kw: kw.update(q=np.ascontiguousarray(kw["q"][..., ::2])), "head dim"),
    (lambda kw: kw.update(q=np.swapaxes(np.swapaxes(kw["q"], 2, 3).copy(), 2, 3)), "contiguous along its last"),
    (lambda kw: kw.update(idx=np.full_like(kw["idx"], 32)), "cache has 32 rows"),
    (lambda kw: kw.update(idx=kw["idx"][:, :2]), "idx must have shape"),
    (lambda kw: kw.update(idx=kw["idx"].astype(np.float32)), "integers"),
    (lambda kw: kw.update(state=kw["state"].transpose(0, 1, 3, 2)), "C-contiguous"),
    (lambda kw: kw.update(state=kw["state"][:1]), "state must have shape"),
    (lambda kw: kw.update(gates=kw["gates"][..., :4]), "gates must have shape"),
    (lambda kw: kw.update(variant="gru"), "unknown AHN variant"),
    (lambda kw: kw.update(q=kw["q"][:, :, :3]), "must be a multiple"),
    (lambda kw: kw.update(v_cache=kw["v_cache"][:, :8]), "v_cache shape"),
    (lambda kw: kw.update(k_cache=kw["k_cache"].astype(np.int8)), "k_cache must be"),
    (lambda kw: kw.update(k_cache=kw["k_cache"][:, ::-1]), "negative strides"),
    (lambda kw: kw.update(out=kw["state"].reshape(-1)[: 2 * 4 * 4 * 64].reshape(2, 4, 4, 64)), "overlaps state"),
    (lambda kw: kw.update(q="not an array"), "numpy array"),
])
def test_bad_inputs_raise(mutate, match):
    kw = _base()
    mutate(kw)
    with pytest.raises((ValueError, TypeError), match=match):
        native.memory_step(**kw)


def test_bad_run_options_raise():
    kw = _base()
    with pytest.raises(ValueError, match="unknown kernel"):
        native.memory_step(**kw, kernel="sse9")
    with pytest.raises(ValueError, match="n_threads"):
        native.memory_step(**kw, n_threads=0)
    with pytest.raises(ValueError, match="device"):
        native.memory_step(**kw, device="tpu")
    big = make_case(np.random.default_rng(2), "dn", d=40, n_tokens=2).kwargs()
    simd = [k for k in native.available_kernels() if k != "scalar"]
    if simd:
        with pytest.raises(ValueError, match="handles d in"):
            native.memory_step(**big, kernel=simd[0])
    with pytest.raises(ValueError, match="head dim d = 300"):
        native.memory_step("dn", np.zeros((1, 1, 1, 300), np.float32), np.zeros((4, 1, 300), np.float32),
                           np.zeros((4, 1, 300), np.float32), np.zeros((4, 1), np.float32), np.zeros((1, 1), np.int32),
                           np.zeros((1, 1, 300, 300), np.float32))


def test_check_args_in_c():
    """The C-side checker catches what a ggml caller could get wrong."""
    f, L = native.ffi(), native.lib()
    a = f.new("struct ahn_memory_args *", {"d": 64, "n_head": 3, "n_head_kv": 2, "kv_size": 1, "n_tokens": 1, "n_seqs": 1})
    assert b"multiple" in f.string(L.ahn_memory_check_args(a))
    a.n_head, a.d = 4, 512
    assert b"1..256" in f.string(L.ahn_memory_check_args(a))
    a.d, a.variant = 64, 7
    assert b"variant" in f.string(L.ahn_memory_check_args(a))
    a.variant = 0
    assert b"strides" in f.string(L.ahn_memory_check_args(a))   # the layout (ahn_memory_check_layout) first
    for i in range(4):
        a.k_nb[i] = a.v_nb[i] = a.q_nb[i] = 4 * 64 ** min(i, 1)
    for i in range(3):
        a.gates_nb[i] = 4
    assert b"NULL" in f.string(L.ahn_memory_check_args(a))          # then the data pointers
    a.n_tokens = 0  # no work: nothing is read, so NULL pointers are fine
    assert L.ahn_memory_check_args(a) == f.NULL
    a.gates_type = 9
    assert b"gates must be F32 or F16" in f.string(L.ahn_memory_check_args(a))
    a.gates_type = 1  # F16 gates: 2-byte strides are fine
    for i in range(3):
        a.gates_nb[i] = 2
    assert L.ahn_memory_check_args(a) == f.NULL
    assert L.ahn_memory_step_named(b"nonesuch", a, 0, 1) == -1
    a.d = 40
    if "avx2" in native.available_kernels():
        assert L.ahn_memory_step_named(b"avx2", a, 0, 1) == -2
