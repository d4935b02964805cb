"""ahn-gguf: Artificial Hippocampus Networks as a memory layer for llama.cpp / GGUF.

`from ahn_gguf import Llama` gives llama-cpp-python's `Llama` for AHN models (see
ahn_gguf.runtime); it needs the patched llama-cpp-python (`ahn-gguf build`), so it is
imported on first use rather than with the package.
"""

__version__ = "0.1.0"

__all__ = ["Llama", "AHNMemory", "__version__"]


def __getattr__(name):
    if name in ("Llama", "AHNMemory"):
        from ahn_gguf import runtime

        return getattr(runtime, name)
    raise AttributeError(f"module 'ahn_gguf' has no attribute {name!r}")
