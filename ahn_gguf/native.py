"""The AHN memory op of `native/`, from Python: build, load, call.

Two layers, as in llama-cpp-python:

* the thin one: `ffi` / `lib()` (and `cuda_lib()`), a cffi (ABI mode) mirror of
  `native/ahn_memory.h` and `native/ahn_memory_threads.h` — the declarations are read
  from those headers, so they cannot drift;
* the friendly one: `memory_step(...)` / `prepare_step(...)` on numpy arrays, which
  checks shapes, dtypes, strides and index ranges and raises ValueError before any C
  code could read out of bounds.

The shared library is compiled on first use with the system C compiler (`$CC`, else
`cc`), each SIMD file with its own flags, and cached under
`$AHN_GGUF_CACHE/native/<hash>/` (default `~/.cache/ahn-gguf`); the hash covers the
sources, the flags and the compiler's version, so an edit rebuilds and nothing else does.

Array layouts (numpy shapes; strides are free unless said otherwise):

    q        (n_seqs, n_tokens, H, d)      float32, last axis contiguous
    k_cache  (n_stream, kv_size, H_kv, d)  float32 | float16   (or without the stream axis)
    v_cache  same as k_cache; with v_transposed=True the array is the physical transposed
             cache of llama.cpp without flash attention: (n_stream, H_kv, d, kv_size)
    gates    (n_stream, kv_size, G)        float32 | float16; G = 2H (GDN: g, beta; Mamba2: g, dt),
                                           H (DN: beta)        (or without the stream axis)
    idx      (n_seqs, n_tokens)            integer: cache row (stream*kv_size + cell) the
                                           token evicts, < 0 if none
    state    (n_seqs, H, d, d)             float32, C-contiguous, updated in place, stored
                                           TRANSPOSED: state[s, h, j, i] = M[i][j]
                                           (i = key dim, j = value dim), as ggml stores it
    out      (n_seqs, n_tokens, H, d)      float32, C-contiguous (allocated if not given)
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
import shutil
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ahn_gguf import constants
from ahn_gguf.paths import shipped_dir

try:
    import cffi
except ImportError:  # pragma: no cover - cffi is a hard dependency; keep the message clear
    cffi = None

NATIVE_DIR = Path(os.environ.get("AHN_GGUF_NATIVE_DIR", shipped_dir("native")))
CUDA_DIR = NATIVE_DIR / "cuda"
MAX_D = 256  # AHN_MAX_D in native/ahn_memory.h: k^, q^, v live in fixed stack buffers

# kernels the library may hold, best first per architecture; "scalar" runs everywhere
KERNELS = ("avx512", "avx2", "neon", "scalar")
SIMD_HEAD_DIMS = (64, 128)  # the SIMD and CUDA kernels are unrolled for these

_DTYPE_ID = {np.dtype(np.float32): 0, np.dtype(np.float16): 1}  # enum ahn_dtype


def cache_dir() -> Path:
    return Path(os.environ.get("AHN_GGUF_CACHE", Path.home() / ".cache" / "ahn-gguf")) / "native"


# --- building ---------------------------------------------------------------------------------

_COMMON_CFLAGS = ["-std=c11", "-O3", "-fPIC", "-Wall", "-Wextra"]


def _is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def c_sources() -> list[tuple[Path, list[str]]]:
    """(source, extra flags) for every file of the CPU library on this architecture."""
    x86 = _is_x86()
    simd = {
        "ahn_memory_avx2.c": ["-mavx2", "-mfma", "-mf16c"] if x86 else [],
        "ahn_memory_avx512.c": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mfma", "-mf16c"] if x86 else [],
        "ahn_memory_neon.c": [],  # baseline on aarch64; a stub elsewhere
    }
    files = [("ahn_memory.c", []), ("ahn_memory_scalar.c", []), ("ahn_memory_threads.c", ["-pthread"])]
    files += list(simd.items())
    return [(NATIVE_DIR / name, flags) for name, flags in files]


def _tool_version(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def _hash(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.hexdigest()[:16]


def _headers(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.h")) + sorted(folder.glob("*.cuh"))


def _build_cached(name: str, key_parts: list[bytes], build) -> Path:
    """Return cache_dir()/<hash>/<name>, calling build(tmp_path) only if it is missing."""
    out_dir = cache_dir() / _hash(key_parts)
    target = out_dir / name
    if target.exists():
        return target
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        tmp_lib = Path(tmp) / name
        build(Path(tmp), tmp_lib)
        os.replace(tmp_lib, target)  # atomic: concurrent builders each publish a whole file
    return target


def _run_compiler(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"building {what} failed:\n$ {' '.join(cmd)}\n{proc.stdout}{proc.stderr}")


def build_library(cc: str | None = None) -> Path:
    """Compile native/ into a shared library (cached) and return its path."""
    cc = cc or os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"C compiler {cc!r} not found (set $CC)")
    sources = c_sources()
    key = [cc.encode(), _tool_version([cc, "--version"]).encode(), platform.machine().encode()]
    key += [" ".join(_COMMON_CFLAGS).encode()]
    for src, flags in sources:
        key += [src.name.encode(), src.read_bytes(), " ".join(flags).encode()]
    key += [h.read_bytes() for h in _headers(NATIVE_DIR)]

    def build(tmp: Path, lib_path: Path) -> None:
        objs = []
        for src, flags in sources:
            obj = tmp / (src.stem + ".o")
            _run_compiler([cc, *_COMMON_CFLAGS, *flags, f"-I{NATIVE_DIR}", "-c", str(src), "-o", str(obj)], src.name)
            objs.append(str(obj))
        _run_compiler([cc, "-shared", "-o", str(lib_path), *objs, "-pthread", "-lm"], "libahn_memory")

    return _build_cached("libahn_memory.so", key, build)


# --- the thin layer: cffi declarations read from the headers ---------------------------------------


def cdef_from_header(text: str) -> str:
    """A C header -> declarations cffi can parse: comments, preprocessor lines and the
    `extern "C" {` wrapper removed, nothing else changed."""
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    lines = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#") or s == 'extern "C" {' or s == "}":
            continue
        lines.append(line)
    return "\n".join(lines)


_lock = threading.Lock()
_ffi: Any = None
_lib: Any = None
_cuda_lib: Any = None
_available: list[str] | None = None


def _new_ffi() -> Any:
    if cffi is None:
        raise RuntimeError("the native AHN op needs the 'cffi' package (pip install cffi)")
    ffi = cffi.FFI()
    ffi.cdef(cdef_from_header((NATIVE_DIR / "ahn_memory.h").read_text()))
    ffi.cdef(cdef_from_header((NATIVE_DIR / "ahn_memory_threads.h").read_text()))
    ffi.cdef(cdef_from_header((CUDA_DIR / "ahn_memory_cuda.h").read_text()))
    return ffi


def ffi() -> Any:
    global _ffi
    with _lock:
        if _ffi is None:
            _ffi = _new_ffi()
        return _ffi


def lib() -> Any:
    """The CPU library (built and cached on first use)."""
    global _lib
    f = ffi()
    with _lock:
        if _lib is None:
            _lib = f.dlopen(str(build_library()))
        return _lib


def kernel_name() -> str:
    """The kernel `kernel="auto"` uses for d in (64, 128) on this CPU (other d: scalar)."""
    return ffi().string(lib().ahn_memory_kernel_name()).decode()


def available_kernels() -> list[str]:
    """Kernels usable on this CPU, best first; always ends with "scalar"."""
    global _available
    if _available is None:
        f, L = ffi(), lib()
        probe = f.new("struct ahn_memory_args *", {"d": 64, "n_head": 1, "n_head_kv": 1, "kv_size": 1})  # no work: n_seqs = 0
        _available = [k for k in KERNELS if L.ahn_memory_step_named(k.encode(), probe, 0, 1) == 0]
    return list(_available)


# --- the friendly layer ---------------------------------------------------------------------------


def _variant_id(variant: str | int) -> int:
    if isinstance(variant, (int, np.integer)):
        if int(variant) not in constants.VARIANT_ID.values():
            raise ValueError(f"unknown AHN variant id {variant}")
        return int(variant)
    return constants.VARIANT_ID[constants.canonical_variant(variant)]


def _addr(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _check_array(name: str, a: Any, ndim: tuple[int, ...], dtypes: tuple) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy array, got {type(a).__name__}")
    if a.ndim not in ndim:
        raise ValueError(f"{name} must have {' or '.join(map(str, ndim))} dims, got shape {a.shape}")
    if a.dtype not in dtypes:
        raise ValueError(f"{name} must be {' or '.join(str(np.dtype(d)) for d in dtypes)}, got {a.dtype}")
    if any(s < 0 for s in a.strides):
        raise ValueError(f"{name} has negative strides; pass a copy (np.ascontiguousarray)")
    return a


def _span(a: np.ndarray) -> tuple[int, int]:
    """(first byte address, byte length) of the memory the array's elements occupy."""
    if a.size == 0:
        return _addr(a), 0
    return _addr(a), sum((n - 1) * s for n, s in zip(a.shape, a.strides)) + a.itemsize


