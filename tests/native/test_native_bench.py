"""`ahn-gguf bench op` runs end to end and writes its reports (a smoke test, not a timing)."""

from __future__ import annotations

import argparse
import json

from ahn_gguf.bench import cli, op


def test_bench_op_smoke(tmp_path, monkeypatch):
    monkeypatch.setattr(op, "last_level_cache_bytes", lambda: 1 << 20)  # keep the "beyond cache" case small
    args = op.default_args(models="tiny", quick=True, cuda="off", prefill_tokens=16, out=str(tmp_path), verbose=False)
    assert op.main(args) == 0
    result = json.loads((tmp_path / "bench-op.json").read_text())
    assert result["bandwidth_gbs"]["bound"] > 0
    kernels = {r["kernel"] for r in result["rows"]}
    assert "scalar" in kernels
    decode = [r for r in result["rows"] if r["scenario"] == "decode"]
    assert all(r["state_gbs"] > 0 and r["tokens_per_s"] > 0 for r in decode)
    assert "| tiny | decode |" in (tmp_path / "bench-op.md").read_text()


def test_bench_cli_registers_op():
    parser = argparse.ArgumentParser(prog="ahn-gguf")
    cli.register(parser.add_subparsers(dest="command"), name="bench", help_text="benchmarks")
    args = parser.parse_args(["bench", "op", "--models", "tiny", "--threads", "2", "--no-torch"])
    assert args.models == "tiny" and args.threads == 2 and args.no_torch and callable(args.func)
