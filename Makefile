# ahn-gguf: the two commands of the README, and their shared set-up.
#   make demo   long-context generation with the embedded default model (SmolLM2-135M + AHN-GDN)
#   make test   the test suite (also builds llama.cpp's programs: ahn-gguf build --tools)
#   make lint   ruff over the tree (CI runs it before the tests)
# Both create .venv, install ahn-gguf with its extras and build the patched llama-cpp-python
# (cached by a hash of its inputs in ~/.cache/ahn-gguf; a rebuild takes 4-9 minutes on 2 cores).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.ahn-setup-stamp

.PHONY: setup demo test lint bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch: the CPU build, pinned (an unpinned `torch` pulls a multi-GB CUDA build)
$(STAMP): $(PY) pyproject.toml
	$(PY) -m pip install -q "torch==2.13.0"
	$(PY) -m pip install -q -e ".[torch,server,dev]"
	touch $(STAMP)

setup: $(STAMP)
	$(VENV)/bin/ahn-gguf build

demo: setup
	$(VENV)/bin/ahn-gguf run --max-tokens 96

# the tests also run llama.cpp's own programs (llama-server, llama-perplexity, rpc-server, ...) on AHN GGUFs
# and the loader fuzzer (clang + libFuzzer, cached like the wheel)
test: setup
	$(VENV)/bin/ahn-gguf build --tools
	$(PY) tests/fuzz/build_fuzzer.py
	$(PY) -m pytest -q tests

# pyflakes, pycodestyle, bugbear, isort, pyupgrade ([tool.ruff] in pyproject.toml)
lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: setup
	$(VENV)/bin/ahn-gguf bench all

clean:
	rm -rf $(VENV)