@dataclass
class PreparedStep:
    """A checked, ready-to-run memory step: the args struct plus the arrays it points into.

    `run()` can be called repeatedly (benchmarks); each call advances `state` in place and
    rewrites `out`. Keep the object alive while it runs: it keeps the arrays alive.
    """

    variant: int
    args: Any               # cffi struct ahn_memory_args *
    q: np.ndarray
    k_cache: np.ndarray     # (n_stream, kv_size, H_kv, d) view, strides as given
    v_cache: np.ndarray     # same, logical layout (a transposed cache is a strided view)
    gates: np.ndarray
    idx: np.ndarray         # int32, contiguous
    state: np.ndarray
    out: np.ndarray

    @property
    def d(self) -> int:
        return int(self.args.d)

    def run(self, kernel: str = "auto", n_threads: int = 1) -> np.ndarray:
        if not isinstance(n_threads, (int, np.integer)) or n_threads < 1:
            raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
        if kernel != "auto":
            if kernel not in KERNELS:
                raise ValueError(f"unknown kernel {kernel!r}; expected 'auto' or one of {', '.join(KERNELS)}")
            if kernel not in available_kernels():
                raise ValueError(f"kernel {kernel!r} is not available on this CPU (have: {', '.join(available_kernels())})")
            if kernel != "scalar" and self.d not in SIMD_HEAD_DIMS:
                raise ValueError(f"kernel {kernel!r} handles d in {SIMD_HEAD_DIMS} only (d = {self.d}); use 'auto' or 'scalar'")
        rc = lib().ahn_memory_step_threads(kernel.encode(), self.args, int(n_threads))
        if rc != 0:
            raise RuntimeError(f"ahn_memory_step_threads({kernel!r}) returned {rc}")
        return self.out

    def run_cuda(self) -> np.ndarray:
        """The same step on the GPU: copies the arrays over, runs, copies state and out back."""
        return _run_cuda(self)


