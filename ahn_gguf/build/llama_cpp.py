"""Build and install the patched llama-cpp-python that runs AHN models (`ahn-gguf build`).

The pinned llama-cpp-python 0.3.36 sdist (it vendors llama.cpp 0c1e57098) is unpacked, the
two ordered patch series are applied -- `patches/llama.cpp/` (rooted at llama.cpp, so that a
llama.cpp checkout of that commit takes them with `git am`) to its `vendor/llama.cpp/`, and
`patches/llama-cpp-python/` (the ctypes bindings) to the rest -- the AHN kernels of `native/`
are copied into ggml, and a wheel is built with scikit-build-core and installed as `llama_cpp`.

The wheel is cached under `$AHN_GGUF_CACHE/llama-cpp-python/<key>/`, the key being a hash
of everything that goes into it (sdist, patches, native sources, build flags): a repeat
build, or CI with a warm cache, only reinstalls it. The installed package carries its key in
its version (`0.3.36+ahn.<key>`), so an up-to-date install is not even reinstalled.

Build flags: `-march=native` is never used. ggml's AMX int8 path, which `-march=native`
turns on for CPUs reporting AMX, crashes `llama_decode` on such machines (docs/DESIGN.md);
instead the x86 SIMD levels the CPU has (AVX2, FMA, F16C, AVX-512, ...) are named one by
one, AMX excluded.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path

from ahn_gguf.errors import AHNError
from ahn_gguf.paths import NATIVE_DIR, PATCHES_DIR
from ahn_gguf.build.pins import SDIST_ROOT, SDIST_SHA256, cache_dir, sdist_path

# bump when the build procedure itself changes in a way the key would not see
BUILD_RECIPE = 2

# the native files that go into ggml: the kernels and their dispatcher (not the standalone
# thread pool or self-test, which belong to the cffi binding)
NATIVE_CPU_SOURCES = (
    "ahn_memory.h", "ahn_memory_check.h", "ahn_memory_ggml.h",
    "ahn_memory_common.h", "ahn_memory_kernels.h", "ahn_memory_simd_loop.h",
    "ahn_memory.c", "ahn_memory_scalar.c", "ahn_memory_avx2.c", "ahn_memory_avx512.c",
    "ahn_memory_neon.c",
)
NATIVE_CUDA_SOURCES = ("cuda/ahn_memory_cuda.cuh",)
# the headers both backends' adapters include (ggml-cuda/ahn/ gets its own copy of them)
NATIVE_SHARED_HEADERS = ("ahn_memory.h", "ahn_memory_check.h", "ahn_memory_ggml.h")

# llama-cpp-python extras the build does not need: multimodal (mtmd) and tools
BASE_CMAKE_ARGS = (
    "-DLLAVA_BUILD=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_TOOLS=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_CURL=OFF",
)

# /proc/cpuinfo flag -> ggml option (x86); AMX deliberately absent
X86_FLAGS = (
    ("avx", "GGML_AVX"),
    ("avx2", "GGML_AVX2"),
    ("fma", "GGML_FMA"),
    ("f16c", "GGML_F16C"),
    ("bmi2", "GGML_BMI2"),
    ("avx_vnni", "GGML_AVX_VNNI"),
)
X86_AVX512 = ("avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw")
X86_AVX512_EXT = (("avx512_vnni", "GGML_AVX512_VNNI"), ("avx512_bf16", "GGML_AVX512_BF16"), ("avx512vbmi", "GGML_AVX512_VBMI"))


class BuildError(AHNError, RuntimeError):
    """The patched llama-cpp-python could not be built or installed."""


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_cmake_args(cpu_flags: set[str] | None = None, machine: str | None = None) -> list[str]:
    """CMake options for the CPU backend: explicit SIMD levels, never -march=native or AMX."""
    machine = machine or platform.machine()
    if machine not in ("x86_64", "AMD64", "i686"):
        # the AMX crash is x86-only; elsewhere ggml's native detection is the sensible default
        return []
    flags = _cpu_flags() if cpu_flags is None else cpu_flags
    args = ["-DGGML_NATIVE=OFF", "-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"]
    for flag, opt in X86_FLAGS:
        args.append(f"-D{opt}={'ON' if flag in flags else 'OFF'}")
    has_avx512 = all(f in flags for f in X86_AVX512)
    args.append(f"-DGGML_AVX512={'ON' if has_avx512 else 'OFF'}")
    for flag, opt in X86_AVX512_EXT:
        args.append(f"-D{opt}={'ON' if has_avx512 and flag in flags else 'OFF'}")
    return args


@dataclass(frozen=True)
class BuildConfig:
    cuda: bool = False
    cuda_archs: str = "80;90"
    jobs: int = 0

    def cmake_args(self) -> list[str]:
        args = [*BASE_CMAKE_ARGS, *cpu_cmake_args()]
        if self.cuda:
            args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={self.cuda_archs}"]
        return args


# the two series: (folder under patches/, where it applies inside the sdist)
PATCH_SERIES = (("llama.cpp", "vendor/llama.cpp"), ("llama-cpp-python", "."))


def patch_series(name: str) -> list[Path]:
    """One series, in order (file names start with their position)."""
    patches = sorted((PATCHES_DIR / name).glob("*.patch"))
    if not patches:
        raise BuildError(f"no patches in {PATCHES_DIR / name}")
    return patches


def patch_files() -> list[Path]:
    """Both series, llama.cpp's first: everything the build applies."""
    return [p for name, _ in PATCH_SERIES for p in patch_series(name)]


