"""Fixtures of the runtime-vs-reference tests: the converted fixture GGUFs and the PyTorch reference."""

from __future__ import annotations

import pytest

from tests.helpers.runtime import patched_llama_cpp


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory):
    """Where convert_fixture writes the fixture GGUFs (once per session; test_runtime_state has its own)."""
    patched_llama_cpp()
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="module")
def reference(fixtures_root):
    """reference(family, variant): the PyTorch reference of a fixture checkpoint, loaded once per module."""
    from ahn_gguf.reference import load_reference

    cache = {}

    def get(family, variant):
        if (family, variant) not in cache:
            cache[(family, variant)] = load_reference(fixtures_root / f"{family}-base",
                                                      fixtures_root / f"{family}-ahn-{variant}")
        return cache[(family, variant)]
    return get
