"""`ahn-gguf serve`: llama-cpp-python's OpenAI-compatible server, running an AHN model.

The server is llama-cpp-python's own (`llama_cpp.server`); the patched build runs AHN GGUFs,
and the window/sink overrides reach llama.cpp as GGUF metadata overrides. The model file is
validated first, so a bad file or option fails with a message instead of a server that dies.

Around it, `RequestLimits` (a plain ASGI middleware) answers what a client must not be able to
do with an HTTP 4xx before the model sees the request: a missing or wrong API key (401), a body
over `--max-body-bytes` (413), malformed JSON (400), `max_tokens` over `--max-tokens-limit`
(400), a prompt over `--max-prompt-tokens` (400, counted with the model's own tokenizer).

Conversations are kept: llama-cpp-python's RAM state cache (`--cache-bytes`, on by default for
AHN models, whose states are small) restores the state of the longest cached prefix of a
prompt, so alternating conversations do not re-evaluate their histories.
"""

from __future__ import annotations

import argparse
import hmac
import json
import os
import shlex
from pathlib import Path

from ahn_gguf.errors import AHNError

from .model_args import add_model_arguments

COMPLETION_PATHS = ("/v1/completions", "/v1/chat/completions", "/v1/embeddings")
DEFAULT_MAX_BODY_BYTES = 8 << 20
DEFAULT_MAX_TOKENS_LIMIT = 4096
# an AHN conversation's state is its sinks + window + gates + recurrent state (a few MB for the
# default model), so 1 GiB keeps hundreds of conversations
DEFAULT_CACHE_BYTES = 1 << 30


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Serve an AHN model (default: the embedded SmolLM2 + AHN) with llama-cpp-python's "
            "OpenAI-compatible API: /v1/chat/completions, /v1/completions (streaming too), /v1/models. "
            "Requests over the limits below are answered with HTTP 4xx before the model sees them; "
            "conversations are kept in a RAM state cache so that a returning one is not re-evaluated."
        ),
        epilog=(
            "example:\n"
            "  ahn-gguf serve --port 8000 --api-key secret &\n"
            "  curl http://127.0.0.1:8000/v1/chat/completions -H 'Content-Type: application/json' \\\n"
            "       -H 'Authorization: Bearer secret' \\\n"
            "       -d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello!\"}], \"max_tokens\": 64}'\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p, n_ctx=32768, n_ctx_help="position limit per conversation")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default: %(default)s; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--model-alias", default=None, help="model name reported by /v1/models (default: the file name)")
    p.add_argument("--api-key", default=os.environ.get("AHN_GGUF_API_KEY"),
                   help="require 'Authorization: Bearer KEY' on every request (default: $AHN_GGUF_API_KEY, else none)")
    p.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="largest request body; larger ones get 413 (default: %(default)s)")
    p.add_argument("--max-tokens-limit", type=int, default=DEFAULT_MAX_TOKENS_LIMIT,
                   help="largest max_tokens a request may ask for; more gets 400 (default: %(default)s)")
    p.add_argument("--max-prompt-tokens", type=int, default=None,
                   help="longest prompt in tokens (message contents for chat); longer gets 400 (default: --n-ctx)")
    p.add_argument("--engine", choices=("python", "llama-server"), default="python",
                   help="python: llama-cpp-python's server (one context, the state cache); llama-server: llama.cpp's "
                        "own server with --parallel slots and continuous batching (`ahn-gguf build --tools` installs it)")
    p.add_argument("--parallel", type=int, default=4,
                   help="--engine llama-server: slots (concurrent conversations); each costs S + W tokens of memory "
                        "with an AHN (default: %(default)s)")
    p.add_argument("--llama-server-args", default="", metavar="ARGS",
                   help="--engine llama-server: more options for llama-server, as one string (e.g. \"-lv 4 -fa on\")")
    p.add_argument("--cache-bytes", type=int, default=None,
                   help="RAM for kept conversation states; 0 disables the cache "
                        f"(default: {DEFAULT_CACHE_BYTES} for AHN models, 0 for others)")
    p.set_defaults(func=main)


def model_overrides(args) -> tuple[str, bool, list[str]]:
    """The model to serve (default: the embedded one), validated, whether it has an AHN, and its window/sink
    overrides as llama.cpp's KEY=TYPE:VALUE strings (both engines take them in this form)."""
    from ahn_gguf.default_model import resolve_model
    from ahn_gguf.runtime import ahn_overrides

    model = resolve_model(args.model)
    ahn = ahn_overrides(model, args.window, args.sinks, args.n_ctx, memory_type=getattr(args, "memory_type", None))
    return model, ahn.arch is not None, ahn.override_args()


