"""An F16 AHN memory (`ahn_memory_type="f16"`, `{arch}.ahn.memory_type = f16`): the recurrent states
and the per-token write gates stored in F16, computed in F32 (patches 0014, 0015: the
fused op reads the F16 gates in place).

- Against the PyTorch reference (float32 states) on prompts of 10 x (S + W) tokens, ubatch 1, 7,
  64 and 512, then 64 decode steps, all three variants, both families, fused op and stock-op
  composition: the rounding of the stored states stays within a documented bound, and the fused
  op and the composition agree with each other as closely as two F16 roundings of one value can.
- F32 K/V throughout, so that what is measured is the memory's own rounding (F16 K/V adds its own,
  measured in test_runtime_parity.py).
- The bytes: states and gates cost exactly half, so the memory-matched window W' shrinks.
- Several sequences in one context, save/load, a wrong type named in the error.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from tests.helpers.runtime import (
    FAMILIES,
    N_DECODE,
    UBATCHES,
    VARIANTS,
    WINDOW,
    convert_fixture,
    greedy_run,
    memory_path,
    open_model,
    patched_llama_cpp,
    prompt_tokens,
    reference_logits,
)

# Measured on these fixtures (W = 16, S = 4, 10 x (S + W) prompt + 64 decode steps, F32 K/V, the 48
# runs of family x variant x ubatch x path): max |err| / max |logit| = 0.4e-3 .. 3.9e-3 against the
# float32 reference (F32 memory: ~3e-5), the largest at ubatch 1 (a rounding per token), argmax
# agreement 99.6% .. 100% (near-ties of random weights flip). The bounds, with room for other seeds,
# are those of the F16 K/V cache (test_runtime_parity.py):
F16_MEMORY_REL_BOUND = 1e-2
F16_MEMORY_ARGMAX_MIN = 0.98


def _rel(got, want):
    return float(np.abs(got - want).max()) / float(np.abs(want).max())


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", FAMILIES)
def test_f16_memory_within_bound_of_reference(family, variant, fixtures_root, gguf_dir, reference, record_property):
    path = convert_fixture(fixtures_root, gguf_dir, family, variant)
    ref = reference(family, variant)
    sinks = 4
    prompt = prompt_tokens(10 * (sinks + WINDOW), seed=5)

    # the F32 memory's greedy tokens: every F16 run is scored on exactly these (decode forced below)
    f32 = open_model(path, window=WINDOW, sinks=sinks, n_ubatch=64)
    tokens, f32_logits = greedy_run(f32, prompt, N_DECODE)
    del f32
    want = reference_logits(ref, tokens, window=WINDOW, sinks=sinks)

    worst = 0.0
    for n_ubatch in UBATCHES:
        got = {}
        for mpath in ("fused", "composed"):
            with memory_path(mpath):
                llm = open_model(path, window=WINDOW, sinks=sinks, n_ubatch=n_ubatch, ahn_memory_type="f16")
                assert llm.ahn_memory_type == "f16"
                llm.eval(tokens[: len(prompt)])          # prefill, then decode one token at a time
                for t in tokens[len(prompt):]:
                    llm.eval([t])
                got[mpath] = np.array(llm.scores[: llm.n_tokens], copy=True)
                del llm
            what = f"{family}/{variant} ubatch={n_ubatch} {mpath}"
            rel = _rel(got[mpath], want)
            agree = float((got[mpath].argmax(-1) == want.argmax(-1)).mean())
            worst = max(worst, rel)
            print(f"{what} F16 memory: max|d logit|/max|logit| = {rel:.2e}, argmax agreement {100 * agree:.2f}%")
            assert rel <= F16_MEMORY_REL_BOUND, f"{what}: F16 memory error {rel:.2e} over the bound {F16_MEMORY_REL_BOUND}"
            assert agree >= F16_MEMORY_ARGMAX_MIN, f"{what}: argmax agreement {agree:.4f} < {F16_MEMORY_ARGMAX_MIN}"
        # both paths round the same F32 states to F16 at the same points: they stay close
        assert _rel(got["fused"], got["composed"]) <= 2e-3, f"{family}/{variant} ubatch={n_ubatch}: fused vs composed"
    record_property("f16_memory_rel_err", worst)

    # the F16 store is in effect (not the F32 one under another name), and it is the only difference:
    # the F32 memory is exact
    assert _rel(f32_logits, want) <= 1e-3
    assert worst > 2 * _rel(f32_logits, want)


def test_f16_memory_halves_the_state_and_gate_bytes(fixtures_root, gguf_dir):
    from ahn_gguf.evaluate import matched_window

    path = convert_fixture(fixtures_root, gguf_dir, "qwen2", "gdn")
    prompt = prompt_tokens(8 * WINDOW, seed=3)
    mem = {}
    for mt in ("f32", "f16"):
        llm = open_model(path, sinks=4, n_ubatch=16, logits_all=False, f32_cache=False, ahn_memory_type=mt)
        llm.eval(prompt)
        mem[mt] = llm.ahn_memory()
        del llm
    a, b = mem["f32"], mem["f16"]
    assert b.state_bytes_per_seq * 2 == a.state_bytes_per_seq and b.state_bytes * 2 == a.state_bytes
    assert b.gate_bytes_per_cell * 2 == a.gate_bytes_per_cell and b.gate_bytes * 2 == a.gate_bytes
    assert (b.window_bytes, b.sink_bytes, b.kv_bytes_per_cell) == (a.window_bytes, a.sink_bytes, a.kv_bytes_per_cell)
    w32 = matched_window(WINDOW, 4, a.kv_bytes_per_cell, a.gate_bytes_per_cell, a.state_bytes_per_seq)
    w16 = matched_window(WINDOW, 4, b.kv_bytes_per_cell, b.gate_bytes_per_cell, b.state_bytes_per_seq)
    assert WINDOW < w16 < w32
    # the default is the file's, F32
    assert open_model(path, sinks=4, n_ubatch=16, logits_all=False).ahn_memory().state_bytes_per_seq == a.state_bytes_per_seq


@pytest.mark.parametrize("unified", [False, True])
def test_f16_memory_three_sequences_keep_their_own_states(unified, fixtures_root, gguf_dir, reference):
    """Three sequences interleaved in every batch of one context, F16 memory: each within the bound of
    the reference run alone (a state of one sequence read or written as another's is far off)."""
    llama_cpp = patched_llama_cpp()
    from tests.runtime.test_runtime_state import _decode_batch

    path = convert_fixture(fixtures_root, gguf_dir, "llama", "gdn")
    ref = reference("llama", "gdn")
    prompts = [prompt_tokens(n, seed=20 + i) for i, n in enumerate((130, 150, 170))]
    llm = open_model(path, sinks=4, n_ubatch=64, logits_all=False, ahn_memory_type="f16")
    params = llama_cpp.llama_context_default_params()
    params.n_ctx, params.n_batch, params.n_ubatch = 2048, 128, 64
    params.n_seq_max, params.kv_unified = 3, unified
    params.type_k = params.type_v = 0
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    params.n_threads = params.n_threads_batch = 1
    ctx = llama_cpp.llama_init_from_model(llm.model, params)
    assert ctx, "could not create a 3-sequence context"
    try:
        got = [[] for _ in prompts]
        pos = [0, 0, 0]
        while any(pos[s] < len(prompts[s]) for s in range(3)):
            entries, owner = [], []
            for s in range(3):
                for t in prompts[s][pos[s]:pos[s] + 23]:
                    entries.append((t, pos[s], s, True))
                    owner.append(s)
                    pos[s] += 1
            rows = _decode_batch(llama_cpp, ctx, entries, llm.n_vocab())
            for i, s in enumerate(owner):
                got[s].append(rows[i])
    finally:
        llama_cpp.llama_free(ctx)
    for s in range(3):
        want = reference_logits(ref, prompts[s], window=WINDOW, sinks=4)
        rel = _rel(np.stack(got[s]), want)
        assert rel <= F16_MEMORY_REL_BOUND, f"sequence {s}: {rel:.2e}"


def test_f16_memory_session_round_trip_and_type_check(fixtures_root, gguf_dir, tmp_path):
    from ahn_gguf.session import SessionFileError, load_session, save_session

    path = convert_fixture(fixtures_root, gguf_dir, "qwen2", "gdn")
    prompt = prompt_tokens(6 * (4 + WINDOW), seed=9)
    a = open_model(path, sinks=4, n_ubatch=7, ahn_memory_type="f16")
    a.eval(prompt)
    f = tmp_path / "f16.ahnsession"
    save_session(a, f)
    a.eval(prompt[:20])
    expected = np.array(a.scores[len(prompt): a.n_tokens], copy=True)

    b = open_model(path, sinks=4, n_ubatch=7, ahn_memory_type="f16")
    load_session(b, f)
    b.eval(prompt[:20])
    got = np.array(b.scores[len(prompt): b.n_tokens], copy=True)
    # a restore places the live cells anew (the window's K/V in another cell order: attention sums in
    # another order), the F16 states and gates come back byte for byte: float32 summation noise only,
    # as with the F32 memory (measured 2.0e-6 and 1.9e-6 absolute on logits of magnitude ~3)
    assert _rel(got, expected) <= 1e-5 and (got.argmax(-1) == expected.argmax(-1)).all()

    c = open_model(path, sinks=4, n_ubatch=7)   # F32 memory
    with pytest.raises(SessionFileError, match="memory stored as 'f16'"):
        load_session(c, f)


def test_unknown_memory_type_is_a_clear_error(fixtures_root, gguf_dir):
    from ahn_gguf.errors import AHNModelError

    path = convert_fixture(fixtures_root, gguf_dir, "qwen2", "gdn")
    with pytest.raises(AHNModelError, match="ahn_memory_type must be one of f32, f16"):
        open_model(path, sinks=4, ahn_memory_type="q8_0")
    # past the Python check, straight to llama.cpp as a kv override: a load error, not an abort
    with pytest.raises(ValueError):
        open_model(path, sinks=4, kv_overrides={"qwen2ahn.ahn.memory_type": "bf16"})


def test_run_command_takes_the_memory_type(tmp_path):
    import subprocess
    import sys

    from tests.helpers.tiny_model import build_tiny_ahn_gguf

    tiny = build_tiny_ahn_gguf(tmp_path / "tiny.gguf")
    out = {}
    for mt in ("f32", "f16"):
        proc = subprocess.run([sys.executable, "-m", "ahn_gguf.cli", "run", str(tiny), "--raw", "-p", "hello " * 40,
                               "--max-tokens", "4", "--threads", "1", "--memory-type", mt],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert f"{mt.upper()} memory" in proc.stdout
        m = re.search(r"gates (\S+ \S+), AHN state (\S+ \S+)", proc.stdout)
        assert m, proc.stdout[-1000:]
        out[mt] = m.groups()
    assert out["f16"][0] != out["f32"][0] and out["f16"][1] != out["f32"][1], out
    proc = subprocess.run([sys.executable, "-m", "ahn_gguf.cli", "run", str(tiny), "--memory-type", "bf16"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "invalid choice: 'bf16'" in proc.stderr


def test_a_file_that_records_f16_runs_f16_and_a_bad_record_is_named(tmp_path):
    """{arch}.ahn.memory_type in the GGUF itself: the runtime reports and uses it (a raw kv override
    too), and a value other than f32 / f16 is refused by the file check, before llama.cpp reads it."""
    from ahn_gguf import constants as C
    from ahn_gguf.errors import AHNModelError
    from ahn_gguf.gguf_io.contents import KV, VT, read_gguf, write_gguf
    from tests.helpers.tiny_model import build_tiny_ahn_gguf

    plain = build_tiny_ahn_gguf(tmp_path / "plain.gguf")
    c = read_gguf(plain)
    arch = c.kv["general.architecture"].value
    key = C.KEY_MEMORY_TYPE.format(arch=arch)
    c.kv[key] = KV(VT.STRING, "f16")
    f16 = write_gguf(c, tmp_path / "f16.gguf", progress=False)

    def opened(path, **kw):
        return open_model(path, window=None, sinks=None, n_ubatch=16, logits_all=False, f32_cache=False, **kw)

    a, b = opened(plain), opened(f16)
    assert (a.ahn_memory_type, b.ahn_memory_type) == ("f32", "f16")
    assert b.ahn_memory().state_bytes_per_seq * 2 == a.ahn_memory().state_bytes_per_seq
    assert opened(f16, ahn_memory_type="f32").ahn_memory().state_bytes_per_seq == a.ahn_memory().state_bytes_per_seq
    raw = opened(plain, kv_overrides={key: "f16"})
    assert raw.ahn_memory_type == "f16" and raw.ahn_memory().state_bytes_per_seq == b.ahn_memory().state_bytes_per_seq

    c.kv[key] = KV(VT.STRING, "q4_0")
    bad = write_gguf(c, tmp_path / "bad.gguf", progress=False)
    with pytest.raises(AHNModelError, match="memory_type is 'q4_0', expected one of f32, f16"):
        opened(bad)
