"""Where the non-Python parts of ahn-gguf live: `native/` (the C and CUDA kernels) and `patches/`.

In a checkout (and an editable install) they are the repository's top-level folders. A wheel or
an sdist install carries them inside the package, as `ahn_gguf/_native` and `ahn_gguf/_patches`
(pyproject.toml maps the folders there), so `ahn-gguf build` works from either.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def shipped_dir(name: str) -> Path:
    """The folder `name` of the checkout, else the copy installed inside the package."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / name).is_dir():
        return root / name
    return PACKAGE_DIR / f"_{name}"


NATIVE_DIR = shipped_dir("native")
PATCHES_DIR = shipped_dir("patches")