def build_settings(args):
    """llama_cpp.server settings for an AHN model, after validating the file and the options."""
    from ahn_gguf.runtime import import_patched_llama_cpp

    import_patched_llama_cpp()
    from llama_cpp.server.settings import ModelSettings, ServerSettings

    model, is_ahn, overrides = model_overrides(args)
    for flag in ("max_body_bytes", "max_tokens_limit"):
        if getattr(args, flag) < 1:
            raise AHNError(f"--{flag.replace('_', '-')} must be >= 1")
    cache_bytes = args.cache_bytes if args.cache_bytes is not None else (DEFAULT_CACHE_BYTES if is_ahn else 0)
    if cache_bytes < 0:
        raise AHNError("--cache-bytes must be >= 0")

    # interrupt_requests=False: a request waits for the model instead of cutting another client's stream
    server = ServerSettings(host=args.host, port=args.port, api_key=args.api_key or None, interrupt_requests=False)
    settings = ModelSettings(
        model=model,
        model_alias=args.model_alias or os.path.basename(model),
        n_ctx=args.n_ctx,
        n_batch=512,
        n_threads=args.threads if args.threads else max(1, (os.cpu_count() or 2) // 2),
        n_threads_batch=args.threads if args.threads else max(1, os.cpu_count() or 2),
        n_gpu_layers=args.n_gpu_layers,
        kv_overrides=overrides or None,
        cache=cache_bytes > 0,
        cache_type="ram",
        cache_size=max(cache_bytes, 1),
        verbose=False,
    )
    return server, settings


class PromptCounter:
    """Counts prompt tokens with the model's own vocabulary (a vocab-only load: no weights, no context)."""

    def __init__(self, model_path: str):
        import llama_cpp

        self._llama_cpp = llama_cpp
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self._model = llama_cpp.llama_model_load_from_file(model_path.encode(), params)
        if not self._model:
            raise AHNError(f"{model_path}: could not load the vocabulary")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)

    def count(self, text: str) -> int:
        raw = text.encode("utf-8", errors="replace")
        n = self._llama_cpp.llama_tokenize(self._vocab, raw, len(raw), (self._llama_cpp.llama_token * 1)(), 0, True, False)
        return -n if n < 0 else n  # with no room, llama_tokenize returns minus the count

    def __del__(self):
        if getattr(self, "_model", None):
            self._llama_cpp.llama_model_free(self._model)
            self._model = None


def prompt_texts(request: dict) -> tuple[list[str], int]:
    """The texts of a completion or chat request, and the count of prompt tokens given as ids."""
    texts, n_ids = [], 0

    def add(x):
        nonlocal n_ids
        if isinstance(x, str):
            texts.append(x)
        elif isinstance(x, list):
            if x and all(isinstance(t, int) for t in x):
                n_ids += len(x)
            else:
                for item in x:
                    add(item)
        elif isinstance(x, dict):  # chat content parts: {"type": "text", "text": ...}
            add(x.get("text"))

    add(request.get("prompt"))
    add(request.get("input"))
    for message in request.get("messages") or []:
        if isinstance(message, dict):
            add(message.get("content"))
    return texts, n_ids


