"""The three conversions: HF base + AHN -> GGUF, AHN -> sidecar GGUF, base GGUF + AHN -> GGUF.

All three end in `merge` + `write_gguf` (or the sidecar's own contents), so a direct
conversion is by construction "the stock llama.cpp conversion of the base, with the AHN
attached": `convert` = stock converter's output + `merge`, `attach` = a GGUF file + `merge`.

Order of work in each: resolve inputs, validate everything (options, output path, AHN
checkpoint against its base, patched quantizer when needed), then write into a temporary
file in the output's folder, renamed at the end.
"""

from __future__ import annotations

import logging
from pathlib import Path

from ahn_gguf.constants import ARCH_FOR_BASE, BASE_FOR_ARCH
from ahn_gguf.errors import ConversionError
from ahn_gguf.gguf_io.contents import KV, VT, GGUFContents, check_output, gguf, read_gguf, removing, temp_path, write_gguf

from .ahn import AHNPayload, BaseShape, check_window_sinks
from .quantize import canonical_outtype, patched_llama_cpp, quantize
from .sources import resolve_checkpoint
from .stock import STOCK_OUTTYPES, inference_mode, stock_contents, stock_model, write_stock

log = logging.getLogger("ahn_gguf.convert")

LLM = gguf.Keys.LLM
ATTN = gguf.Keys.Attention


