"""Self-distillation (ahn_gguf.distill): the student pass, the loss, the run, checkpoints, resume."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from ahn_gguf.constants import DN, GDN, MAMBA2, VARIANTS
from ahn_gguf.distill.student import distill_loss, layer_local_step, student_hidden, teacher_pass
from ahn_gguf.distill.trainer import (
    CHECKPOINT_DIR,
    CHECKPOINT_FILE,
    LOG_CSV,
    LOG_JSON,
    DistillConfig,
    Distiller,
    allowed_spans,
    draw_window,
    lr_factor,
)
from ahn_gguf.fixtures import LLAMA_BASE, LLAMA_MERGED, ahn_folder
from ahn_gguf.reference import attach_ahn, load_reference
from ahn_gguf.reference.recurrence import chunked_scan, naive_scan

pytestmark = pytest.mark.usefixtures("one_torch_thread")


WORDS = ("the memory of a model keeps every token that leaves its window in a compact recurrent "
         "state which it reads with each later query while the window holds recent text").split()


@pytest.fixture(scope="module")
def text_folder(tmp_path_factory):
    """Twelve small deterministic text documents (none long enough to be held out)."""
    d = tmp_path_factory.mktemp("docs")
    rng = random.Random(0)
    for i in range(12):
        words = [rng.choice(WORDS) for _ in range(600)]
        (d / f"doc{i:02d}.txt").write_text(" ".join(words) + "\n")
    return d


def ids_for(model, B=2, L=160, seed=0):
    return torch.randint(0, model.config.vocab_size, (B, L), generator=torch.Generator().manual_seed(seed))


# --- the student pass ------------------------------------------------------------------------------

@pytest.mark.parametrize("base,ahn", [(LLAMA_BASE, ahn_folder("llama", GDN)), ("qwen2-base", ahn_folder("qwen2", MAMBA2)),
                                      ("qwen2-base", ahn_folder("qwen2", DN)), (LLAMA_MERGED, None)])
@pytest.mark.parametrize("W,S,P", [(32, 0, 32), (24, 8, 32), (50, 30, 20)])
def test_student_is_the_reference_ahn_model(fixtures_root, base, ahn, W, S, P):
    """Suffix-only student (prefix states from the teacher) == ReferenceModel(mode="ahn") at positions >= P."""
    model = load_reference(fixtures_root / base, fixtures_root / ahn if ahn else None)
    ids = ids_for(model)
    with torch.no_grad():
        want = model(ids, mode="ahn", window=W, sinks=S)[:, P:]
        teacher = teacher_pass(model, ids, P)
        got = model.logits(student_hidden(model, ids, teacher, W, S))
        full = torch.log_softmax(model(ids, mode="full")[:, P:], -1)
    scale = want.abs().max().item()
    assert (got - want).abs().max().item() <= 1e-5 * scale
    assert (torch.cat(teacher.logp_chunks, 1) - full).abs().max().item() <= 1e-5 * full.abs().max().item()


def test_student_rejects_a_prefix_beyond_the_lossless_span(fixtures_root):
    model = load_reference(fixtures_root / LLAMA_BASE, fixtures_root / ahn_folder("llama", GDN))
    ids = ids_for(model, B=1, L=64)
    with pytest.raises(ValueError, match="prefix"):
        student_hidden(model, ids, teacher_pass(model, ids, 40), 16, 4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_flushed_chunked_scan_matches_the_naive_scan(variant):
    """The training scan flushes decay factors < 1e-30 to zero: same results as the per-token loop,
    also with decays strong enough to underflow (the case the flush exists for)."""
    gen = torch.Generator().manual_seed(1)
    B, T, H, d = 2, 150, 3, 16
    q, k, v = (torch.randn(B, T, H, d, generator=gen) for _ in range(3))
    g = -torch.rand(B, T, H, generator=gen) * 6.0          # cumulative decays reach -900 within a chunk
    b = torch.rand(B, T, H, generator=gen)
    state = torch.randn(B, H, d, d, generator=gen) * 0.1
    want_o, want_s = naive_scan(variant, q, k, v, g, b, state=state)
    got_o, got_s = chunked_scan(variant, q, k, v, g, b, state=state, chunk_size=32, flush_subnormals=True)
    assert (got_o - want_o).abs().max().item() <= 1e-4 * want_o.abs().max().item()
    assert (got_s - want_s).abs().max().item() <= 1e-4 * want_s.abs().max().item()


def test_kl_is_zero_when_the_window_covers_the_sequence(fixtures_root):
    """Student window >= L: the student is the teacher, KL = 0 to float precision (a prefix of 8
    keeps positions 8.. in the student's own computation)."""
    model = load_reference(fixtures_root / LLAMA_BASE)
    attach_ahn(model, "gdn", window=32, o_proj_std=0.05, seed=0)   # a non-zero AHN that never reads
    ids = ids_for(model, L=128)
    loss = distill_loss(model, ids, 128, 0, prefix=8)
    assert abs(loss.item()) < 1e-6
    assert distill_loss(model, ids, 32, 4).item() > 1e-3           # a real window does differ


def test_gradients_reach_only_the_ahn(fixtures_root):
    model = load_reference(fixtures_root / LLAMA_BASE)
    attach_ahn(model, "gdn", window=32, o_proj_std=0.05, seed=0)
    model.freeze_base()
    distill_loss(model, ids_for(model, B=1, L=96), 24, 8).backward()
    ahn = {id(p) for p in model.ahn_parameters()}
    for name, p in model.named_parameters():
        if id(p) in ahn:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
        else:
            assert p.grad is None, name
    assert any(p.grad.abs().sum() > 0 for p in model.ahn_parameters())


# --- the layer-local objective -------------------------------------------------------------------

@pytest.mark.parametrize("base,variant", [(LLAMA_BASE, GDN), ("qwen2-base", DN), ("qwen2-base", MAMBA2)])
@pytest.mark.parametrize("layer_id", [0, 1])
def test_layer_local_loss_is_the_unrestored_fraction_by_the_reference(fixtures_root, base, variant, layer_id):
    """The objective of one layer, computed independently with ReferenceModel's own forward: the
    layers below keep full attention (so the layer sees the teacher's inputs, as the objective
    assumes), the layers above are cut, the layer's MLP and the final norm are removed; then the
    output differences are o_proj's, and the loss is |h_full - h_ahn|^2 / |h_full - h_window|^2 over
    positions >= S + W."""
    model = load_reference(fixtures_root / base)
    attach_ahn(model, variant, window=24, o_proj_std=0.05, seed=1)
    layers = model.model.layers
    for i, layer in enumerate(layers):
        if i < layer_id:
            layer.full_attention, layer.ahn = True, None
    del layers[layer_id + 1:]
    torch.nn.init.zeros_(layers[layer_id].mlp.down_proj.weight)
    model.model.norm = torch.nn.Identity()
    W, S = 24, 8
    ids = ids_for(model, B=2, L=128, seed=3)
    with torch.no_grad():
        got = layer_local_step(model, ids, W, S, backward=False)
        h = {m: model.hidden_states(ids, mode=m, window=W, sinks=S)[:, S + W:] for m in ("full", "window", "ahn")}
    want = ((h["full"] - h["ahn"]).pow(2).sum() / (h["full"] - h["window"]).pow(2).sum()).item()
    assert 0.05 < want < 10 and got == pytest.approx(want, rel=1e-4), (got, want)


def test_layer_local_loss_is_one_for_a_silent_ahn_and_trains_only_the_ahn(fixtures_root):
    model = load_reference(fixtures_root / LLAMA_BASE)
    attach_ahn(model, "gdn", window=32)                       # zero o_proj: the AHN restores nothing
    model.freeze_base()
    ids = ids_for(model, B=1, L=96)
    assert layer_local_step(model, ids, 24, 8) == pytest.approx(1.0, abs=1e-6)
    ahn = {id(p) for p in model.ahn_parameters()}
    assert all(p.grad is None for p in model.parameters() if id(p) not in ahn)
    o_proj = [p for n, p in model.named_parameters() if n.endswith("ahn.fn.o_proj.weight")]
    assert o_proj and all(p.grad is not None and p.grad.abs().sum() > 0 for p in o_proj)
    assert layer_local_step(model, ids_for(model, B=1, L=32), 24, 8) == 0.0   # nothing evicted: no loss


def test_a_short_layer_local_run_lowers_its_loss_and_the_kl(fixtures_root, text_folder, tmp_path):
    """Eight layer-local steps on one batch of the tiny model: the objective falls, and here so does
    the end-to-end KL it stands in for (on SmolLM2 it does not: reports/distill-objectives.md; this
    checks the mechanics, not the worth)."""
    d = Distiller(small_config(fixtures_root, text_folder, tmp_path / "run", steps=8, warmup=0.0, objective="local",
                               max_sequences=2, spans=(36,), sinks=(4,)))
    batch = torch.from_numpy(d.data.sequences).long()
    with torch.no_grad():
        kl_before = distill_loss(d.model, batch, 32, 4).item()
    log = d.run()
    with torch.no_grad():
        kl_after = distill_loss(d.model, batch, 32, 4).item()
        local_after = layer_local_step(d.model, batch, 32, 4, backward=False)
    assert log.records[0]["loss"] == pytest.approx(1.0, abs=1e-6)      # untrained: nothing restored
    print(f"layer-local loss 1 -> {local_after:.4f}; KL {kl_before:.4f} -> {kl_after:.4f}")
    assert local_after < 0.8 and kl_after < 0.9 * kl_before, (local_after, kl_before, kl_after)
    assert "layer-local" in json.loads((tmp_path / "run" / "training-log.json").read_text())["notes"]["loss"]


def test_learning_curves_compare_runs_by_training_time(fixtures_root, text_folder, tmp_path):
    """The objectives' report reads the runs' logs: every validation point with the training time of
    its step, and the comparison at the time both runs reached."""
    from ahn_gguf.distill.curves import at_time, compare

    runs = []
    for objective in ("kl", "local"):
        out = tmp_path / objective
        Distiller(small_config(fixtures_root, text_folder, out, steps=3, objective=objective, val_every=1)).run()
        runs.append(out)
    md, js = compare(runs, tmp_path / "report", "objectives")
    result = json.loads(js.read_text())
    for run, curve in zip(runs, result["runs"]):
        log = json.loads((run / "training-log.json").read_text())
        assert [p["loss"] for p in curve["validation"]] == [v["loss"] for v in log["validation"]]
        assert [p["train_s"] for p in curve["validation"]] == [0.0] + [r["wall_s"] for r in log["records"]]
        assert curve["objective"] == run.name and curve["steps_done"] == 3
    common = result["common_train_s"]["fresh"]     # both runs start from a fresh AHN
    assert common == min(c["validation"][-1]["train_s"] for c in result["runs"])
    for c in result["runs"]:
        assert result["at_common"][c["run"]] == at_time(c, common) and at_time(c, common)["train_s"] <= common
    text = md.read_text()
    assert "| kl | kl | fresh |" in text and "| local | local | fresh |" in text


# --- schedule -----------------------------------------------------------------------------------------

def test_spans_and_sinks_follow_the_paper_rules():
    spans, sinks, L = (64, 128, 256, 512, 1024, 2048), (0, 32, 64, 128), 1024
    assert allowed_spans(spans, L) == (256, 512)
    seen = set()
    for step in range(400):
        W, S = draw_window(step, 0, spans, sinks, L)
        assert L / 8 < W + S < L and S <= (W + S) // 2 and W >= 1
        seen.add((W, S))
        assert draw_window(step, 0, spans, sinks, L) == (W, S)   # a function of (seed, step)
    assert {S for _, S in seen} == {0, 32, 64, 128} and {W + S for W, S in seen} == {256, 512}
    with pytest.raises(ValueError, match="no span"):
        allowed_spans((32, 4096), 1024)


def test_learning_rate_warms_up_then_follows_a_cosine():
    f = [lr_factor(s, 100, 0.1, 0.0) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[55] == pytest.approx(0.5, abs=0.01)
    assert all(a >= b for a, b in zip(f[10:], f[11:])) and f[-1] < 0.001


# --- runs ---------------------------------------------------------------------------------------------

def small_config(fixtures_root, text_folder, out, **kw):
    cfg = dict(base=str(fixtures_root / LLAMA_BASE), out_dir=str(out), variant="gdn", seq_len=128, batch_size=2,
               steps=4, lr=1e-2, spans=(32, 48, 64), sinks=(0, 4, 8), window=32, default_sinks=4,
               data=str(text_folder), seed=0, threads=1, progress=False, checkpoint_every_s=1e9)
    cfg.update(kw)
    return DistillConfig(**cfg)


def test_a_short_run_lowers_the_kl_on_the_same_batch(fixtures_root, text_folder, tmp_path):
    """Eight steps on one batch (two sequences, one W and S) from a zero o_proj: the KL on that
    batch falls well below its value before training."""
    d = Distiller(small_config(fixtures_root, text_folder, tmp_path / "run", steps=8, warmup=0.0,
                               max_sequences=2, spans=(36,), sinks=(4,)))
    batch = torch.from_numpy(d.data.sequences).long()
    with torch.no_grad():
        before = distill_loss(d.model, batch, 32, 4).item()
    log = d.run()
    with torch.no_grad():
        after = distill_loss(d.model, batch, 32, 4).item()
    assert log.records[0]["loss"] == pytest.approx(before, rel=1e-5)   # step 1 saw the same batch, untrained
    print(f"KL on the batch: {before:.4f} before, {after:.4f} after 8 steps")
    assert after < 0.7 * before, (before, after)


def test_written_ahn_loads_in_the_reference_and_converts(fixtures_root, text_folder, tmp_path):
    out = tmp_path / "ahn"
    d = Distiller(small_config(fixtures_root, text_folder, out, steps=2))
    d.run()
    for name in ("config.json", "model.safetensors", LOG_JSON, LOG_CSV, f"{CHECKPOINT_DIR}/{CHECKPOINT_FILE}"):
        assert (out / name).is_file(), name
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["_ahn_implementation"] == GDN and cfg["sliding_window"] == 32 and cfg["num_attn_sinks"] == 4
    assert cfg["fa_layer_ids"] == "" and cfg["use_ahn_router"] is False and cfg["use_q_proj"] is False
    loaded = load_reference(fixtures_root / LLAMA_BASE, out)
    trained = {k: v for k, v in d.model.state_dict().items() if ".ahn." in k}
    for k, v in trained.items():
        assert torch.equal(loaded.state_dict()[k], v), k
    log = json.loads((out / LOG_JSON).read_text())
    assert [r["step"] for r in log["records"]] == [1, 2] and log["status"] == "done"
    assert {"loss", "lr", "tokens", "wall_s", "window", "sinks"} <= set(log["records"][0])

    from ahn_gguf.convert import convert_ahn_only
    from ahn_gguf.gguf_io.contents import read_gguf

    gguf_path = convert_ahn_only(str(out), tmp_path / "ahn.gguf", progress=False)
    contents = read_gguf(gguf_path)
    assert contents.arch == "ahn"
    assert contents.get("ahn.ahn.window") == 32 and contents.get("ahn.ahn.sinks") == 4


def test_resume_continues_the_same_run(fixtures_root, text_folder, tmp_path):
    whole = Distiller(small_config(fixtures_root, text_folder, tmp_path / "whole", steps=5)).run()
    first = Distiller(small_config(fixtures_root, text_folder, tmp_path / "split", steps=5))
    first.run(stop_after=2)
    assert first.step == 2
    del first
    second = Distiller(small_config(fixtures_root, text_folder, tmp_path / "split", steps=5), resume=True)
    log = second.run()
    assert [r["loss"] for r in log.records] == [r["loss"] for r in whole.records]
    assert [(r["window"], r["sinks"]) for r in log.records] == [(r["window"], r["sinks"]) for r in whole.records]
    a = load_reference(fixtures_root / LLAMA_BASE, tmp_path / "whole")
    b = load_reference(fixtures_root / LLAMA_BASE, tmp_path / "split")
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


class _RunsCodeWhenUnpickled:
    """An object whose unpickling would create a file: what a hostile checkpoint could do."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        from pathlib import Path

        return (Path.touch, (Path(self.marker),))


def test_a_checkpoint_is_read_as_data_only(fixtures_root, text_folder, tmp_path):
    """--resume never runs what a checkpoint holds (torch.load weights_only): a file with a pickled
    callable is refused with a clear error and the callable never runs; a checkpoint of the earlier
    format (numpy's RNG state as an ndarray) still resumes."""
    from ahn_gguf.distill.trainer import load_checkpoint_file
    from ahn_gguf.errors import UsageError

    out = tmp_path / "r"
    Distiller(small_config(fixtures_root, text_folder, out, steps=3)).run(stop_after=1)
    ckpt = out / CHECKPOINT_DIR / CHECKPOINT_FILE
    state = torch.load(ckpt, weights_only=True)                       # the format itself is plain data
    assert isinstance(state["rng"]["numpy"], dict)

    state["rng"]["numpy"] = np.random.get_state()                    # the earlier format ...
    del state["config"]["objective"]                                  # ... from before --objective
    torch.save(state, ckpt)
    resumed = Distiller(small_config(fixtures_root, text_folder, out, steps=3), resume=True)
    assert resumed.step == 1 and resumed.run().records[-1]["step"] == 3

    marker = tmp_path / "ran"
    state["log"]["evil"] = _RunsCodeWhenUnpickled(marker)
    torch.save(state, ckpt)
    with pytest.raises(UsageError, match="can be read as data"):
        load_checkpoint_file(ckpt)
    with pytest.raises(UsageError, match="can be read as data"):
        Distiller(small_config(fixtures_root, text_folder, out, steps=3), resume=True)
    assert not marker.exists()
    torch.save({"step": 1}, ckpt)
    with pytest.raises(UsageError, match="missing its fields"):
        load_checkpoint_file(ckpt)


def test_resume_refuses_other_settings_and_a_fresh_run_refuses_a_checkpoint(fixtures_root, text_folder, tmp_path):
    Distiller(small_config(fixtures_root, text_folder, tmp_path / "r", steps=3)).run(stop_after=1)
    with pytest.raises(FileExistsError, match="--resume"):
        Distiller(small_config(fixtures_root, text_folder, tmp_path / "r", steps=3))
    with pytest.raises(ValueError, match="lr"):
        Distiller(small_config(fixtures_root, text_folder, tmp_path / "r", steps=3, lr=5e-3), resume=True)
    with pytest.raises(FileNotFoundError):
        Distiller(small_config(fixtures_root, text_folder, tmp_path / "none", steps=3), resume=True)


def test_resume_on_another_machine_may_switch_bf16_and_spell_out_the_default_data(fixtures_root, tmp_path,
                                                                                 monkeypatch):
    """A run started on the CPU continues on a GPU in bf16 (ahn_gguf.distill.gpu passes the mixture by
    name): bf16 and `data=None` vs the default mixture spelled out do not block the resume."""
    from ahn_gguf import data

    folder = tmp_path / "docs"
    folder.mkdir()
    for i in range(6):
        (folder / f"d{i}.txt").write_text(" ".join(["alpha beta gamma delta"] * 300) + "\n")
    monkeypatch.setattr(data, "TRAIN_MIXTURE", str(folder))      # the default mixture, without downloads
    Distiller(small_config(fixtures_root, folder, tmp_path / "r", steps=2, data=None, val_every=0)).run(stop_after=1)
    resumed = Distiller(small_config(fixtures_root, folder, tmp_path / "r", steps=2, data=str(folder), bf16=True,
                                     val_every=0), resume=True)
    assert resumed.step == 1 and resumed.run().records[-1]["step"] == 2


def test_distill_command_line(fixtures_root, text_folder, tmp_path, capsys):
    from ahn_gguf.cli import main

    out = tmp_path / "cli"
    rc = main(["distill", str(fixtures_root / LLAMA_BASE), "-o", str(out), "--data", str(text_folder),
               "--seq-len", "128", "--spans", "32,64", "--sinks", "0,4", "--window", "32", "--default-sinks", "4",
               "--steps", "2", "--threads", "1", "--variant", "dn", "--no-progress", "--lr", "1e-3"])
    assert rc == 0
    assert "step 2/2" in capsys.readouterr().out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["_ahn_implementation"] == DN
    lines = (out / LOG_CSV).read_text().splitlines()
    assert lines[0].startswith("step,loss,lr") and len(lines) == 3
    np.testing.assert_array_equal(
        [json.loads((out / LOG_JSON).read_text())["records"][-1]["tokens"]], [2 * 128])


def test_validation_batch_is_fixed_set_aside_and_survives_a_resume(fixtures_root, text_folder, tmp_path):
    """The validation sequences never reach a training batch; the curve is scored at step 0 and every
    N steps at the default W and S; a resumed run's curve equals an uninterrupted one's."""
    kw = dict(steps=4, val_every=2, val_sequences=2)
    whole = Distiller(small_config(fixtures_root, text_folder, tmp_path / "whole", **kw))
    val_rows = {tuple(r) for _, r in whole.val_batch}
    assert len(val_rows) == 2 and not val_rows & {tuple(r) for r in whole.data.sequences}
    with torch.no_grad():   # what step 0 scores: the untrained AHN on those rows at the default W = 32, S = 4
        want = np.mean([distill_loss(whole.model, torch.from_numpy(r[None]).long(), 32, 4).item()
                        for _, r in whole.val_batch])
    log = whole.run()
    assert [v["step"] for v in log.validation] == [0, 2, 4]
    assert log.validation[0]["loss"] == pytest.approx(want, rel=1e-6)
    assert log.validation[2]["loss"] != log.validation[0]["loss"]     # the AHN it scores is the trained one
    split = Distiller(small_config(fixtures_root, text_folder, tmp_path / "split", **kw))
    split.run(stop_after=3)
    resumed = Distiller(small_config(fixtures_root, text_folder, tmp_path / "split", **kw), resume=True).run()
    assert [(v["step"], v["loss"]) for v in resumed.validation] == [(v["step"], v["loss"]) for v in log.validation]
    on_disk = json.loads((tmp_path / "split" / LOG_JSON).read_text())
    assert [v["step"] for v in on_disk["validation"]] == [0, 2, 4]
    assert on_disk["data"]["sources"][str(text_folder)]["validation_sequences"] == 2


def test_training_mixes_sources_and_refuses_evaluation_only_ones(fixtures_root, text_folder, tmp_path, monkeypatch):
    from ahn_gguf import data

    second = tmp_path / "second"
    second.mkdir()
    for i in range(4):
        (second / f"other{i}.txt").write_text(" ".join(["zebra quartz"] * 400) + "\n")
    one = Distiller(small_config(fixtures_root, text_folder, tmp_path / "one", val_every=0))
    both = Distiller(small_config(fixtures_root, text_folder, tmp_path / "both", val_every=0,
                                  data=f"{text_folder},{second}"))
    assert len(both.data) > len(one.data)
    assert set(both.log.data["sources"]) == {str(text_folder), str(second)}
    # an evaluation-only source (a domain kept unseen) is refused for training, by name
    real = data.load_source
    monkeypatch.setattr(data, "load_source", lambda name: ([], {"eval_only": True}) if name == "perl-doc" else real(name))
    with pytest.raises(data.DataError, match="evaluation-only"):
        data.load_mixture(f"{text_folder},perl-doc", training=True)
    assert [n for n, _, _ in data.load_mixture(f"{text_folder},perl-doc", training=False)] == [str(text_folder), "perl-doc"]


def test_init_from_starts_at_an_earlier_ahn(fixtures_root, text_folder, tmp_path):
    first = Distiller(small_config(fixtures_root, text_folder, tmp_path / "first", steps=2, val_every=0))
    first.run()
    warm = Distiller(small_config(fixtures_root, text_folder, tmp_path / "warm", steps=2, val_every=0,
                                  init_from=str(tmp_path / "first")))
    a = {k: v for k, v in first.model.state_dict().items() if ".ahn." in k}
    b = {k: v for k, v in warm.model.state_dict().items() if ".ahn." in k}
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # ... or from its GGUF (a sidecar, as the shipped default is): the converter's mapping undone exactly
    from ahn_gguf.convert import convert_ahn_only

    sidecar = convert_ahn_only(str(tmp_path / "first"), tmp_path / "first.gguf", progress=False)
    from_gguf = Distiller(small_config(fixtures_root, text_folder, tmp_path / "warm2", steps=2, val_every=0,
                                       init_from=str(sidecar)))
    c = {k: v for k, v in from_gguf.model.state_dict().items() if ".ahn." in k}
    assert all(torch.equal(a[k], c[k]) for k in a if not k.endswith(".D"))
    with pytest.raises(ValueError, match="variant"):
        Distiller(small_config(fixtures_root, text_folder, tmp_path / "dn", variant="dn", val_every=0,
                               init_from=str(tmp_path / "first")))
