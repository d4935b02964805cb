"""`ahn-gguf eval` (ahn_gguf.evaluate): the table, the modes, the report files, both engines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ahn_gguf import evaluate as ev
from ahn_gguf.fixtures import LLAMA_BASE, ahn_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_sequences(n, length, vocab, seed=0):
    rng = np.random.default_rng(seed)
    return [(f"doc{i}", rng.integers(0, vocab, length).tolist()) for i in range(n)]


@pytest.fixture(scope="module")
def ref_engine(fixtures_root):
    return ev.ReferenceEngine(fixtures_root / LLAMA_BASE, fixtures_root / ahn_folder("llama", "GatedDeltaNet"),
                              window=16, sinks=4, threads=1, matched=24)


def test_matched_window_is_the_ahn_bytes_spent_on_k_v():
    """The issue's figure for the default model (SmolLM2, W = 256, S = 32, F16 K/V): W' = 475, from the
    runtime's own sizes (30 layers x 3 KV heads x 64 x 2 x 2 B per token; 9 x 64 x 64 x 4 B x 30 of
    state; 2 gates x 9 heads x 4 B x 30 per cached cell)."""
    kv, gates, state = 30 * 3 * 64 * 2 * 2, 30 * 9 * 2 * 4, 30 * 9 * 64 * 64 * 4
    assert (kv, gates, state) == (23040, 2160, 4423680)
    assert ev.matched_window(256, 32, kv, gates, state) == 475
    w = ev.matched_window(512, 32, kv, gates, state)
    assert (w - 512) * kv <= state + gates * 544 < (w - 511) * kv     # never more bytes than the AHN's


def test_context_lengths():
    assert ev.context_lengths(256, 32, 8192) == [512, 1024, 2048, 4096, 8192]
    assert ev.context_lengths(256, 32, 3000) == [512, 1024, 2048, 3000]
    assert ev.context_lengths(16, 4, 64) == [32, 64]


def test_eval_table_has_the_four_modes(ref_engine, tmp_path):
    seqs = random_sequences(2, 128, 49152)
    res = ev.run_eval(ref_engine, seqs, lengths=[32, 64, 128], passkey_trials=1, progress=False)
    assert set(res.ppl) == set(ev.MODES)
    for m in ev.MODES:
        assert all(np.isfinite(res.ppl[m][c]) and res.ppl[m][c] > 1 for c in (32, 64, 128))
    # positions scored: t = S+W .. C-2 of each document
    assert res.positions == {32: 2 * (31 - 20), 64: 2 * (63 - 20), 128: 2 * (127 - 20)}
    assert set(res.gap_closed) == {32, 64, 128} and res.matched_window == 24
    assert res.advantage == {c: res.ppl["matched"][c] - res.ppl["ahn"][c] for c in (32, 64, 128)}
    assert set(res.passkey) == set(ev.MODES) and res.passkey["full"][128]["trials"] == 1
    assert res.passkey["full"][32] is None            # too short for the prompt: not probed
    paths = ev.write_report(res, tmp_path / "eval-fixture", "fixture eval")
    md = paths["md"].read_text()
    for label in ev.MODE_LABEL.values():
        assert label in md
    assert "gap closed by AHN" in md and "AHN - matched" in md and "W' = 24" in md and "Passkey" in md
    assert json.loads(paths["json"].read_text())["window"] == 16
    assert paths["png"].stat().st_size > 1000
    # a report name with dots (a model file's stem) keeps them: "x.Q4_1" is not a suffix to replace
    dotted = ev.write_report(res, tmp_path / "eval-model.Q4_1.ahn-gdn", "fixture eval")
    assert [p.name for p in dotted.values()] == [f"eval-model.Q4_1.ahn-gdn.{e}" for e in ("md", "json", "png")]


def test_one_pass_gives_every_shorter_length(ref_engine):
    """The NLL of a prefix of length C equals the first C-1 positions of the longest pass."""
    ids = random_sequences(1, 96, 49152, seed=3)[0][1]
    long, _ = ref_engine.score(ids, "ahn")
    short, _ = ref_engine.score(ids[:50], "ahn")
    np.testing.assert_allclose(long[:49], short, rtol=1e-5, atol=1e-5)


def test_full_equals_window_when_the_window_covers_the_context(fixtures_root):
    engine = ev.ReferenceEngine(fixtures_root / LLAMA_BASE, fixtures_root / ahn_folder("llama", "GatedDeltaNet"),
                                window=128, sinks=0, threads=1)
    seqs = random_sequences(2, 128, 49152, seed=1)
    res = ev.run_eval(engine, seqs, lengths=[128], passkey_trials=0, progress=False)
    # W >= C: nothing is evicted, the three modes are one computation
    assert res.positions[128] == 0 or res.ppl["full"][128] == res.ppl["window"][128]
    full, _ = engine.score(seqs[0][1], "full")
    window, _ = engine.score(seqs[0][1], "window")
    ahn, _ = engine.score(seqs[0][1], "ahn")
    np.testing.assert_allclose(window, full, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ahn, full, rtol=1e-5, atol=1e-6)


def test_passkey_prompt_has_the_exact_length(ref_engine):
    rng = np.random.default_rng(0)
    for length in (100, 257, 1000):
        ids, n_ans = ev.passkey_prompt(ref_engine, length, rng)
        assert len(ids) == length and 1 <= n_ans <= 8


def test_eval_command_line_reference_engine(fixtures_root, tmp_path, capsys):
    """The CLI on a text folder: held-out documents only (named so that their path hash holds them out)."""
    from ahn_gguf.cli import main
    from tests.quality.test_data import name_with_hash

    docs = tmp_path / "docs"
    docs.mkdir()
    rng = np.random.default_rng(0)
    for k in range(2):
        words = [" ".join(rng.choice(list("abcdefgh"), 5)).replace(" ", "") for _ in range(7000)]
        (docs / name_with_hash(f"h{k}_", True)).write_text(" ".join(words))
    out = tmp_path / "report"
    rc = main(["eval", str(fixtures_root / LLAMA_BASE), "--engine", "reference", "--ahn",
               str(fixtures_root / ahn_folder("llama", "GatedDeltaNet")), "--window", "16", "--sinks", "4",
               "--max-ctx", "96", "--data", str(docs), "--passkey-trials", "1", "--threads", "1",
               "-o", str(out), "--no-progress"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| 32 |" in text and "| 96 |" in text
    result = json.loads(out.with_suffix(".json").read_text())
    assert len(result["documents"]) == 2 and result["lengths"] == [32, 64, 96]

    # --docs 1 of the sinks + window baselines first, then --reuse it for both documents: the second
    # run measures full and window of the new document only, and pools them to the one-run figures
    common = [str(fixtures_root / LLAMA_BASE), "--engine", "reference", "--ahn",
              str(fixtures_root / ahn_folder("llama", "GatedDeltaNet")), "--window", "16", "--sinks", "4",
              "--max-ctx", "96", "--data", str(docs), "--passkey-trials", "0", "--threads", "1", "--no-progress"]
    assert main(["eval", *common, "--docs", "1", "--modes", "full,window", "-o", str(tmp_path / "one")]) == 0
    assert main(["eval", *common, "--modes", "ahn", "--reuse", str(tmp_path / "one.json"),
                 "-o", str(tmp_path / "grown")]) == 0
    grown = json.loads((tmp_path / "grown.json").read_text())
    assert grown["documents"] == result["documents"]
    for m in ("full", "window", "ahn"):
        assert grown["ppl"][m] == pytest.approx(result["ppl"][m], rel=1e-9)
    assert "modes full, window: 1 of 2 documents taken from" in capsys.readouterr().out
    for bad in ("{", '{"window": 16}', '{"window": 16, "sinks": 4, "lengths": [32, 64, 96], "ppl": {"full": 1}}'):
        (tmp_path / "bad.json").write_text(bad)
        assert main(["eval", *common, "--modes", "ahn", "--reuse", str(tmp_path / "bad.json"),
                     "-o", str(tmp_path / "x")]) == 1
        assert "not a readable ahn-gguf eval result" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()


# --- the GGUF engine (patched llama.cpp) -----------------------------------------------------------

@pytest.mark.llama
def test_gguf_engine_matches_the_reference(fixtures_root, tmp_path_factory, ref_engine):
    """Per-position NLL through llama.cpp (F32 GGUF) == the PyTorch reference, in all three modes."""
    pytest.importorskip("llama_cpp")
    from ahn_gguf.reference import load_reference
    from tests.helpers.runtime import convert_fixture

    path = convert_fixture(fixtures_root, tmp_path_factory.mktemp("eval-gguf"), "llama", "gdn", "f32")
    engine = ev.GGUFEngine(path, n_ctx=256, window=16, sinks=4, threads=1, n_batch=64)
    # W' from the runtime's accounting == the same sizes from the model's shape (F16 K/V, F32 state and gates)
    cfg = load_reference(fixtures_root / LLAMA_BASE).config
    L, H, Hkv, d = cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    assert engine.memory["kv_bytes_per_token"] == L * Hkv * d * 2 * 2
    assert engine.memory["state_bytes"] == L * H * d * d * 4 and engine.memory["gate_bytes_per_token"] == L * H * 2 * 4
    assert engine.matched == ev.matched_window(16, 4, L * Hkv * d * 2 * 2, L * H * 2 * 4, L * H * d * d * 4) > 16
    ref_engine.matched = engine.matched
    ids = random_sequences(1, 250, 49152, seed=5)[0][1]   # > S + W' = 213: the matched window forgets too
    for mode in ev.MODES:
        got, got_top = engine.score(ids, mode)
        want, want_top = ref_engine.score(ids, mode)
        np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-3, err_msg=mode)
        assert (got_top == want_top).mean() > 0.97
    assert engine.tokenize("hello world") == ref_engine.tokenize("hello world")
    full, _ = engine.score(ids, "full")
    window, _ = engine.score(ids, "window")
    assert np.abs(full - window)[:19].max() < 1e-3       # t < S + W: nothing evicted yet
    assert np.abs(full - window)[40:].mean() > 1e-3       # later: the window forgets
    matched, _ = engine.score(ids, "matched")
    W2 = engine.matched
    assert W2 == 209 and np.abs(full - matched)[:4 + W2 - 1].max() < 1e-3   # the wider window forgets later ...
    assert np.abs(full - matched)[4 + W2 + 5:].mean() > 1e-3                # ... but it does


class CountingEngine:
    """The engine, counting the documents it scores per mode."""

    def __init__(self, engine):
        self._engine, self.scored = engine, []

    def __getattr__(self, name):
        return getattr(self._engine, name)

    def score(self, ids, mode):
        self.scored.append(mode)
        return self._engine.score(ids, mode)


def _lend(previous, res_docs, engine, lengths, measure=()):
    return ev.reusable_blocks(json.loads(json.dumps(previous)), window=engine.window, sinks=engine.sinks,
                              lengths=lengths, documents=res_docs, matched_window=engine.matched, measure=measure)


def test_modes_measured_earlier_can_be_reused(ref_engine):
    """full and window do not depend on the AHN: a result merged from two runs equals one run."""
    seqs = random_sequences(2, 128, 49152, seed=2)
    whole = ev.run_eval(ref_engine, seqs, lengths=[64, 128], passkey_trials=1, progress=False)
    first = ev.run_eval(ref_engine, seqs, lengths=[64, 128], modes=("full", "window"), passkey_trials=1,
                        progress=False)
    assert not first.gap_closed
    known, lent = _lend(first.as_dict(), [p for p, _ in seqs], ref_engine, [64, 128], measure=("ahn",))
    assert lent == ["full", "window"]
    counting = CountingEngine(ref_engine)
    second = ev.run_eval(counting, seqs, lengths=[64, 128], modes=("ahn", "full", "window"), passkey_trials=1,
                         progress=False, known=known, probe_modes=("ahn",))
    ev.take_probes(second, json.loads(json.dumps(first.as_dict())), lent)
    assert set(counting.scored) == {"ahn"}          # full and window: neither documents nor probes again
    for c in (64, 128):
        assert second.gap_closed[c] == pytest.approx(whole.gap_closed[c], rel=1e-12)
        assert second.passkey["window"][c] == whole.passkey["window"][c]
    previous = first.as_dict()
    previous["window"] = 99
    with pytest.raises(ValueError, match="reuse"):
        _lend(previous, [p for p, _ in seqs], ref_engine, [64, 128])


def test_an_evaluation_grows_by_documents_measuring_only_the_new_ones(ref_engine):
    """--docs 3 after --docs 2: the first two documents' full / window sums are taken document by
    document, only the third is scored, and the pooled perplexities equal one run over all three."""
    seqs = random_sequences(3, 128, 49152, seed=5)
    lengths = [64, 128]
    whole = ev.run_eval(ref_engine, seqs, lengths=lengths, modes=("full", "window", "ahn"), passkey_trials=0,
                        progress=False)
    two = ev.run_eval(ref_engine, seqs[:2], lengths=lengths, modes=("full", "window"), passkey_trials=0,
                      progress=False)
    assert [b["documents"] for b in two.document_nll["full"]] == [["doc0"], ["doc1"]]
    known, lent = _lend(two.as_dict(), ["doc0", "doc1", "doc2"], ref_engine, lengths, measure=("ahn",))
    counting = CountingEngine(ref_engine)
    grown = ev.run_eval(counting, seqs, lengths=lengths, modes=("ahn", *lent), passkey_trials=0, progress=False,
                        known=known)
    assert sorted(counting.scored) == ["ahn"] * 3 + ["full", "window"]
    assert grown.positions == whole.positions == {64: 3 * 43, 128: 3 * 107}
    for m in ("full", "window", "ahn"):
        for c in lengths:
            assert grown.ppl[m][c] == pytest.approx(whole.ppl[m][c], rel=1e-12)
    assert grown.gap_closed[128] == pytest.approx(whole.gap_closed[128], rel=1e-12)

    # a result written before per-document sums (means only) lends one pooled block ...
    legacy = two.as_dict()
    del legacy["document_nll"]
    known, lent = _lend(legacy, ["doc0", "doc1", "doc2"], ref_engine, lengths)
    assert known["full"][0]["documents"] == ["doc0", "doc1"]
    pooled = ev.run_eval(ref_engine, seqs, lengths=lengths, modes=lent, passkey_trials=0, progress=False,
                         known=known)
    for c in lengths:
        assert pooled.ppl["window"][c] == pytest.approx(whole.ppl["window"][c], rel=1e-12)
    # ... usable only when all its documents are scored here; per-document sums lend what matches
    with pytest.raises(ValueError, match="only means"):
        _lend(legacy, ["doc1", "doc2"], ref_engine, lengths)
    known, _ = _lend(two.as_dict(), ["doc1", "doc2"], ref_engine, lengths)
    assert [b["documents"] for b in known["window"]] == [["doc1"]]
    # the AHN's own mode is never lent, and a matched window of another W' is refused
    assert "ahn" not in _lend(whole.as_dict(), ["doc0", "doc1", "doc2"], ref_engine, lengths)[0]
    other = ev.run_eval(ref_engine, seqs[:2], lengths=lengths, modes=("matched",), passkey_trials=0, progress=False)
    other = other.as_dict()
    other["matched_window"] = 999
    with pytest.raises(ValueError, match="W' = 999"):
        _lend(other, ["doc0", "doc1"], ref_engine, lengths)
    assert "matched" not in _lend(other, ["doc0", "doc1"], ref_engine, lengths, measure=("matched",))[0]


def python_like_code(n_lines: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    names = ["alpha", "beta", "gamma", "value", "total", "index", "buffer", "result"]
    lines = []
    for i in range(n_lines):
        a, b = rng.choice(names, 2)
        lines.append(f"    {a}_{i % 17} = {b} + {int(rng.integers(0, 99))}" if i % 9 else f"def step_{i}({a}, {b}):")
    return "\n".join(lines) + "\n"


def _find(haystack: list[int], needle: list[int]) -> int:
    for i in range(len(haystack) - len(needle) + 1):
        if haystack[i:i + len(needle)] == needle:
            return i
    return -1


def test_code_recall_prompt_defines_the_helper_at_a_line_start_and_asks_for_it_at_the_end(ref_engine):
    """Exact length; the definition sits 10-50% deep, right after a line break of the real code; the
    prompt ends with `records = <first word>` + the answer, the rest of the name and the call."""
    code = python_like_code(4000)
    rng = np.random.default_rng(0)
    seen = set()
    for length in (120, 333, 1000, 2000):
        ids, n_ans = ev.code_recall_prompt(ref_engine, code, length, rng)
        assert len(ids) == length
        # recover the name from the answer: the last n_ans tokens spell "_<w2>_<w3>(records)"
        tok = ref_engine._tok
        answer = tok.decode(ids[-n_ans:])
        assert answer.startswith("_")
        w2, w3 = answer[1:].split("_")
        question_tail = tok.decode(ids[-n_ans - 12:-n_ans])
        w1 = question_tail.rsplit("records = ", 1)[1]
        assert {w1, w2, w3} <= set(ev.RECALL_WORDS) and len({w1, w2, w3}) == 3
        seen.add((w1, w2, w3))
        needle = ref_engine.tokenize(f"\n\ndef {w1}_{w2}_{w3}(items):")
        at = _find(ids, needle)
        assert at > 0, "the definition is in the prompt"
        assert 0.05 * length <= at <= 0.55 * length
        assert tok.decode(ids[:at]).endswith("\n")            # it starts a line of the real code
        assert tok.decode(ids[:at]).replace(" ", "") in code.replace(" ", "")   # what precedes is the file's own
    assert len(seen) == 4                                     # a new name per prompt
    with pytest.raises(ValueError, match="too short"):
        ev.code_recall_prompt(ref_engine, code, 30, rng)
    with pytest.raises(ValueError, match="too short"):
        ev.code_recall_prompt(ref_engine, python_like_code(50), 2000, rng)


def test_eval_command_line_code_recall(fixtures_root, tmp_path, capsys):
    """--recall-trials on a folder of code: the probe's table is in the report, built from the held-out files."""
    from ahn_gguf.cli import main
    from tests.quality.test_data import name_with_hash

    docs = tmp_path / "code"
    docs.mkdir()
    for k in range(2):
        (docs / name_with_hash(f"c{k}_", True)).write_text(python_like_code(3000, seed=k))
    out = tmp_path / "report"
    rc = main(["eval", str(fixtures_root / LLAMA_BASE), "--engine", "reference", "--ahn",
               str(fixtures_root / ahn_folder("llama", "GatedDeltaNet")), "--window", "16", "--sinks", "4",
               "--lengths", "64,160", "--data", str(docs), "--passkey-trials", "0", "--recall-trials", "2",
               "--threads", "1", "-o", str(out), "--no-progress"])
    assert rc == 0
    assert "Code recall" in capsys.readouterr().out
    result = json.loads(out.with_suffix(".json").read_text())
    assert result["recall"]["ahn"]["160"]["trials"] == 2 and not result["passkey"]