def base_shape(contents: GGUFContents) -> BaseShape:
    """What an AHN must match, read from a base GGUF's `{arch}.*` keys."""
    arch = contents.arch
    where = contents.path or "the base GGUF"

    def key(template: str, default=None):
        value = contents.get(template.format(arch=arch), default)
        if value is None:
            raise ConversionError(f"{where}: missing metadata key {template.format(arch=arch)}")
        if isinstance(value, list):  # per-layer values: an AHN needs them uniform
            if len(set(value)) != 1:
                raise ConversionError(f"{where}: {template.format(arch=arch)} varies per layer ({value}); "
                                      f"not supported")
            value = value[0]
        return int(value)

    n_embd, n_head = key(LLM.EMBEDDING_LENGTH), key(ATTN.HEAD_COUNT)
    return BaseShape(arch, key(LLM.BLOCK_COUNT), n_embd, n_head, key(ATTN.HEAD_COUNT_KV, n_head),
                     key(ATTN.KEY_LENGTH, n_embd // n_head))


def ahn_in_f32(contents: GGUFContents) -> bool:
    """2-D/3-D AHN weights are F32 next to an all-F32 base, F16 next to anything else."""
    file_type = contents.get(gguf.Keys.General.FILE_TYPE)
    if file_type is not None:
        return int(file_type) == gguf.LlamaFileType.ALL_F32
    return all(t.ggml_type == gguf.GGMLQuantizationType.F32 for t in contents.tensors if len(t.shape) > 1)


def merge(base: GGUFContents, payload: AHNPayload, *, source_base: str) -> GGUFContents:
    """The base's metadata and tensors (bytes untouched) under the AHN architecture, plus the AHN.

    `{base}.*` keys become `{base}ahn.*`; the AHN keys follow them, provenance comes last, the AHN
    tensors follow the base's.
    """
    arch = base.arch
    where = base.path or "the base"
    if arch in BASE_FOR_ARCH:
        raise ConversionError(f"{where} already has an AHN (architecture {arch}); attach to a plain "
                              f"{BASE_FOR_ARCH[arch]} GGUF")
    if arch not in ARCH_FOR_BASE:
        raise ConversionError(f"unsupported base architecture {arch!r} in {where}; AHN attaches to "
                              f"{' and '.join(ARCH_FOR_BASE)} models")
    shape = base_shape(base)
    wrong = payload.base.mismatch(shape)
    if wrong:
        raise ConversionError(f"the AHN does not fit this base ({'; '.join(wrong)} for AHN vs base): the AHN "
                              f"was made for {payload.base.describe()}, the base is {shape.describe()}")
    clash = sorted(set(payload.tensors) & {t.name for t in base.tensors})
    if clash:
        raise ConversionError(f"{where} already holds AHN tensors: {', '.join(clash[:4])}")
    if any(k.startswith("ahn.") for k in base.kv):
        raise ConversionError(f"{where} already holds ahn.* metadata; attach to a plain base GGUF")

    new_arch = ARCH_FOR_BASE[arch]
    items = []
    for key, kv in base.kv.items():
        if key == gguf.Keys.General.ARCHITECTURE:
            kv = KV(VT.STRING, new_arch)
        elif key.startswith(arch + "."):
            key = new_arch + key[len(arch):]
        items.append((key, kv))
    last_arch_key = max((i for i, (k, _) in enumerate(items) if k.startswith(new_arch + ".")), default=len(items) - 1)
    items[last_arch_key + 1:last_arch_key + 1] = payload.metadata(new_arch)
    items += payload.provenance(source_base)

    out = GGUFContents(alignment=base.alignment)
    out.kv = dict(items)
    out.tensors = list(base.tensors) + payload.tensor_entries(f32=ahn_in_f32(base))
    return out


def _done(out: Path, payload: AHNPayload, arch: str) -> Path:
    log.info("wrote %s (%.1f MB): %s, AHN %s, W %d, S %d", out, out.stat().st_size / 1e6, arch,
             payload.variant, payload.window, payload.sinks)
    return out


def convert(base: str, ahn: str | None, out: str | Path, *, outtype: str = "f16", window: int | None = None,
            sinks: int | None = None, force: bool = False, training: str | None = None, threads: int = 0,
            progress: bool = True, memory_type: str | None = None) -> Path:
    """Hugging Face base + AHN checkpoint (folders or repo ids) -> one GGUF file.

    `ahn=None`: `base` is a merged folder (base and AHN weights and keys in one). `outtype`:
    f32, f16, bf16, q8_0 (the stock converter's), or any llama.cpp quantization type
    (q4_k_m, ...), made by llama.cpp's quantizer from the f16 conversion of the base.
    """
    # cheap checks first: before any download
    outtype = canonical_outtype(outtype)
    out = check_output(out, force=force, inputs=(base, ahn))
    check_window_sinks(window, sinks)
    if outtype not in STOCK_OUTTYPES:
        patched_llama_cpp()
    base_dir = resolve_checkpoint(base, "BASE")
    ahn_dir = resolve_checkpoint(ahn, "AHN") if ahn is not None else base_dir
    payload = AHNPayload.from_hf(ahn_dir, base_dir=base_dir, window=window, sinks=sinks,
                                 source=ahn if ahn is not None else base, training=training).with_memory_type(memory_type)
    payload.tensor_entries(f32=outtype == "f32")  # values beyond F16's range are refused here, not mid-write
    merged = ahn is None
    with inference_mode():
        downloaded = not Path(base).expanduser().is_dir()
        model = stock_model(base_dir, outtype if outtype in STOCK_OUTTYPES else "f16", out, skip_ahn=merged,
                            model_name=base if downloaded else None)
        if outtype in STOCK_OUTTYPES:
            write_gguf(merge(stock_contents(model), payload, source_base=base), out, progress=progress)
        else:
            f16, quant = temp_path(out, "base-f16"), temp_path(out, f"base-{outtype}")
            with removing(f16, quant):
                model.fname_out = f16
                write_stock(model)
                quantize(f16, quant, outtype, threads=threads)
                f16.unlink()
                write_gguf(merge(read_gguf(quant), payload, source_base=base), out, progress=progress)
    return _done(out, payload, ARCH_FOR_BASE[payload.base.arch])


def convert_ahn_only(ahn: str, out: str | Path, *, window: int | None = None, sinks: int | None = None,
                     force: bool = False, training: str | None = None, progress: bool = True,
                     memory_type: str | None = None) -> Path:
    """AHN checkpoint (AHN-only or merged folder, or repo id) -> sidecar GGUF (arch `ahn`)."""
    out = check_output(out, force=force, inputs=(ahn,))
    check_window_sinks(window, sinks)
    ahn_dir = resolve_checkpoint(ahn, "AHN")
    payload = AHNPayload.from_hf(ahn_dir, window=window, sinks=sinks, source=ahn,
                                 training=training).with_memory_type(memory_type)
    write_gguf(payload.sidecar(), out, progress=progress)
    return _done(out, payload, "ahn sidecar")


def load_payload(ahn: str, *, window: int | None, sinks: int | None) -> AHNPayload:
    """An AHN from a sidecar GGUF file, or from a checkpoint folder / repo id."""
    path = Path(ahn).expanduser()
    if path.is_file():
        return AHNPayload.from_sidecar(read_gguf(path), window=window, sinks=sinks)
    return AHNPayload.from_hf(resolve_checkpoint(ahn, "AHN"), window=window, sinks=sinks, source=ahn)


def attach(base_gguf: str | Path, ahn: str, out: str | Path, *, window: int | None = None,
           sinks: int | None = None, force: bool = False, source_base: str | None = None,
           progress: bool = True, memory_type: str | None = None) -> Path:
    """An existing Qwen2/Llama GGUF (any type, quantized included) + an AHN -> one GGUF file.

    Every base tensor is copied with its bytes and type untouched. `ahn`: a sidecar GGUF, or an
    AHN checkpoint folder / repo id.
    """
    base_path = Path(base_gguf).expanduser()
    if not base_path.is_file():
        raise ConversionError(f"base GGUF {base_gguf}: no such file")
    out = check_output(out, force=force, inputs=(base_path, ahn))
    check_window_sinks(window, sinks)
    payload = load_payload(ahn, window=window, sinks=sinks).with_memory_type(memory_type)
    base = read_gguf(base_path)
    if int(base.get(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 1)) > 1:
        raise ConversionError(f"{base_path} is one part of a split GGUF; merge the parts first "
                              f"(llama-gguf-split --merge FIRST-PART.gguf merged.gguf)")
    write_gguf(merge(base, payload, source_base=source_base or base_path.name), out, progress=progress)
    return _done(out, payload, ARCH_FOR_BASE.get(base.arch, base.arch))