def native_files(cfg: BuildConfig) -> list[Path]:
    names = list(NATIVE_CPU_SOURCES) + (list(NATIVE_CUDA_SOURCES) if cfg.cuda else [])
    missing = [n for n in names if not (NATIVE_DIR / n).is_file()]
    if missing:
        raise BuildError(f"native sources missing: {', '.join(missing)}")
    return [NATIVE_DIR / n for n in names]


def native_destinations(rel: Path, cuda: bool) -> list[Path]:
    """Where the build puts native/<rel>, relative to llama.cpp's ggml/src: the C kernels under
    ggml-cpu/ahn/, the CUDA kernels under ggml-cuda/ahn/ (they include "../ahn_memory.h"), and the
    shared headers in both; the patches' CMake and includes expect exactly these places."""
    if rel.parts[0] == "cuda":
        return [Path("ggml-cuda") / "ahn" / rel]
    shared = cuda and rel.name in NATIVE_SHARED_HEADERS
    return [Path("ggml-cpu") / "ahn" / rel] + ([Path("ggml-cuda") / "ahn" / rel] if shared else [])


def build_key(cfg: BuildConfig) -> str:
    """Hash of every input of the wheel: a different key means a different build."""
    h = hashlib.sha256()
    h.update(f"recipe={BUILD_RECIPE}\nsdist={SDIST_SHA256}\n".encode())
    h.update(("cmake=" + " ".join(cfg.cmake_args()) + "\n").encode())
    h.update(f"platform={sys.platform}-{platform.machine()}\n".encode())
    # names relative to their folder: a checkout and an installed wheel give the same key
    for folder, paths in (("patches", patch_files()), ("native", native_files(cfg))):
        for path in paths:
            h.update(f"{folder}/{path.relative_to(PATCHES_DIR if folder == 'patches' else NATIVE_DIR).as_posix()}\n".encode())
            h.update(hashlib.sha256(path.read_bytes()).hexdigest().encode() + b"\n")
    return h.hexdigest()[:16]


def installed_key() -> str | None:
    """The build key of the installed llama_cpp, if it is one of ours."""
    try:
        from importlib.metadata import PackageNotFoundError, version
    except ImportError:  # pragma: no cover
        return None
    try:
        v = version("llama_cpp_python")
    except PackageNotFoundError:
        return None
    _, _, local = v.partition("+")
    return local[len("ahn."):] if local.startswith("ahn.") else None