def prepare_step(
    variant: str | int,
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    gates: np.ndarray,
    idx: np.ndarray,
    state: np.ndarray,
    *,
    out: np.ndarray | None = None,
    v_transposed: bool = False,
) -> PreparedStep:
    """Check every input and fill the args struct; see the module docstring for layouts."""
    vid = _variant_id(variant)
    f32, f16 = np.dtype(np.float32), np.dtype(np.float16)
    q = _check_array("q", q, (4,), (f32,))
    k_cache = _check_array("k_cache", k_cache, (3, 4), (f32, f16))
    v_cache = _check_array("v_cache", v_cache, (3, 4), (f32, f16))
    gates = _check_array("gates", gates, (2, 3), (f32, f16))
    state = _check_array("state", state, (4,), (f32,))
    if k_cache.ndim == 3:
        k_cache = k_cache[None]
    if v_cache.ndim == 3:
        v_cache = v_cache[None]
    if v_transposed:  # physical (n_stream, H_kv, d, kv_size) -> logical (n_stream, kv_size, H_kv, d) view
        v_cache = v_cache.transpose(0, 3, 1, 2)
    if gates.ndim == 2:
        gates = gates[None]

    n_seqs, n_tokens, n_head, d = q.shape
    n_stream, kv_size, n_head_kv, d_k = k_cache.shape
    if d < 1 or d > MAX_D:
        raise ValueError(f"head dim d = {d} not supported (1 <= d <= {MAX_D})")
    if q.strides[3] != 4:
        raise ValueError("q must be contiguous along its last (head dim) axis")
    if d_k != d:
        raise ValueError(f"k_cache head dim {d_k} != q head dim {d}")
    if v_cache.shape != k_cache.shape:
        what = " (after reading it as transposed)" if v_transposed else ""
        raise ValueError(f"v_cache shape{what} {v_cache.shape} != k_cache shape {k_cache.shape}")
    if n_head_kv < 1 or n_head % n_head_kv != 0:
        raise ValueError(f"query heads {n_head} must be a multiple of KV heads {n_head_kv}")
    if kv_size < 1:
        raise ValueError("the K/V cache has no cells")
    n_gates = (1 if vid == constants.VARIANT_ID[constants.DN] else 2) * n_head
    if gates.shape != (n_stream, kv_size, n_gates):
        raise ValueError(f"gates must have shape {(n_stream, kv_size, n_gates)} (one row of {n_gates} per cache cell), got {gates.shape}")
    for name, a in (("k_cache", k_cache), ("v_cache", v_cache), ("gates", gates)):
        if any(s % a.itemsize for s in a.strides):
            raise ValueError(f"{name} strides must be multiples of its element size")

    idx = np.asarray(idx)
    if idx.shape != (n_seqs, n_tokens):
        raise ValueError(f"idx must have shape (n_seqs, n_tokens) = {(n_seqs, n_tokens)}, got {idx.shape}")
    if idx.size and not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"idx must be integers, got {idx.dtype}")
    n_rows = n_stream * kv_size
    if idx.size and int(idx.max()) >= n_rows:
        raise ValueError(f"idx holds row {int(idx.max())} but the cache has {n_rows} rows (n_stream * kv_size)")
    if n_rows > np.iinfo(np.int32).max:
        raise ValueError("the cache has more rows than an int32 index can address")
    idx32 = np.ascontiguousarray(np.maximum(idx, -1), dtype=np.int32)

    if state.shape != (n_seqs, n_head, d, d):
        raise ValueError(f"state must have shape (n_seqs, H, d, d) = {(n_seqs, n_head, d, d)}, got {state.shape}")
    if not state.flags.c_contiguous or not state.flags.writeable:
        raise ValueError("state must be C-contiguous and writeable (it is updated in place)")
    if out is None:
        out = np.empty((n_seqs, n_tokens, n_head, d), np.float32)
    out = _check_array("out", out, (4,), (f32,))
    if out.shape != (n_seqs, n_tokens, n_head, d) or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"out must be a writeable C-contiguous float32 array of shape {(n_seqs, n_tokens, n_head, d)}")
    for name, a in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("gates", gates), ("out", out)):
        if np.may_share_memory(a, state):
            raise ValueError(f"{name} overlaps state in memory")
    for name, a in (("q", q), ("k_cache", k_cache), ("v_cache", v_cache), ("gates", gates)):
        if np.may_share_memory(a, out):
            raise ValueError(f"{name} overlaps out in memory")

    f = ffi()
    args = f.new("struct ahn_memory_args *")
    args.variant, args.d, args.n_head, args.n_head_kv = vid, d, n_head, n_head_kv
    args.n_tokens, args.n_seqs, args.kv_size = n_tokens, n_seqs, kv_size
    # numpy axes (stream, cell, head, dim) -> nb[] order (dim, head, cell, stream)
    args.k = f.cast("const void *", _addr(k_cache))
    args.k_type = _DTYPE_ID[k_cache.dtype]
    args.k_nb = [k_cache.strides[3], k_cache.strides[2], k_cache.strides[1], k_cache.strides[0]]
    args.v = f.cast("const void *", _addr(v_cache))
    args.v_type = _DTYPE_ID[v_cache.dtype]
    args.v_nb = [v_cache.strides[3], v_cache.strides[2], v_cache.strides[1], v_cache.strides[0]]
    args.gates = f.cast("const void *", _addr(gates))
    args.gates_type = _DTYPE_ID[gates.dtype]
    args.gates_nb = [gates.strides[2], gates.strides[1], gates.strides[0]]
    args.idx = f.cast("const int32_t *", _addr(idx32))
    args.q = f.cast("const float *", _addr(q))
    args.q_nb = [q.strides[3], q.strides[2], q.strides[1], q.strides[0]]
    args.state = f.cast("float *", _addr(state))
    args.out = f.cast("float *", _addr(out))
    # unit axes (size 1) may carry any stride in numpy; give C a valid one instead
    for nb, a, axes in ((args.k_nb, k_cache, (3, 2, 1, 0)), (args.v_nb, v_cache, (3, 2, 1, 0)), (args.gates_nb, gates, (2, 1, 0))):
        for i, ax in enumerate(axes):
            if a.shape[ax] == 1 and (nb[i] == 0 or nb[i] % a.itemsize):
                nb[i] = a.itemsize
    msg = lib().ahn_memory_check_args(args)
    if msg != f.NULL:
        raise ValueError(f"ahn_memory_check_args: {f.string(msg).decode()}")
    return PreparedStep(vid, args, q, k_cache, v_cache, gates, idx32, state, out)


