"""What the tests share: helpers imported as `tests.helpers.<module>` (the tests are a package, so
pytest puts the repository root on sys.path and nothing else is needed).

- `runtime`: converted fixture GGUFs, llama.cpp runs, reference runs, tolerances;
- `native_cases`: inputs for the native kernels and their NumPy / PyTorch references;
- `tiny_model`: a tiny AHN GGUF written from scratch (loader and fuzz tests);
- `fuzz_gguf`: GGUF mutations, and the child process that loads them.
"""

from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parents[1]
REPO_ROOT = TESTS_DIR.parent