def _run(cmd: list[str], cwd: Path | None = None, env: dict | None = None, log: Path | None = None) -> None:
    print("+ " + " ".join(cmd), flush=True)
    if log is None:
        proc = subprocess.run(cmd, cwd=cwd, env=env)
    else:
        with open(log, "w") as out:
            proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            assert proc.stdout is not None
            for line in proc.stdout:
                out.write(line)
                out.flush()
                _progress(line)
            proc.wait()
    if proc.returncode != 0:
        tail = ""
        if log is not None and log.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise BuildError(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{tail}")


def _progress(line: str) -> None:
    """Echo ninja's [n/N] progress lines on one terminal line, errors in full."""
    s = line.rstrip()
    if s.startswith("[") and "/" in s.split("]")[0]:
        msg = s[:110]
        if sys.stderr.isatty():
            print(f"\r\033[K{msg}", end="", file=sys.stderr, flush=True)
        elif s.split("]")[0].endswith("0"):  # every tenth line on a log
            print(msg, file=sys.stderr, flush=True)
    elif "error" in s.lower() and "werror" not in s.lower():
        print(s, file=sys.stderr, flush=True)


def prepare_source(dest: Path, cfg: BuildConfig, key: str) -> Path:
    """Unpack the sdist into dest, apply the patches in order, copy native/ in; returns the source root."""
    with tarfile.open(sdist_path()) as tf:
        tf.extractall(dest, filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dest)
    src = dest / SDIST_ROOT
    vendor_git = src / "vendor" / "llama.cpp" / ".git"
    if vendor_git.is_file():
        vendor_git.unlink()  # a submodule pointer to a .git that the sdist does not ship

    for name, where in PATCH_SERIES:
        for patch in patch_series(name):
            # --check first, so a patch that does not apply leaves a clear message, not a half tree
            for check in (True, False):
                cmd = ["git", "apply", "-p1", "--whitespace=nowarn", *([f"--directory={where}"] if where != "." else []),
                       *(["--check"] if check else []), str(patch)]
                proc = subprocess.run(cmd, cwd=src, capture_output=True, text=True)
                if proc.returncode != 0:
                    raise BuildError(f"patch {name}/{patch.name} does not apply to {SDIST_ROOT}/{where}:\n{proc.stderr}")

    ggml_src = src / "vendor" / "llama.cpp" / "ggml" / "src"
    for path in native_files(cfg):
        for target in native_destinations(path.relative_to(NATIVE_DIR), cfg.cuda):
            (ggml_src / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, ggml_src / target)

    # the key in the version marks the installed package as this exact build
    init = src / "llama_cpp" / "__init__.py"
    text = init.read_text()
    version_line = next(line for line in text.splitlines() if line.startswith("__version__"))
    base_version = version_line.split("=", 1)[1].strip().strip("\"'")
    init.write_text(text.replace(version_line, f'__version__ = "{base_version}+ahn.{key}"'))
    return src


def build_wheel(cfg: BuildConfig, key: str, out_dir: Path) -> Path:
    """Build the wheel into out_dir (atomically: a failed build leaves nothing there)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ahn-build-", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        src = prepare_source(tmp / "src", cfg, key)
        env = dict(os.environ)
        env["CMAKE_ARGS"] = " ".join(cfg.cmake_args())
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(cfg.jobs or os.cpu_count() or 2)
        log = tmp / "build.log"
        print(f"building llama-cpp-python with the AHN patches (key {key}); this takes several minutes", flush=True)
        print(f"CMAKE_ARGS={env['CMAKE_ARGS']}", flush=True)
        _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
              "-w", str(tmp / "wheel"), str(src)], env=env, log=log)
        wheels = list((tmp / "wheel").glob("*.whl"))
        if len(wheels) != 1:
            raise BuildError(f"expected one wheel, found {wheels}")
        staged = tmp / "staged"
        staged.mkdir()
        shutil.move(str(wheels[0]), staged / wheels[0].name)
        shutil.copy2(log, staged / "build.log")
        (staged / "build.json").write_text(json.dumps({"key": key, "cmake_args": cfg.cmake_args()}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return next(out_dir.glob("*.whl"))


def ensure_built(cfg: BuildConfig, force: bool = False) -> Path:
    """The cached wheel for cfg, building it if needed."""
    key = build_key(cfg)
    out_dir = cache_dir() / "llama-cpp-python" / key
    wheels = list(out_dir.glob("*.whl")) if out_dir.is_dir() else []
    if wheels and not force:
        return wheels[0]
    return build_wheel(cfg, key, out_dir)


def install(cfg: BuildConfig, force: bool = False) -> str:
    """Build (or reuse) and install the patched llama-cpp-python; returns the build key."""
    key = build_key(cfg)
    if not force and installed_key() == key:
        print(f"patched llama-cpp-python already installed (key {key})")
        return key
    wheel = ensure_built(cfg, force=force)
    _run([sys.executable, "-m", "pip", "install", "--no-deps", "--force-reinstall", str(wheel)])
    print(f"installed {wheel.name} (key {key})")
    return key


# --- llama.cpp's own programs, from the same patched tree and flags ---------------------------

# what `ahn-gguf build --tools` puts into the environment's bin/: they run AHN GGUFs as they run any other
TOOLS = ("llama-server", "llama-cli", "llama-completion", "llama-perplexity", "llama-bench", "rpc-server")
# installed name -> llama.cpp's CMake target (its binary has the target's name)
TOOL_TARGETS = {t: t for t in TOOLS} | {"rpc-server": "ggml-rpc-server"}
# static binaries (no libllama to find at run time); RPC on (the protocol patch makes it compile);
# nothing fetched at build time (no prebuilt web UI, no curl/OpenSSL)
TOOLS_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF", "-DGGML_RPC=ON",
    "-DLLAMA_BUILD_COMMON=ON", "-DLLAMA_BUILD_TOOLS=ON", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_CURL=OFF", "-DLLAMA_OPENSSL=OFF",
)


def tools_cmake_args(cfg: BuildConfig) -> list[str]:
    args = [*TOOLS_CMAKE_ARGS, *cpu_cmake_args()]
    if cfg.cuda:
        args += ["-DGGML_CUDA=ON", f"-DCMAKE_CUDA_ARCHITECTURES={cfg.cuda_archs}"]
    return args


def tools_key(cfg: BuildConfig) -> str:
    """The wheel's key (sources, patches, native, CPU flags) plus the tools' own CMake options."""
    h = hashlib.sha256(f"tools\n{build_key(cfg)}\n{' '.join(tools_cmake_args(cfg))}\n{' '.join(TOOLS)}\n".encode())
    return h.hexdigest()[:16]


def ensure_tools(cfg: BuildConfig, force: bool = False) -> Path:
    """The cached folder holding TOOLS for cfg, building them if needed (several minutes)."""
    key = tools_key(cfg)
    out_dir = cache_dir() / "llama-cpp-tools" / key
    if not force and all((out_dir / "bin" / t).is_file() for t in TOOLS):
        return out_dir / "bin"
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ahn-tools-", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        src = prepare_source(tmp / "src", cfg, build_key(cfg)) / "vendor" / "llama.cpp"
        build = tmp / "build"
        jobs = str(cfg.jobs or os.cpu_count() or 2)
        print(f"building llama.cpp's {', '.join(TOOLS)} with the AHN patches (key {key}); this takes several minutes", flush=True)
        _run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", *tools_cmake_args(cfg)], log=tmp / "cmake.log")
        _run(["cmake", "--build", str(build), "-j", jobs, "--target", *TOOL_TARGETS.values()], log=tmp / "build.log")
        staged = tmp / "staged"
        (staged / "bin").mkdir(parents=True)
        for name, target in TOOL_TARGETS.items():
            shutil.copy2(build / "bin" / target, staged / "bin" / name)
        shutil.copy2(tmp / "build.log", staged / "build.log")
        (staged / "build.json").write_text(json.dumps({"key": key, "cmake_args": tools_cmake_args(cfg)}, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return out_dir / "bin"


def install_tools(cfg: BuildConfig, force: bool = False) -> list[Path]:
    """Build (or reuse) TOOLS and copy them into this environment's scripts folder (the venv's bin/)."""
    import sysconfig

    src = ensure_tools(cfg, force=force)
    dest = Path(sysconfig.get_path("scripts"))
    installed = []
    for t in TOOLS:
        target = dest / t
        tmp = target.with_name(f".{t}.tmp")
        shutil.copy2(src / t, tmp)
        os.replace(tmp, target)   # a running server keeps its old binary; a new start gets this one
        installed.append(target)
    print(f"installed {', '.join(TOOLS)} into {dest} (key {tools_key(cfg)})")
    return installed


# --- developer helpers: a git tree to edit the patches in, and re-export them ----------------


DEV_GIT = ["git", "-c", "user.name=ahn-gguf", "-c", "user.email=dev@ahn-gguf.local"]


def _git(repo: Path, *args: str) -> str:
    proc = subprocess.run([*DEV_GIT, *args], cwd=repo, capture_output=True, text=True)
    if proc.returncode != 0:
        raise BuildError(f"git {' '.join(args)} in {repo} failed:\n{proc.stderr.strip()}")
    return proc.stdout


def make_dev_tree(dest: Path) -> None:
    """Two git repositories to edit the series in, one commit per patch on a pristine first commit:

    DEST/llama.cpp          the sdist's vendor tree (llama.cpp 0c1e57098) + patches/llama.cpp/,
                            with native/ copied into ggml (untracked), so cmake can build it as is;
    DEST/llama-cpp-python   the rest of the sdist + patches/llama-cpp-python/, its vendor/llama.cpp
                            a link to the first (untracked), so `pip install` builds the edited state.
    """
    if dest.exists():
        raise BuildError(f"{dest} exists")
    dest.mkdir(parents=True)
    with tarfile.open(sdist_path()) as tf:
        tf.extractall(dest / ".x", filter="data") if hasattr(tarfile, "data_filter") else tf.extractall(dest / ".x")
    bindings, llama = dest / "llama-cpp-python", dest / "llama.cpp"
    shutil.move(str(dest / ".x" / SDIST_ROOT), bindings)
    shutil.rmtree(dest / ".x")
    shutil.move(str(bindings / "vendor" / "llama.cpp"), llama)
    (llama / ".git").unlink(missing_ok=True)  # a submodule pointer to a .git that the sdist does not ship
    shutil.rmtree(bindings / ".git", ignore_errors=True)  # the sdist ships upstream's (partial) .git
    (bindings / "vendor" / "llama.cpp").symlink_to(Path("..") / ".." / "llama.cpp")

    for (name, _), repo in zip(PATCH_SERIES, (llama, bindings)):
        _git(repo, "init", "-q")
        exclude = repo / ".git" / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        exclude.write_text("/vendor/llama.cpp\n" if repo == bindings else "".join(
            f"/ggml/src/{b}/ahn/\n" for b in ("ggml-cpu", "ggml-cuda")))
        _git(repo, "add", "-A", "-f", ".") if repo == llama else _git(repo, "add", "-A", ".")
        _git(repo, "commit", "-qm", f"pristine {'llama.cpp 0c1e57098 (the vendor tree of ' + SDIST_ROOT + ')' if repo == llama else SDIST_ROOT}")
        for patch in patch_series(name):
            _git(repo, "am", "-q", "--keep-cr", str(patch))
    for path in native_files(BuildConfig(cuda=True)):
        for target in native_destinations(path.relative_to(NATIVE_DIR), cuda=True):
            (llama / "ggml" / "src" / target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, llama / "ggml" / "src" / target)
    print(f"dev trees at {llama} and {bindings}: edit, commit (one commit per patch; `git rebase -i` to amend one),\n"
          f"then `ahn-gguf build --export-patches {dest}`")


def export_patches(dest: Path) -> None:
    """Write the commits after each dev repository's pristine one back as patches/<series>/NNNN-*.patch."""
    written = []
    for name, _ in PATCH_SERIES:
        repo = dest / name
        if not (repo / ".git").is_dir():
            raise BuildError(f"{repo} is not a dev tree made by `ahn-gguf build --dev-tree {dest}`")
        root = _git(repo, "rev-list", "--max-parents=0", "HEAD").split()[0]
        with tempfile.TemporaryDirectory() as tmp:
            _git(repo, "format-patch", "-q", "--no-signature", "--zero-commit", "--no-numbered", "-o", tmp, f"{root}..HEAD")
            new = sorted(Path(tmp).glob("*.patch"))
            if not new:
                raise BuildError(f"no commits after the pristine tree in {repo}")
            series = PATCHES_DIR / name
            series.mkdir(parents=True, exist_ok=True)
            for old in series.glob("*.patch"):
                old.unlink()
            for p in new:
                shutil.copy2(p, series / p.name)
        written.append(f"{len(new)} to {series}")
    print("exported " + ", ".join(written))