def test_code_recall_probe_runs_in_every_mode_and_is_reported(ref_engine, tmp_path):
    seqs = random_sequences(1, 256, 49152, seed=4)
    res = ev.run_eval(ref_engine, seqs, lengths=[64, 256], passkey_trials=0, progress=False,
                      recall_texts=[python_like_code(3000)], recall_trials=2)
    assert not res.passkey and set(res.recall) == set(ev.MODES)
    for m in ev.MODES:
        r = res.recall[m][256]
        assert r["trials"] == 2 and 0.0 <= r["accuracy"] <= 1.0 and np.isfinite(r["nll"]) and r["nll"] > 0
    md = ev.markdown(res, "t")
    assert "Code recall" in md and "2 prompts per length" in md
    assert ev.write_report(res, tmp_path / "r", "t")["png"].stat().st_size > 1000
    alone = ev.run_eval(ref_engine, seqs, lengths=[64, 256], passkey_trials=0, progress=False, perplexity=False,
                        recall_texts=[python_like_code(3000)], recall_trials=2)
    assert not alone.ppl and alone.recall == res.recall          # the same prompts, without the perplexity pass
    md = ev.markdown(alone, "t")
    assert "Code recall" in md and "positions scored" not in md
    assert ev.write_report(alone, tmp_path / "alone", "t")["png"].stat().st_size > 1000
    with pytest.raises(ValueError, match="held-out code"):
        ev.run_eval(ref_engine, seqs, lengths=[64], passkey_trials=0, progress=False, recall_trials=1)
