"""`ahn-gguf bench runtime` and `bench formulas`: the machinery end to end on tiny models.

Not timing tests: no speed threshold is asserted. What is checked is the report's structure
and that every derived number is computed from the recorded measurements.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

import pytest

from ahn_gguf.bench import cli, formulas, models, op, runtime, runtime_measure
from tests.helpers import REPO_ROOT
from tests.helpers.runtime import convert_fixture

pytestmark = pytest.mark.llama

W, S = 16, 4


@pytest.fixture(scope="module")
def tiny_pair(fixtures_root, tmp_path_factory):
    """The fixture Llama base (stock F16 GGUF) and the same file with the fixture GDN attached."""
    from ahn_gguf.convert import attach

    d = tmp_path_factory.mktemp("bench-gguf")
    stock = convert_fixture(fixtures_root, d, "llama", None, outtype="f16")
    ahn = attach(stock, str(fixtures_root / "llama-ahn-gdn"), d / "llama-ahn-gdn-f16.gguf", progress=False)
    return stock, ahn


def test_bench_runtime_report(tiny_pair, tmp_path, monkeypatch):
    stock, ahn = tiny_pair
    bw = {"inplace_scale": 20.0, "copy": 15.0, "triad": 18.0, "bound": 20.0, "array_mib": 1.0}
    monkeypatch.setattr(op, "measure_bandwidth", lambda threads, quick: dict(bw))
    args = runtime.default_args(stock=str(stock), ahn=str(ahn), window=W, sinks=S, multiples="0.5,1,2,4",
                                decode_tokens=3, n_batch=16, short_repeats=2, out=str(tmp_path), name="rt")
    assert runtime.main(args) == 0

    result = json.loads((tmp_path / "rt.json").read_text())
    (mr,) = result["models"]
    assert mr["checkpoints"] == [8, 16, 32, 64]
    assert list(mr["modes"]) == [runtime.STOCK, runtime.STOCK_FA, runtime.WINDOW, runtime.AHN, runtime.COMPOSED]
    mb = runtime_measure.model_bytes(stock)
    per_cell = mb.kv_bytes_per_cell_f16

    for name, m in mr["modes"].items():
        pts = m["points"]
        assert [p["L"] for p in pts] == mr["checkpoints"]
        # the points inside the window were measured twice, the others once
        assert [p["runs"] for p in pts] == [2, 2, 1, 1]
        for p in pts:
            assert p["prefill_tok_s"] == pytest.approx(p["prefill_tokens"] / p["prefill_s"])
            assert len(p["decode_step_s"]) == 3
            assert p["decode_tok_s"] == pytest.approx(1 / statistics.median(p["decode_step_s"]))
            assert p["decode_best_tok_s"] == pytest.approx(1 / min(p["decode_step_s"]))
            assert p["decode_bound_tok_s"] == pytest.approx(bw["bound"] * 1e9 / p["decode_bytes"])
            assert p["decode_bandwidth_fraction"] == pytest.approx(p["decode_tok_s"] / p["decode_bound_tok_s"])
            if name in (runtime.STOCK, runtime.STOCK_FA):
                # prefilled tokens + the tokens decoded at the earlier points = the context
                assert p["cache_live_bytes"] == p["L"] * per_cell
                assert p["decode_bytes"] == mb.base_weight_bytes + p["L"] * per_cell
                assert p["state_seq_bytes"] >= p["cache_live_bytes"]
            else:
                assert p["cache_live_bytes"] == p["ahn_memory"]["total_bytes"]
                assert p["cache_live_bytes"] == p["formula_bytes"]
        assert [p["prefill_tokens"] for p in pts] == [8, 16 - 3, 32 - 6, 64 - 9]

    # cache: flat beyond S + W, constant allocation
    ahn_pts = mr["modes"][runtime.AHN]["points"]
    assert ahn_pts[-1]["cache_live_bytes"] > 0
    assert len({p["cache_alloc_bytes"] for p in ahn_pts}) == 1

    # ratios are those of the points; stock = the faster of FA off / on at each point
    pts = {n: {p["L"]: p for p in m["points"]} for n, m in mr["modes"].items()}
    for r in mr["rows"]:
        L = r["L"]
        st_pre = max(pts[runtime.STOCK][L]["prefill_tok_s"], pts[runtime.STOCK_FA][L]["prefill_tok_s"])
        st_dec = max(pts[runtime.STOCK][L]["decode_tok_s"], pts[runtime.STOCK_FA][L]["decode_tok_s"])
        assert r["stock_prefill_tok_s"] == pytest.approx(st_pre)
        assert r["ahn_prefill_vs_stock"] == pytest.approx(pts[runtime.AHN][L]["prefill_tok_s"] / st_pre)
        assert r["ahn_decode_vs_stock"] == pytest.approx(pts[runtime.AHN][L]["decode_tok_s"] / st_dec)
        assert r["memory_prefill_s_fused"] == pytest.approx(pts[runtime.AHN][L]["prefill_s"] - pts[runtime.WINDOW][L]["prefill_s"])
        assert r["memory_decode_ms_composed"] == pytest.approx(pts[runtime.COMPOSED][L]["decode_ms"] - pts[runtime.WINDOW][L]["decode_ms"])

    t = mr["targets"]
    assert t["cache_max_rel_error_vs_formula"] == 0 and t["cache_live_flat_beyond_window"] == 0 and t["cache_ok"] is True
    assert t["inside_window"]["Ls"] == [8, 16]
    assert "at_8W" not in t  # no 8 W point in this run
    # the memory step in steady state: slopes and medians of the points beyond S + W = 20
    ms = t["memory_step"]
    assert (ms["from_L"], ms["to_L"]) == (32, 64) and t["memory_step_ok"] in (True, False, None)
    for m in (runtime.WINDOW, runtime.AHN, runtime.COMPOSED):
        a, b = pts[m][32], pts[m][64]
        st = ms["steady"][m]
        assert st["prefill_ms_per_token"] == pytest.approx(1e3 * (b["prefill_s"] - a["prefill_s"]) / (b["prefill_tokens"] - a["prefill_tokens"]))
        assert st["decode_ms"] == pytest.approx(1e3 * statistics.median(a["decode_step_s"] + b["decode_step_s"]))
    assert ms["prefill_fused_ms"] == pytest.approx(ms["steady"][runtime.AHN]["prefill_ms_per_token"]
                                                   - ms["steady"][runtime.WINDOW]["prefill_ms_per_token"])
    assert ms["decode_composed_ms"] == pytest.approx(ms["steady"][runtime.COMPOSED]["decode_ms"] - ms["steady"][runtime.WINDOW]["decode_ms"])

    md = (tmp_path / "rt.md").read_text()
    for heading in ("### Prefill tokens/s", "### Decode tokens/s", "### Cache bytes", "### Decode against the memory-bandwidth bound",
                    "### Memory-step cost", "### Targets (measured)"):
        assert heading in md
    assert "| 64 | 4 |" in md
    if result.get("plots"):
        assert (tmp_path / result["plots"]["custom"]).stat().st_size > 0


def test_formulas_reproduce_the_paper():
    cands = formulas.paper_candidates(formulas.PAPER_SINKS, formulas.PAPER_WINDOW)
    hits = [c for c in cands if c["matches_paper"]]
    assert [(c["L"], c["window"], c["weights_counted"]) for c in hits] == [(128_000, "S+W", "layers + head + embedding")]
    s = formulas.QWEN25["Qwen2.5-3B"]
    # the formulas themselves (docs/AHN-SPEC.md), per layer
    assert formulas.mixing_flops_full(s, 10) == s.n_layer * 2 * 128 * 16 * 100
    assert formulas.cache_elements_ahn(s, 100) == s.n_layer * (2 * 100 * 128 * 2 + 128 * 128 * 16)
    assert formulas.mixing_flops_ahn(s, 50, 100) == formulas.mixing_flops_full(s, 50)


def test_shape_only_gguf_memory_matches_formula(tmp_path, monkeypatch):
    """The shape-only builder on a small shape: ahn_memory() per-cell sizes are the formula's."""
    monkeypatch.setattr(models, "bench_models_dir", lambda: tmp_path)
    shape = formulas.Shape(n_layer=2, D=256, H=4, H_kv=2, d=64, ffn=0, vocab=0, tied=True)
    path = formulas.build_shape_gguf("tiny", shape, window=32, sinks=4, log=lambda s: None)
    m = formulas.runtime_memory(path, sinks=4, window=32, n_ctx=4096, n_ubatch=64, threads=1)
    assert m["kv_bytes_per_cell"] == 2 * 2 * 2 * 64 * 2          # layers x (K, V) x H_kv x d x F16
    assert m["gate_bytes_per_cell"] == 2 * 2 * 4 * 4             # layers x (g, beta) x H x F32
    assert m["state_bytes_per_seq"] == 2 * 4 * 64 * 64 * 4
    assert m["live_full_window_bytes"] == 36 * (m["kv_bytes_per_cell"] + m["gate_bytes_per_cell"]) + m["state_bytes_per_seq"]
    assert m["allocated_bytes"] >= m["live_full_window_bytes"]
    assert m["n_cells_live"] == 1


