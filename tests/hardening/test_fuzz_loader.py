"""The coverage-guided loader fuzzer (tests/fuzz/): libFuzzer + ASan + UBSan over the patched llama.cpp.

- every regression input in tests/fuzz/regressions/ (files that once crashed or aborted the
  loader) runs through the harness cleanly;
- a short fuzzing run with a fixed seed, from a seed corpus of tiny AHN models (both base
  families, every variant) and a dictionary of GGUF names, finds no crash, abort, leak or
  sanitizer report. `AHN_GGUF_FUZZ_SECONDS` sets its length (CI: 180 s); the longer run of
  the report (reports/fuzz-loader.md) is `python tests/fuzz/run_fuzz.py --seconds N`.
"""

from __future__ import annotations

import os

import pytest

from tests.fuzz.run_fuzz import KNOWN, regression_inputs, run_campaign, run_regressions, write_seed_corpus


@pytest.fixture(scope="module")
def fuzzer():
    from tests.fuzz.build_fuzzer import ensure_fuzzer

    return ensure_fuzzer()


def test_regression_inputs_load_cleanly(fuzzer, tmp_path):
    inputs = regression_inputs(tmp_path / "inputs")
    assert len(inputs) >= len(KNOWN)
    results = run_regressions(fuzzer, inputs, tmp_path)
    bad = {name: tail for name, (rc, tail) in results.items() if rc != 0}
    assert not bad, f"regression inputs crash the loader again: {bad}"


def test_seed_corpus_covers_every_variant_and_family(tmp_path):
    corpus = write_seed_corpus(tmp_path / "corpus")
    names = sorted(p.name for p in corpus.iterdir())
    assert len(names) == 6 and {n.split("-")[0] for n in names} == {"llama", "qwen2"}, names


def test_short_fuzzing_run_finds_nothing(fuzzer, tmp_path, record_property):
    seconds = int(os.environ.get("AHN_GGUF_FUZZ_SECONDS", "180"))
    stats = run_campaign(fuzzer, tmp_path, seconds=seconds, seed=1)
    for k, v in stats.items():
        if k != "log_tail":
            record_property(f"fuzz_{k}", v)
    print(f"libFuzzer, {seconds} s, seed 1: {stats['executions']} executions, coverage {stats['coverage']} edges, "
          f"{stats['features']} features, corpus {stats['corpus']} inputs, {stats['crashes']} crashes")
    assert stats["crashes"] == 0, f"the fuzzer found a crash:\n{stats['log_tail']}"
    assert stats["executions"] > 50, f"the fuzzer barely ran:\n{stats['log_tail']}"