def memory_step(
    variant: str | int,
    q: np.ndarray,
    k_cache: np.ndarray,
    v_cache: np.ndarray,
    gates: np.ndarray,
    idx: np.ndarray,
    state: np.ndarray,
    *,
    out: np.ndarray | None = None,
    kernel: str = "auto",
    n_threads: int = 1,
    v_transposed: bool = False,
    device: str = "cpu",
) -> np.ndarray:
    """One AHN memory step (write evicted tokens, read with the queries) for every
    sequence; updates `state` in place and returns the readout `out` (n_seqs, n_tokens, H, d).

    kernel: "auto" (best for this CPU) or one of available_kernels(); n_threads splits the
    (sequence, head) pairs over that many C threads (the GIL is released). device="cuda"
    runs the CUDA kernel instead (kernel / n_threads are then ignored).
    """
    step = prepare_step(variant, q, k_cache, v_cache, gates, idx, state, out=out, v_transposed=v_transposed)
    if device == "cpu":
        return step.run(kernel=kernel, n_threads=n_threads)
    if device == "cuda":
        return step.run_cuda()
    raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")


# --- CUDA (standalone library for tests and benchmarks) ------------------------------------------


def nvcc_path() -> str | None:
    return shutil.which("nvcc") or (shutil.which("/usr/local/cuda/bin/nvcc"))


