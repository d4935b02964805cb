"""The base model, converted by llama.cpp's own converter (the pinned sdist's `conversion/`).

Nothing about the base is re-implemented here: the model class that `convert_hf_to_gguf.py`
picks for the checkpoint's architecture (Qwen2Model, LlamaModel, with Llama's q/k
permutation) builds the metadata, tokenizer and tensors exactly as the stock script does. The
only change is a subclass that skips `model.layers.*.ahn.*` tensors, so that a merged folder
(base + AHN in one) converts too; for a plain base folder it changes nothing.

`stock_contents` hands the converter's prepared writer state (typed metadata, lazy tensors)
to `write_gguf` without an intermediate file; `write_stock` runs the stock `write()` itself
(the f16 file that llama.cpp's quantizer reads).
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

from ahn_gguf.build.pins import extract_member, import_gguf_py
from ahn_gguf.errors import ConversionError
from ahn_gguf.gguf_io.contents import KV, GGUFContents, TensorEntry

from .ahn import hf_architectures

# output types the stock converter writes itself (its --outtype), as gguf.LlamaFileType names
STOCK_OUTTYPES = {"f32": "ALL_F32", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16", "q8_0": "MOSTLY_Q8_0"}

_CONVERSION_MEMBER = "vendor/llama.cpp/conversion"
_SCRIPT_MEMBER = "vendor/llama.cpp/convert_hf_to_gguf.py"


def script_path() -> Path:
    """The pinned `convert_hf_to_gguf.py` (with `conversion/` and `gguf-py` beside it)."""
    extract_member("vendor/llama.cpp/gguf-py")
    extract_member(_CONVERSION_MEMBER)
    return extract_member(_SCRIPT_MEMBER)


def conversion_package():
    """The pinned `conversion` package, imported beside the pinned gguf-py."""
    import_gguf_py()
    root = extract_member(_CONVERSION_MEMBER).parent
    mod = sys.modules.get("conversion")
    if mod is not None:
        if Path(mod.__file__).resolve().is_relative_to(root.resolve()):
            return mod
        raise ImportError(f"another `conversion` module is already imported ({mod.__file__}); the pinned "
                          f"llama.cpp converter from {root} cannot be imported beside it")
    sys.path.insert(0, str(root))
    try:
        import conversion  # noqa: PLC0415
    finally:
        sys.path.remove(str(root))
    return conversion


def model_class(base_dir: Path, skip_ahn: bool):
    """The stock converter's class for this checkpoint (as convert_hf_to_gguf.main picks it)."""
    conversion = conversion_package()
    hparams = conversion.ModelBase.load_hparams(Path(base_dir), False)
    hf_arch = conversion.get_model_architecture(hparams, conversion.ModelType.TEXT)
    if hf_arch not in hf_architectures():
        raise ConversionError(f"unsupported base architecture {hf_arch!r} in {base_dir}; ahn-gguf converts "
                              f"{' and '.join(hf_architectures())} bases")
    cls = conversion.get_model_class(hf_arch)
    if not skip_ahn:
        return cls

    from ahn_gguf.reference.loading import is_ahn_key

    class BaseOnly(cls):
        model_arch = cls.model_arch  # required by TextModel.__init_subclass__

        @classmethod
        def filter_tensors(klass, item):
            return None if is_ahn_key(item[0]) else super().filter_tensors(item)

    BaseOnly.__name__ = BaseOnly.__qualname__ = cls.__name__
    return BaseOnly


def stock_model(base_dir: Path, outtype: str, fname_out: Path, *, skip_ahn: bool = False,
                model_name: str | None = None):
    """An instance of the stock model class, with convert_hf_to_gguf.main's default arguments.

    `model_name`: its --model-name (general.name); a repo id for a hub download, as its --remote
    names the model (the snapshot folder's name is a commit hash).
    """
    gguf = import_gguf_py()
    cls = model_class(base_dir, skip_ahn)
    try:
        return cls(Path(base_dir), gguf.LlamaFileType[STOCK_OUTTYPES[outtype]], Path(fname_out),
                   model_name=model_name)
    except (KeyError, ValueError, FileNotFoundError) as e:
        raise ConversionError(f"llama.cpp's converter cannot read {base_dir}: {e}") from e


def inference_mode():
    """torch.inference_mode, as convert_hf_to_gguf.main runs the conversion (lazy tensors are
    computed while the output is written, so callers keep it on until then)."""
    try:
        import torch
    except ImportError:
        return contextlib.nullcontext()
    return torch.inference_mode()


def stock_contents(model) -> GGUFContents:
    """The stock converter's metadata and (lazy) tensors, as its `write()` would write them."""
    model.prepare_tensors()          # the first two steps of ModelBase.write()
    model.prepare_metadata(vocab_only=False)
    writer = model.gguf_writer
    if len(writer.tensors) != 1 or len(writer.kv_data) != 1:
        raise ConversionError("internal: the stock converter planned a split file")
    contents = GGUFContents(alignment=writer.data_alignment)
    for key, v in writer.kv_data[0].items():
        contents.kv[key] = KV(v.type, v.value, v.sub_type)
    for name, ti in writer.tensors[0].items():
        contents.tensors.append(TensorEntry(name, ti.dtype, tuple(int(x) for x in ti.shape), ti.nbytes, ti.tensor))
    return contents


def write_stock(model) -> Path:
    """Run the stock `write()` (to the model's fname_out)."""
    model.write()
    return model.fname_out
