"""`ahn-gguf serve`: llama-cpp-python's OpenAI-compatible server, running an AHN model.

The server is llama-cpp-python's own (`llama_cpp.server`); the patched build runs AHN GGUFs,
and the window/sink overrides reach llama.cpp as GGUF metadata overrides. The model file is
validated first, so a bad file or option fails with a message instead of a server that dies.
"""

from __future__ import annotations

import argparse

from ahn_gguf import constants as C


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Serve an AHN model (default: the embedded SmolLM2 + AHN) with llama-cpp-python's "
            "OpenAI-compatible API: /v1/chat/completions, /v1/completions (streaming too), /v1/models."
        ),
        epilog=(
            "example:\n"
            "  ahn-gguf serve --port 8000 &\n"
            "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            "       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 64}'\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model", nargs="?", help="AHN GGUF (default: the embedded SmolLM2 + AHN)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--window", type=int, help="AHN window W (default: from the GGUF)")
    p.add_argument("--sinks", type=int, help="AHN sink tokens S (default: from the GGUF)")
    p.add_argument("--n-ctx", type=int, default=32768, help="position limit per conversation; costs no memory with an AHN (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads")
    p.add_argument("--n-gpu-layers", type=int, default=0, help="layers to offload to the GPU (CUDA builds)")
    p.add_argument("--model-alias", default=None, help="model name reported by /v1/models (default: the file name)")
    p.set_defaults(func=main)


def build_settings(args):
    """llama_cpp.server settings for an AHN model, after validating the file and the options."""
    import os

    from ahn_gguf.gguf_check import check_gguf_file
    from ahn_gguf.runtime import _check_window, import_patched_llama_cpp

    import_patched_llama_cpp()
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model = args.model
    if model is None:
        from ahn_gguf.default_model import default_model_path

        model = str(default_model_path())
    info = check_gguf_file(model)
    overrides = []
    if info.arch in C.BASE_FOR_ARCH:
        window = args.window if args.window is not None else info.ahn_window
        sinks = args.sinks if args.sinks is not None else info.ahn_sinks
        _check_window(window, sinks, args.n_ctx)
        overrides = [f"{C.KEY_WINDOW.format(arch=info.arch)}=int:{window}", f"{C.KEY_SINKS.format(arch=info.arch)}=int:{sinks}"]
    elif args.window is not None or args.sinks is not None:
        raise ValueError(f"{model}: architecture {info.arch!r} has no AHN; --window/--sinks do not apply")

    server = ServerSettings(host=args.host, port=args.port)
    settings = ModelSettings(
        model=model,
        model_alias=args.model_alias or os.path.basename(model),
        n_ctx=args.n_ctx,
        n_batch=512,
        n_threads=args.threads if args.threads else max(1, (os.cpu_count() or 2) // 2),
        n_gpu_layers=args.n_gpu_layers,
        kv_overrides=overrides or None,
        verbose=False,
    )
    return server, settings


def main(args) -> int:
    import uvicorn
    from llama_cpp.server.app import create_app

    server, settings = build_settings(args)
    app = create_app(server_settings=server, model_settings=[settings])
    print(f"serving {settings.model} as {settings.model_alias!r} on http://{server.host}:{server.port}/v1")
    uvicorn.run(app, host=server.host, port=server.port)
    return 0
