"""`ahn_gguf.Llama`: llama-cpp-python's `Llama`, for models with an AHN memory.

A drop-in: every argument and method of `llama_cpp.Llama` works as before
(`create_completion`, `create_chat_completion`, streaming, `save_state`/`load_state`,
`n_ctx`, `n_threads`, `n_gpu_layers`, ...). On top of it:

- `ahn_window` / `ahn_sinks` override the window W and sink count S recorded in the GGUF
  (AHNs are trained with random windows, so any W works; as a GGUF metadata override they
  reach llama.cpp through `kv_overrides`);
- `ahn_memory_type="f16"` stores the recurrent states and the write gates in F16 instead of
  F32: half the bytes the memory costs beside the window, computed in F32 either way
  (`{arch}.ahn.memory_type`, also a kv override; default: what the GGUF records, f32 unless it
  says f16, as the embedded default model does);
- `ahn_memory()` reports the memory by part: window K/V, sinks, write-gate cache, recurrent
  state (bytes in use and allocated).
- `model_path` may be an embedded model's name (`Llama("qwen2.5-coder-0.5b")`) or None (the
  default SmolLM2 + AHN): `ahn_gguf.default_model.resolve_model`.

With an AHN, `n_ctx` only bounds positions: the cache holds S + W tokens plus one ubatch,
whatever `n_ctx` is. Stock GGUFs (no AHN) load and run exactly as in llama-cpp-python.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from typing import Any

from ahn_gguf import constants as C
from ahn_gguf.errors import AHNModelError
from ahn_gguf.gguf_io.check import check_gguf_file

from .errors import SetupError


def import_patched_llama_cpp():
    """The installed `llama_cpp`, checked to be the AHN-patched build."""
    try:
        import llama_cpp
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise SetupError("llama_cpp is not installed: run `ahn-gguf build` to build the patched llama-cpp-python") from e
    if not hasattr(llama_cpp, "llama_ahn_get_memory_info"):
        raise SetupError(
            "the installed llama_cpp is not the AHN-patched build (no llama_ahn_get_memory_info): "
            "run `ahn-gguf build` to build and install it"
        )
    return llama_cpp


# GGML type ids of the K/V cache types the AHN memory step reads (F32, F16)
_KV_TYPES_OK = {0: "f32", 1: "f16"}


@dataclass(frozen=True)
class AHNMemory:
    """The memory of a context, by part (bytes). `*_bytes` count what is live now."""

    window_bytes: int       # K/V of the window tokens (plus the one retained until it is evicted)
    sink_bytes: int         # K/V of the sink tokens
    gate_bytes: int         # write gates cached beside the live K/V
    state_bytes: int        # recurrent AHN states of the live sequences
    allocated_bytes: int    # everything allocated for the memory
    n_cells: int            # window-cache cells allocated
    n_cells_live: int
    n_cells_sink: int
    kv_bytes_per_cell: int
    gate_bytes_per_cell: int
    state_bytes_per_seq: int

    @property
    def total_bytes(self) -> int:
        return self.window_bytes + self.sink_bytes + self.gate_bytes + self.state_bytes

    def describe(self) -> str:
        """One line, by part: 'window K/V 1.2 MiB, sinks ..., gates ..., AHN state ... (total ... live, ... allocated)'."""
        b = human_bytes
        return (f"window K/V {b(self.window_bytes)}, sinks {b(self.sink_bytes)}, gates {b(self.gate_bytes)}, "
                f"AHN state {b(self.state_bytes)} (total {b(self.total_bytes)} live, {b(self.allocated_bytes)} allocated)")

    def as_dict(self) -> dict[str, int]:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["total_bytes"] = self.total_bytes
        return d


def human_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= size:
            return f"{n / size:.2f} {unit}"
    return f"{n} B"


def _base_llama():
    return import_patched_llama_cpp().Llama


class Llama(_base_llama()):  # type: ignore[misc]
    """`llama_cpp.Llama` with AHN overrides and memory accounting (see the module docstring)."""

    def __init__(
        self,
        model_path: str | os.PathLike | None = None,
        *args: Any,
        ahn_window: int | None = None,
        ahn_sinks: int | None = None,
        ahn_memory_type: str | None = None,
        **kwargs: Any,
    ):
        from ahn_gguf.default_model import resolve_model

        model_path = resolve_model(model_path)   # None: the default model; 'qwen2.5-coder-0.5b': that model

        ahn = ahn_overrides(model_path, ahn_window, ahn_sinks, kwargs.get("n_ctx", 512), memory_type=ahn_memory_type)
        self.ahn_arch = ahn.arch
        memory_type = None
        if ahn.arch is not None:
            kwargs["kv_overrides"] = dict(kwargs.pop("kv_overrides", None) or {}, **ahn.kv_overrides())
            # what llama.cpp will store: ahn_memory_type, else a raw kv override of the key, else the file's
            memory_type = kwargs["kv_overrides"].get(C.KEY_MEMORY_TYPE.format(arch=ahn.arch), ahn.effective_memory_type)
            for name in ("type_k", "type_v"):
                t = kwargs.get(name)
                if t is not None and t not in _KV_TYPES_OK:
                    raise AHNModelError(f"{name}={t}: the AHN memory reads the K/V cache, which must be F16 (1) or F32 (0)")


        from jinja2 import TemplateError  # a dependency of llama-cpp-python

        try:
            super().__init__(model_path, *args, **kwargs)
        except TemplateError as e:
            # llama-cpp-python compiles tokenizer.chat_template with jinja2 at load time
            self.close()
            raise AHNModelError(f"{model_path}: the GGUF's tokenizer.chat_template is not a valid Jinja "
                                f"template ({e}); fix it, or remove the key to use llama.cpp's formats") from e

        llama_cpp = import_patched_llama_cpp()
        self._llama_cpp = llama_cpp
        if self.ahn_arch is not None:
            self.ahn_window = int(llama_cpp.llama_model_ahn_window(self.model))
            self.ahn_sinks = int(llama_cpp.llama_model_ahn_sinks(self.model))
            self.ahn_variant = C.VARIANTS[llama_cpp.llama_model_ahn_variant(self.model)]
            self.ahn_memory_type = memory_type
        else:
            self.ahn_window = self.ahn_sinks = None
            self.ahn_variant = self.ahn_memory_type = None

    def close(self) -> None:
        # an __init__ that failed its checks never opened a model: nothing to close
        if hasattr(self, "_stack"):
            super().close()

    @property
    def has_ahn(self) -> bool:
        return self.ahn_arch is not None

    def ahn_memory(self) -> AHNMemory | None:
        """The memory of this context by part, or None for a model without AHN."""
        if not self.has_ahn:
            return None
        info = self._llama_cpp.llama_ahn_memory_info()
        if not self._llama_cpp.llama_ahn_get_memory_info(self.ctx, ctypes.byref(info)):
            return None
        return AHNMemory(
            window_bytes=info.window_bytes,
            sink_bytes=info.sink_bytes,
            gate_bytes=info.gate_bytes,
            state_bytes=info.state_bytes,
            allocated_bytes=info.alloc_bytes,
            n_cells=info.n_cells,
            n_cells_live=info.n_cells_used,
            n_cells_sink=info.n_cells_sink,
            kv_bytes_per_cell=info.kv_bytes_per_cell,
            gate_bytes_per_cell=info.gate_bytes_per_cell,
            state_bytes_per_seq=info.state_bytes_per_seq,
        )


@dataclass(frozen=True)
class AHNOverrides:
    """The window and sinks a model runs with: the GGUF's, or the caller's, checked (`ahn_overrides`)."""

    arch: str | None        # the AHN architecture (qwen2ahn, llamaahn); None: a model without AHN
    window: int | None
    sinks: int | None
    memory_type: str | None = None   # "f32" / "f16" as asked; None: the GGUF's
    file_memory_type: str = "f32"    # what the GGUF records (f32 when it records nothing)

    @property
    def effective_memory_type(self) -> str:
        return self.memory_type or self.file_memory_type

    def kv_overrides(self) -> dict[str, int | str]:
        """As llama-cpp-python's `kv_overrides` argument."""
        if self.arch is None:
            return {}
        out: dict[str, int | str] = {C.KEY_WINDOW.format(arch=self.arch): int(self.window),
                                     C.KEY_SINKS.format(arch=self.arch): int(self.sinks)}
        if self.memory_type is not None:
            out[C.KEY_MEMORY_TYPE.format(arch=self.arch)] = self.memory_type
        return out

    def override_args(self) -> list[str]:
        """As llama.cpp's `--override-kv KEY=TYPE:VALUE` strings (llama-server, llama-cli, ...)."""
        return [f"{k}={'str' if isinstance(v, str) else 'int'}:{v}" for k, v in self.kv_overrides().items()]