# --- CLI ---------------------------------------------------------------------------------


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Build llama-cpp-python 0.3.36 from its sdist with the AHN patches (patches/llama.cpp/ on its vendored "
            "llama.cpp 0c1e57098, patches/llama-cpp-python/ on the bindings) and "
            "kernels (native/), and install it into this Python as `llama_cpp`. The wheel is "
            "cached by a hash of its inputs; an unchanged install is left as is."
        ),
        epilog="examples:\n  ahn-gguf build\n  ahn-gguf build --tools   # + llama-server, llama-cli, ... in this venv's bin/\n"
               "  ahn-gguf build --cuda --cuda-archs 89\n  ahn-gguf build --print-key\n"
               "  ahn-gguf build --print-cmake   # CMake options for your own llama.cpp build with patches/llama.cpp/\n"
               "  ahn-gguf build --dev-tree ../dev && ahn-gguf build --export-patches ../dev   # edit the patches",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--cuda", action="store_true", help="also build the CUDA backend (GGML_CUDA=ON; needs nvcc)")
    p.add_argument("--cuda-archs", default="80;90", help="CMAKE_CUDA_ARCHITECTURES for --cuda (default: %(default)s)")
    p.add_argument("--jobs", type=int, default=0, help="parallel compile jobs (default: all cores)")
    p.add_argument("--force", action="store_true", help="rebuild and reinstall even if cached/installed")
    p.add_argument("--wheel-only", action="store_true", help="build (or find) the cached wheel, print its path, do not install")
    p.add_argument("--tools", action="store_true",
                   help=f"also build llama.cpp's {', '.join(TOOLS)} from the same patched tree and flags, "
                        "and install them into this environment's bin/ (cached like the wheel)")
    p.add_argument("--print-key", action="store_true", help="print the build key of this checkout and exit")
    p.add_argument("--print-cmake", action="store_true",
                   help="print the CMake options for this CPU (the SIMD levels named one by one, AMX off) and exit: "
                        "for building your own llama.cpp with patches/llama.cpp/")
    p.add_argument("--dev-tree", metavar="DIR", type=Path,
                   help="developers: DIR/llama.cpp and DIR/llama-cpp-python, git repositories with one commit per patch")
    p.add_argument("--export-patches", metavar="DIR", type=Path,
                   help="developers: write the commits of DIR's two repositories back to patches/")
    p.set_defaults(func=_main)


def _main(args) -> int:
    cfg = BuildConfig(cuda=args.cuda, cuda_archs=args.cuda_archs, jobs=args.jobs)
    if args.dev_tree:
        make_dev_tree(args.dev_tree)
        return 0
    if args.export_patches:
        export_patches(args.export_patches)
        return 0
    if args.print_key:
        print(build_key(cfg))
        return 0
    if args.print_cmake:
        cuda = [a for a in cfg.cmake_args() if "CUDA" in a]
        print(" ".join([*cpu_cmake_args(), *cuda]))
        return 0
    if args.wheel_only:
        print(ensure_built(cfg, force=args.force))
        return 0
    install(cfg, force=args.force)
    if args.tools:
        install_tools(cfg, force=args.force)
    return 0
