"""Shared pytest fixtures.

`fixtures_root`: the folder of tiny checkpoints in the released layout (ahn_gguf.fixtures),
generated once into the cache ($AHN_GGUF_CACHE or ~/.cache/ahn-gguf) and reused.
Folder names: ahn_gguf.fixtures.fixture_names(), e.g. root / "qwen2-base", root / "qwen2-ahn-gdn".
"""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def fixtures_root():
    from ahn_gguf.fixtures import default_fixtures_root, make_fixtures

    root = default_fixtures_root()
    make_fixtures(root)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models on a shared 2-core machine: a second intra-op thread only adds waiting.
    Modules that run the PyTorch reference use it: pytestmark = pytest.mark.usefixtures(...)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
