"""The model options that `run`, `chat` and `serve` share: one definition, one meaning everywhere."""

from __future__ import annotations

import argparse


def add_model_arguments(p: argparse.ArgumentParser, *, n_ctx: int, n_ctx_help: str) -> None:
    """MODEL (optional: the embedded default), --window, --sinks, --memory-type, --n-ctx, --threads, --n-gpu-layers.

    W and S default to the GGUF's own and are checked against n_ctx by `runtime.ahn_overrides`."""
    from ahn_gguf.default_model import MODEL_NAMES_HELP

    p.add_argument("model", nargs="?", help=f"AHN GGUF, or an embedded model: {MODEL_NAMES_HELP}")
    g = p.add_argument_group("model")
    g.add_argument("--window", type=int, help="AHN window W (default: from the GGUF)")
    g.add_argument("--sinks", type=int, help="AHN sink tokens S (default: from the GGUF)")
    g.add_argument("--memory-type", choices=("f32", "f16"), default=None,
                   help="how the AHN's recurrent states and write gates are stored: f32 or f16, half the bytes "
                        "beside the window; computed in F32 either way (default: what the GGUF records, f32 "
                        "unless it says f16, as the embedded default model does)")
    g.add_argument("--n-ctx", type=int, default=n_ctx, help=f"{n_ctx_help}; costs no memory with an AHN "
                                                             "(default: %(default)s)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (default: llama.cpp's choice)")
    g.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to the GPU (CUDA builds)")