def cuda_device_present() -> bool:
    """A CUDA device is visible (nvidia-smi lists one). Cheap; builds nothing."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return False
    try:
        r = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return False
    return r.returncode == 0 and "GPU" in r.stdout


def local_cuda_arch() -> str:
    """sm_XY of the first visible GPU (from nvidia-smi), else nvcc's 'native'."""
    smi = shutil.which("nvidia-smi")
    if smi:
        try:
            r = subprocess.run([smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=60)
            cap = r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""
            if re.fullmatch(r"\d+\.\d+", cap):
                return "sm_" + cap.replace(".", "")
        except (OSError, subprocess.SubprocessError):
            pass
    return "native"


NVCC_FLAGS = ["-O3", "-std=c++17", "-Xcompiler", "-fPIC", "-lineinfo"]


def nvcc_command(archs: list[str], output: Path, *, shared: bool = True) -> list[str]:
    """The nvcc command line that builds native/cuda/ahn_memory_cuda.cu for `archs` (sm_XY)."""
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found")
    gencode = []
    for arch in archs:
        if arch == "native":
            gencode += ["-arch=native"]
        else:
            n = arch.removeprefix("sm_")
            gencode += ["-gencode", f"arch=compute_{n},code=sm_{n}"]
    mode = ["-shared"] if shared else ["-c"]
    return [nvcc, *NVCC_FLAGS, *gencode, *mode, f"-I{NATIVE_DIR}", str(CUDA_DIR / "ahn_memory_cuda.cu"), "-o", str(output)]


def build_cuda_library(arch: str | None = None) -> Path:
    """Compile the standalone CUDA wrapper for the local GPU (cached) and return its path."""
    arch = arch or local_cuda_arch()
    nvcc = nvcc_path()
    if nvcc is None:
        raise RuntimeError("nvcc not found: cannot build the CUDA kernel")
    key = [b"cuda", arch.encode(), _tool_version([nvcc, "--version"]).encode(), " ".join(NVCC_FLAGS).encode()]
    key += [p.read_bytes() for p in sorted(CUDA_DIR.glob("*")) if p.is_file()]
    key += [h.read_bytes() for h in _headers(NATIVE_DIR)]

    def build(tmp: Path, lib_path: Path) -> None:
        _run_compiler(nvcc_command([arch], lib_path), "libahn_memory_cuda")

    return _build_cached("libahn_memory_cuda.so", key, build)


def cuda_lib() -> Any:
    global _cuda_lib
    f = ffi()
    with _lock:
        if _cuda_lib is None:
            _cuda_lib = f.dlopen(str(build_cuda_library()))
        return _cuda_lib


def _cuda_check(rc: int, what: str) -> None:
    if rc != 0:
        L, f = cuda_lib(), ffi()
        raise RuntimeError(f"{what} failed: {f.string(L.ahn_cuda_error_string(rc)).decode()} ({rc})")


class _DeviceCopies:
    """Device copies of the host arrays a PreparedStep points into, freed on exit."""

    def __init__(self) -> None:
        self.ptrs: list[Any] = []

    def __enter__(self) -> _DeviceCopies:
        return self

    def __exit__(self, *exc: Any) -> None:
        L = cuda_lib()
        for p in self.ptrs:
            L.ahn_cuda_free(p)

    def upload(self, a: np.ndarray) -> tuple[int, int]:
        """Copy the bytes under `a` (its whole strided span) to the GPU; (device addr, span)."""
        L, f = cuda_lib(), ffi()
        start, n = _span(a)
        p = L.ahn_cuda_alloc(max(n, 4))
        if p == f.NULL:
            raise RuntimeError(f"cudaMalloc of {n} bytes failed")
        self.ptrs.append(p)
        _cuda_check(L.ahn_cuda_upload(p, f.cast("void *", start), n), "upload")
        return int(f.cast("uintptr_t", p)), n


def _device_args(step: PreparedStep, copies: _DeviceCopies) -> Any:
    """A copy of step.args whose pointers address device copies of the same arrays."""
    f = ffi()
    dev = f.new("struct ahn_memory_args *")
    f.memmove(dev, step.args, f.sizeof("struct ahn_memory_args"))

    def moved(a: np.ndarray, host_ptr: Any) -> int:
        # the array's first element may sit inside its span (views): keep the offset
        base, _ = copies.upload(a)
        return base + (int(f.cast("uintptr_t", host_ptr)) - _span(a)[0])

    dev.k = f.cast("const void *", moved(step.k_cache, step.args.k))
    dev.v = f.cast("const void *", moved(step.v_cache, step.args.v))
    dev.gates = f.cast("const void *", moved(step.gates, step.args.gates))
    dev.idx = f.cast("const int32_t *", moved(step.idx, step.args.idx))
    dev.q = f.cast("const float *", moved(step.q, step.args.q))
    dev.state = f.cast("float *", moved(step.state, step.args.state))
    dev.out = f.cast("float *", moved(step.out, step.args.out))
    return dev


def _run_cuda(step: PreparedStep) -> np.ndarray:
    L, f = cuda_lib(), ffi()
    with _DeviceCopies() as copies:
        dev = _device_args(step, copies)
        rc = L.ahn_memory_step_cuda(dev, f.NULL)
        if rc == -2:
            raise ValueError(f"the CUDA kernel handles d in {SIMD_HEAD_DIMS} only (d = {step.d})")
        _cuda_check(rc, "ahn_memory_step_cuda")
        _cuda_check(L.ahn_cuda_synchronize(), "the CUDA memory step")
        for host, devp in ((step.state, dev.state), (step.out, dev.out)):
            _cuda_check(L.ahn_cuda_download(f.cast("void *", _addr(host)), f.cast("void *", devp), host.nbytes), "download")
    return step.out


def time_cuda(step: PreparedStep, n_iter: int = 20) -> float:
    """Mean milliseconds of one CUDA memory step, on device copies of `step`'s arrays (the
    state advances on the device only; the host arrays are left as they are)."""
    L = cuda_lib()
    with _DeviceCopies() as copies:
        ms = L.ahn_memory_time_cuda(_device_args(step, copies), int(n_iter))
    if ms < 0:
        raise RuntimeError(f"timing the CUDA step failed ({ms})")
    return float(ms)