def ahn_overrides(model_path: str | os.PathLike, window: int | None, sinks: int | None, n_ctx: int,
                  memory_type: str | None = None) -> AHNOverrides:
    """The one place where a model's AHN window, sinks and memory type are resolved and checked, for
    the Python API (`Llama`) and both server engines: the GGUF is checked first (clear errors for
    non-GGUF, truncated, inconsistent files), W and S default to its own, and must fit n_ctx."""
    info = check_gguf_file(str(model_path))
    if info.arch not in C.BASE_FOR_ARCH:
        if window is not None or sinks is not None or memory_type is not None:
            raise AHNModelError(f"{model_path}: architecture {info.arch!r} has no AHN; the window, sinks and "
                                "memory type do not apply")
        return AHNOverrides(None, None, None)
    window = window if window is not None else info.ahn_window
    sinks = sinks if sinks is not None else info.ahn_sinks
    _check_window(window, sinks, n_ctx)
    if memory_type is not None and memory_type not in C.MEMORY_TYPES:
        raise AHNModelError(f"ahn_memory_type must be one of {', '.join(C.MEMORY_TYPES)}, got {memory_type!r}")
    return AHNOverrides(info.arch, int(window), int(sinks), memory_type, info.ahn_memory_type)


def _check_window(window: int | None, sinks: int | None, n_ctx: int) -> None:
    if window is None:
        raise AHNModelError("the GGUF records no AHN window and none was given (ahn_window=...)")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise AHNModelError(f"ahn_window must be an integer >= 1, got {window!r}")
    if isinstance(sinks, bool) or not isinstance(sinks, int) or sinks < 0:
        raise AHNModelError(f"ahn_sinks must be an integer >= 0, got {sinks!r}")
    if window > C.MAX_WINDOW:
        raise AHNModelError(f"ahn_window={window} is beyond the supported maximum {C.MAX_WINDOW}")
    if n_ctx and sinks + window > n_ctx:
        raise AHNModelError(
            f"ahn_sinks + ahn_window = {sinks} + {window} exceeds n_ctx = {n_ctx}: the memory would never be used; "
            "raise n_ctx (it costs no memory with an AHN) or lower the window"
        )