class RequestLimits:
    """ASGI middleware: authentication and request limits answered before the model is involved."""

    def __init__(self, app, *, api_key: str | None, max_body_bytes: int, max_tokens: int, max_prompt_tokens: int,
                 counter: PromptCounter | None):
        self.app = app
        self.api_key = api_key
        self.max_body_bytes = max_body_bytes
        self.max_tokens = max_tokens
        self.max_prompt_tokens = max_prompt_tokens
        self.counter = counter

    @staticmethod
    async def _error(send, status: int, message: str, kind: str = "invalid_request_error") -> None:
        body = json.dumps({"error": {"message": message, "type": kind, "param": None, "code": status}}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})

    def _authorized(self, scope) -> bool:
        if not self.api_key:
            return True
        headers = dict(scope.get("headers") or [])
        auth = headers.get(b"authorization", b"").decode("latin-1")
        scheme, _, token = auth.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    def check(self, request) -> str | None:
        """Why a parsed completion request is refused, or None."""
        if not isinstance(request, dict):
            return "the request body must be a JSON object"
        max_tokens = request.get("max_tokens")
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
                return f"max_tokens must be an integer, got {max_tokens!r}"
            if max_tokens > self.max_tokens:
                return f"max_tokens = {max_tokens} exceeds this server's limit of {self.max_tokens}"
        if self.counter is not None:
            texts, n = prompt_texts(request)
            for text in texts:
                n += self.counter.count(text)
                if n > self.max_prompt_tokens:
                    return f"the prompt has more than {self.max_prompt_tokens} tokens, this server's limit"
        return None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if not self._authorized(scope):
            return await self._error(send, 401, "invalid or missing API key (Authorization: Bearer KEY)", "authentication_error")
        if scope.get("method") != "POST":
            return await self.app(scope, receive, send)

        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_body_bytes):
            return await self._error(send, 413, f"request body over this server's limit of {self.max_body_bytes} bytes")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body_bytes:
                return await self._error(send, 413, f"request body over this server's limit of {self.max_body_bytes} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)

        if scope.get("path", "").rstrip("/") in COMPLETION_PATHS:
            try:
                request = json.loads(body)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                return await self._error(send, 400, f"malformed JSON in the request body: {e}")
            problem = self.check(request)
            if problem:
                return await self._error(send, 400, problem)

        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


def create_server_app(args):
    """The ASGI app `ahn-gguf serve` runs (validated settings, limits, the state cache)."""
    from llama_cpp.server.app import create_app

    server, settings = build_settings(args)
    max_prompt = args.max_prompt_tokens if args.max_prompt_tokens is not None else args.n_ctx
    if max_prompt < 1:
        raise AHNError("--max-prompt-tokens must be >= 1")
    app = create_app(server_settings=server, model_settings=[settings])
    limited = RequestLimits(app, api_key=server.api_key, max_body_bytes=args.max_body_bytes, max_tokens=args.max_tokens_limit,
                            max_prompt_tokens=max_prompt, counter=PromptCounter(settings.model))
    return limited, server, settings


def llama_server_command(args) -> list[str]:
    """The llama-server command line for --engine llama-server (the model and options validated first)."""
    import shutil
    import sysconfig

    model, _, overrides = model_overrides(args)
    if args.parallel < 1:
        raise AHNError("--parallel must be >= 1")
    binary = Path(sysconfig.get_path("scripts")) / "llama-server"
    if not binary.is_file():
        found = shutil.which("llama-server")
        if not found:
            raise AHNError("llama-server is not installed in this environment: run `ahn-gguf build --tools`")
        binary = Path(found)
    # llama-server splits -c among its slots: each slot gets the positions --n-ctx asks for. One unified K/V
    # buffer (-kvu): the slots share one ubatch of headroom, so the window cache is N x (S + W) + n_ubatch
    cmd = [str(binary), "-m", model, "--host", args.host, "--port", str(args.port), "-np", str(args.parallel),
           "-c", str(args.n_ctx * args.parallel), "-kvu", "-ngl", str(args.n_gpu_layers)]
    if overrides:
        # one comma-separated list: llama.cpp keeps only the last of repeated --override-kv flags (with a
        # deprecation warning), which dropped the window override and kept the sinks
        cmd += ["--override-kv", ",".join(overrides)]
    if args.threads:
        cmd += ["-t", str(args.threads), "-tb", str(args.threads)]
    if args.model_alias:
        cmd += ["--alias", args.model_alias]
    return cmd + shlex.split(args.llama_server_args)


def main(args) -> int:
    if args.engine == "llama-server":
        cmd = llama_server_command(args)
        env = dict(os.environ)
        if args.api_key:
            env["LLAMA_API_KEY"] = args.api_key   # llama-server's variable for --api-key: the key stays out of `ps`
        print(f"serving with llama.cpp's server, {args.parallel} slots{', API key required' if args.api_key else ''}: "
              f"{' '.join(cmd)}", flush=True)
        os.execve(cmd[0], cmd, env)

    import uvicorn

    app, server, settings = create_server_app(args)
    cache = f"state cache {settings.cache_size} bytes" if settings.cache else "no state cache"
    print(f"serving {settings.model} as {settings.model_alias!r} on http://{server.host}:{server.port}/v1 ({cache}"
          f"{', API key required' if server.api_key else ''})", flush=True)
    uvicorn.run(app, host=server.host, port=server.port, log_level="warning")
    return 0

