"""`ahn-gguf bench memory`: an F16 AHN memory against an F32 one, end to end on the real SmolLM2 model
with its AHN at a small window.

Not a timing test: no speed is asserted. What is checked: the three modes ran at every checkpoint and
each repeat, the bytes are the memory types' (F16 exactly half of F32: states and gates), and every
derived number comes from the recorded measurements.
"""

from __future__ import annotations

import argparse
import json
import statistics

import pytest

from ahn_gguf.bench import cli, memory
from ahn_gguf.bench.runtime_measure import WINDOW

pytestmark = pytest.mark.llama


def test_bench_memory_report(tmp_path):
    args = memory.default_args(window=32, sinks=4, multiples="0.5,3", decode_tokens=2, n_batch=16, repeats=2,
                               out=str(tmp_path), name="mem")
    assert memory.main(args) == 0
    result = json.loads((tmp_path / "mem.json").read_text())
    assert list(result["modes"]) == [WINDOW, memory.AHN_F32, memory.AHN_F16]
    assert [p["L"] for p in result["points"]] == [16, 96]
    for name, passes in result["passes"].items():
        assert len(passes) == 2 and all([r["L"] for r in p] == [16, 96] for p in passes), name

    for i, row in enumerate(result["points"]):
        a, b, w = row[memory.AHN_F32], row[memory.AHN_F16], row[WINDOW]
        # the bytes: the F16 memory holds half of everything the F32 one does
        assert a["state_bytes"] > 0 and b["state_bytes"] * 2 == a["state_bytes"]
        assert a["gate_bytes"] > 0 and b["gate_bytes"] * 2 == a["gate_bytes"]
        assert row["f16_over_f32_memory_bytes"] == pytest.approx(0.5)
        # derived from the recorded passes
        for m in (WINDOW, memory.AHN_F32, memory.AHN_F16):
            recs = [p[i] for p in result["passes"][m]]
            assert row[m]["decode_ms"] == pytest.approx(1e3 * min(statistics.median(r["decode_step_s"]) for r in recs))
            assert row[m]["prefill_s"] == pytest.approx(min(r["prefill_s"] for r in recs))
        assert a["memory_decode_ms"] == pytest.approx(a["decode_ms"] - w["decode_ms"])
        assert b["memory_prefill_s"] == pytest.approx(b["prefill_s"] - w["prefill_s"])
        assert row["f16_over_f32_decode"] == pytest.approx(b["decode_ms"] / a["decode_ms"])
    md = (tmp_path / "mem.md").read_text()
    assert "| 96 | " in md and "W = 32, S = 4" in md and "Library: the installed llama_cpp package's own" in md


def test_bench_memory_is_registered_and_checks_its_options():
    parser = argparse.ArgumentParser(prog="ahn-gguf")
    cli.register(parser.add_subparsers(dest="command"), name="bench", help_text="benchmarks")
    a = parser.parse_args(["bench", "memory", "--window", "2048", "--repeats", "3"])
    assert a.window == 2048 and a.repeats == 3 and a.threads == 1 and callable(a.func)
    from ahn_gguf.errors import UsageError

    with pytest.raises(UsageError, match="--window"):
        memory.main(memory.default_args(window=0))