def test_bench_cli_registers_runtime_formulas_all():
    parser = argparse.ArgumentParser(prog="ahn-gguf")
    cli.register(parser.add_subparsers(dest="command"), name="bench", help_text="benchmarks")
    a = parser.parse_args(["bench", "runtime", "--quick", "--models", "smollm2-135m", "--window", "256"])
    assert a.quick and a.models == "smollm2-135m" and a.window == 256 and callable(a.func)
    a = parser.parse_args(["bench", "formulas", "--no-runtime"])
    assert a.runtime is False and callable(a.func)
    a = parser.parse_args(["bench", "all", "--quick"])
    assert a.quick and callable(a.func)
    assert math.isclose(runtime_measure.checkpoints_for(1024, [0.5, 16])[-1], 16384)


def test_8w_target_reports_its_ceiling(tmp_path):
    """The committed full run, re-rendered: at 8 W the targets carry the window-only ceiling and the
    first L where the AHN reaches 2x, both taken from the measured rows."""
    src = REPO_ROOT / "reports" / "bench-runtime.json"
    md, _ = runtime.rerender(src, tmp_path, "rerendered")
    result = json.loads((tmp_path / "rerendered.json").read_text())
    for mr in result["models"]:
        a, rows = mr["targets"]["at_8W"], mr["rows"]
        r8 = next(r for r in rows if r["L"] == 8 * mr["window"])
        assert a["prefill_speedup"] == r8["ahn_prefill_vs_stock"]
        assert a["window_prefill_speedup"] == r8["window_prefill_vs_stock"]
        assert a["window_decode_speedup"] == r8["window_decode_vs_stock"]
        for what in ("prefill", "decode"):
            reach = [r["L"] for r in rows if r[f"ahn_{what}_vs_stock"] >= 2]
            assert a[f"{what}_2x_from_L"] == (min(reach) if reach else None)
    assert "What bounds it" in Path(md).read_text() or all(m["targets"]["at_8W_ok"] for m in result["models"])
