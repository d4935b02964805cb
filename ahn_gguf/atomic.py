"""Writing files so that a reader never sees half of one: the project's one atomic-write helper.

Everything the project writes for a user (GGUF files, session files, reports, training logs and
checkpoints, staged downloads) goes through `atomic_output` (a temporary file beside the target,
renamed over it only when the block completes; any exception, KeyboardInterrupt included,
removes the temporary file and leaves an existing target untouched) or its two shorthands.
Folders that are built whole (extracted archives, model folders, build trees) are staged in a
temporary folder and renamed into place the same way, by their builders.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path


def temp_path(out: Path, tag: str) -> Path:
    """A fresh, unique file name in the output's folder (created empty)."""
    fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=f".{tag}.tmp")
    os.close(fd)
    return Path(name)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_output(out: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `out`; rename it to `out` only if the block completes."""
    out = Path(out)
    tmp = temp_path(out, "part")
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())   # mkstemp makes 0600; a finished output gets a normal file's mode
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def write_text(path: str | os.PathLike, text: str) -> Path:
    """`path.write_text(text)`, atomically (UTF-8)."""
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """`path.write_bytes(data)`, atomically."""
    with atomic_output(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
