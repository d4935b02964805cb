"""Every refusal of the converter: a ConversionError naming the problem, and no output file.

Checks run before anything is written, so most of these cost a config read; bases for `attach`
are tiny synthetic GGUF files.
"""

from __future__ import annotations

import json
import shutil
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ahn_gguf.cli import main as cli_main
from ahn_gguf.constants import ARCH_SIDECAR, DN, GDN, HF_AHN_IMPLEMENTATION, HF_USE_Q_PROJ, KEY_WINDOW, MAMBA2
from ahn_gguf.convert import ConversionError, pipeline
from ahn_gguf.fixtures import ahn_folder, base_folder
from ahn_gguf.gguf_io.contents import KV, VT, gguf, read_gguf, write_gguf

QT = gguf.GGMLQuantizationType


def leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def out(tmp_path):
    """The output path; after the test, neither it nor any temporary file may exist."""
    path = tmp_path / "out" / "model.gguf"
    path.parent.mkdir()
    yield path
    assert not path.exists(), "a refused conversion left an output file"
    assert leftovers(path.parent) == [], "a refused conversion left temporary files"


def copy_ahn(fixtures_root, tmp_path, family="qwen2", variant=GDN, config=None, tensors=None):
    """A copy of an AHN fixture folder, with config keys replaced and tensors edited."""
    src, dst = fixtures_root / ahn_folder(family, variant), tmp_path / f"edited-{family}-{variant}"
    shutil.copytree(src, dst)
    if config:
        cfg = json.loads((dst / "config.json").read_text())
        cfg.update(config)
        (dst / "config.json").write_text(json.dumps(cfg))
    if tensors:
        t = load_file(dst / "model.safetensors")
        tensors(t)
        save_file(t, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def refused(match, fn, *args, **kw):
    with pytest.raises(ConversionError, match=match) as info:
        fn(*args, **kw)
    return str(info.value)


# --- checkpoints -----------------------------------------------------------------------------------

def test_base_and_ahn_of_different_models(fixtures_root, out):
    refused("made for another base", pipeline.convert, str(fixtures_root / base_folder("qwen2")),
            str(fixtures_root / ahn_folder("llama", GDN)), out)


def test_ahn_config_with_other_hidden_size(fixtures_root, tmp_path, out):
    ahn = copy_ahn(fixtures_root, tmp_path, config={"hidden_size": 512})
    msg = refused("another base", pipeline.convert, str(fixtures_root / base_folder("qwen2")), str(ahn), out)
    assert "hidden_size" in msg and "512" in msg


@pytest.mark.parametrize("name,shape", [("b_proj.weight", (4, 128)), ("o_proj.weight", (4, 64, 32)),
                                        ("o_norm.weight", (32,))])
def test_ahn_tensor_of_wrong_shape(fixtures_root, tmp_path, out, name, shape):
    key = f"model.layers.1.ahn.fn.{name}"
    ahn = copy_ahn(fixtures_root, tmp_path, tensors=lambda t: t.__setitem__(key, torch.zeros(shape, dtype=torch.bfloat16)))
    msg = refused("expected shape", pipeline.convert, str(fixtures_root / base_folder("qwen2")), str(ahn), out)
    assert key in msg


def test_unknown_variant(fixtures_root, tmp_path, out):
    ahn = copy_ahn(fixtures_root, tmp_path, config={HF_AHN_IMPLEMENTATION: "GatedLinearAttention"})
    refused("unknown AHN variant 'GatedLinearAttention'", pipeline.convert_ahn_only, str(ahn), out)


def test_missing_ahn_tensor(fixtures_root, tmp_path, out):
    ahn = copy_ahn(fixtures_root, tmp_path, variant=MAMBA2,
                   tensors=lambda t: t.pop("model.layers.0.ahn.fn.dt_proj.bias"))
    msg = refused("missing AHN tensors", pipeline.convert, str(fixtures_root / base_folder("qwen2")), str(ahn), out)
    assert "model.layers.0.ahn.fn.dt_proj.bias" in msg


def test_extra_ahn_tensor(fixtures_root, tmp_path, out):
    ahn = copy_ahn(fixtures_root, tmp_path, variant=DN,
                   tensors=lambda t: t.__setitem__("model.layers.0.ahn.fn.a_proj.weight",
                                                   torch.zeros(4, 256, dtype=torch.bfloat16)))
    msg = refused("unexpected AHN tensors", pipeline.convert_ahn_only, str(ahn), out)
    assert "a_proj" in msg


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_ahn_weights(fixtures_root, tmp_path, out, bad):
    def poison(t):
        t["model.layers.1.ahn.fn.g_proj.weight"][2, 7] = bad

    ahn = copy_ahn(fixtures_root, tmp_path, tensors=poison)
    msg = refused("NaN/Inf", pipeline.convert, str(fixtures_root / base_folder("qwen2")), str(ahn), out)
    assert "model.layers.1.ahn.fn.g_proj.weight" in msg


def test_ahn_weights_beyond_float16(fixtures_root, tmp_path, out):
    """F16 output cannot hold 1e5: refused up front, with the way out (f32) named."""
    def scale(t):
        t["model.layers.0.ahn.fn.a_proj.weight"][0, 0] = 1e5

    ahn = copy_ahn(fixtures_root, tmp_path, tensors=scale)
    msg = refused("beyond float16's range", pipeline.convert, str(fixtures_root / base_folder("qwen2")), str(ahn),
                  out, outtype="q8_0")
    assert "blk.0.ahn_a.weight" in msg and "--outtype f32" in msg


def test_unsupported_base_architecture(fixtures_root, tmp_path, out):
    base = tmp_path / "mistral"
    base.mkdir()
    cfg = json.loads((fixtures_root / base_folder("llama") / "config.json").read_text())
    cfg.update(architectures=["MistralForCausalLM"], model_type="mistral")
    (base / "config.json").write_text(json.dumps(cfg))
    msg = refused("unsupported base architecture", pipeline.convert, str(base),
                  str(fixtures_root / ahn_folder("llama", GDN)), out)
    assert "MistralForCausalLM" in msg and "Qwen2ForCausalLM" in msg


def test_unsupported_ahn_options(fixtures_root, tmp_path, out):
    ahn = copy_ahn(fixtures_root, tmp_path, config={HF_USE_Q_PROJ: True})
    refused(HF_USE_Q_PROJ, pipeline.convert_ahn_only, str(ahn), out)


def test_plain_base_alone_is_not_a_merged_folder(fixtures_root, out):
    refused("not an AHN checkpoint", pipeline.convert, str(fixtures_root / base_folder("llama")), None, out)


def test_swapped_base_and_ahn(fixtures_root, out):
    msg = refused("not an AHN checkpoint", pipeline.convert, str(fixtures_root / ahn_folder("llama", GDN)),
                  str(fixtures_root / base_folder("llama")), out)
    assert "BASE AHN" in msg


def test_ahn_folder_with_base_weights_next_to_a_base(fixtures_root, out):
    refused("holds non-AHN tensors", pipeline.convert, str(fixtures_root / base_folder("llama")),
            str(fixtures_root / "llama-merged-gdn"), out)


# --- options ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("window,sinks,match", [
    (0, None, "window W must be an integer >= 1"), (-5, None, "window W must be"),
    (None, -1, "sinks S must be an integer >= 0"), ((1 << 24) + 1, None, "absurd"),
    (None, 1 << 30, "absurd")])
def test_window_and_sinks(fixtures_root, out, window, sinks, match):
    refused(match, pipeline.convert_ahn_only, str(fixtures_root / ahn_folder("qwen2", DN)), out,
            window=window, sinks=sinks)


def test_window_and_sinks_on_the_command_line(fixtures_root, out, capsys):
    rc = cli_main(["convert", "--ahn-only", str(fixtures_root / ahn_folder("qwen2", DN)), "-o", str(out),
                   "--window", "0"])
    assert rc == 1 and "window W must be an integer >= 1" in capsys.readouterr().err


def test_output_exists_needs_force(fixtures_root, tmp_path):
    out = tmp_path / "ahn.gguf"
    out.write_bytes(b"keep me")
    ahn = str(fixtures_root / ahn_folder("llama", DN))
    refused("already exists; pass --force", pipeline.convert_ahn_only, ahn, out)
    assert out.read_bytes() == b"keep me"
    pipeline.convert_ahn_only(ahn, out, force=True, progress=False)
    assert read_gguf(out).arch == ARCH_SIDECAR
    assert leftovers(tmp_path) == []


def test_output_is_a_folder(fixtures_root, tmp_path):
    refused("is a folder", pipeline.convert_ahn_only, str(fixtures_root / ahn_folder("llama", DN)), tmp_path)


def test_unknown_outtype(fixtures_root, out):
    refused("unknown output type 'q3_x'", pipeline.convert, str(fixtures_root / base_folder("llama")),
            str(fixtures_root / ahn_folder("llama", DN)), out, outtype="q3_x")


@pytest.mark.parametrize("module", [None, "stock"])
def test_kquant_without_patched_build(fixtures_root, out, monkeypatch, module):
    """No llama_cpp, or a stock one: the message says to run `ahn-gguf build`."""
    if module is None:
        monkeypatch.setitem(sys.modules, "llama_cpp", None)  # import llama_cpp -> ImportError
    else:
        import types

        monkeypatch.setitem(sys.modules, "llama_cpp", types.ModuleType("llama_cpp"))
    msg = refused("ahn-gguf build", pipeline.convert, str(fixtures_root / base_folder("llama")),
                  str(fixtures_root / ahn_folder("llama", DN)), out, outtype="q4_k_m")
    assert "patched" in msg or "stock build" in msg


def test_ahn_only_argument_errors(fixtures_root, out, capsys):
    ahn = str(fixtures_root / ahn_folder("llama", DN))
    assert cli_main(["convert", "--ahn-only", ahn, ahn, "-o", str(out)]) == 1
    assert "--ahn-only takes one checkpoint" in capsys.readouterr().err
    assert cli_main(["convert", "--ahn-only", ahn, "-o", str(out), "--outtype", "q8_0"]) == 1
    assert "--outtype does not apply to --ahn-only" in capsys.readouterr().err


def test_missing_folder_and_gguf_given_to_convert(tmp_path, out):
    refused("no such folder", pipeline.convert, str(tmp_path / "nowhere"), None, out)
    gguf_file = tmp_path / "base.gguf"
    gguf_file.write_bytes(b"GGUF")
    refused("ahn-gguf attach", pipeline.convert, str(gguf_file), None, out)


# --- attach ----------------------------------------------------------------------------------------

def fake_base(path, arch="qwen2", n_layer=2, n_embd=256, n_head=4, n_head_kv=2, file_type=7, split_count=None):
    """A tiny GGUF shaped like the qwen2 fixture (metadata the merge checks, a few tensors, one Q8_0)."""
    rng = np.random.default_rng(0)
    w = gguf.GGUFWriter(path, arch)
    w.add_block_count(n_layer)
    w.add_embedding_length(n_embd)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_file_type(file_type)
    if split_count is not None:
        w.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, split_count)
    w.add_tensor("token_embd.weight", rng.standard_normal((16, n_embd)).astype(np.float16))
    q8 = gguf.quants.quantize(rng.standard_normal((8, n_embd)).astype(np.float32), QT.Q8_0)
    w.add_tensor("blk.0.attn_q.weight", q8, raw_dtype=QT.Q8_0)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@pytest.fixture(scope="module")
def sidecars(fixtures_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sidecars")
    out = {}
    for family in ("qwen2", "llama"):
        out[family] = folder / f"{family}.gguf"
        pipeline.convert_ahn_only(str(fixtures_root / ahn_folder(family, GDN)), out[family], progress=False)
    return out


def test_attach_to_fake_base_works(tmp_path, sidecars):
    """The positive control for the refusals below: same base, sidecar attaches, bytes kept."""
    base = fake_base(tmp_path / "base.gguf")
    out = tmp_path / "merged.gguf"
    pipeline.attach(base, str(sidecars["qwen2"]), out, window=100, progress=False)
    c, b = read_gguf(out), read_gguf(base)
    assert c.arch == "qwen2ahn" and c.get(KEY_WINDOW.format(arch="qwen2ahn")) == 100
    for t in b.tensors:
        assert np.array_equal(c.tensor(t.name).data, t.data)
    assert {t.ggml_type for t in c.tensors if ".ahn_" in t.name and len(t.shape) > 1} == {QT.F16}


def test_memory_type_is_recorded_and_carried(tmp_path, fixtures_root, sidecars):
    """--memory-type f16: recorded in the sidecar, carried by attach (or set there), checked."""
    from ahn_gguf.constants import KEY_MEMORY_TYPE

    base = fake_base(tmp_path / "base.gguf")
    side = tmp_path / "f16-sidecar.gguf"
    pipeline.convert_ahn_only(str(fixtures_root / ahn_folder("qwen2", GDN)), side, memory_type="f16", progress=False)
    assert read_gguf(side).get(KEY_MEMORY_TYPE.format(arch="ahn")) == "f16"
    pipeline.attach(base, str(side), tmp_path / "a.gguf", progress=False)
    assert read_gguf(tmp_path / "a.gguf").get(KEY_MEMORY_TYPE.format(arch="qwen2ahn")) == "f16"
    pipeline.attach(base, str(side), tmp_path / "b.gguf", memory_type="f32", progress=False)
    assert read_gguf(tmp_path / "b.gguf").get(KEY_MEMORY_TYPE.format(arch="qwen2ahn")) == "f32"
    pipeline.attach(base, str(sidecars["qwen2"]), tmp_path / "c.gguf", progress=False)   # not recorded: absent
    assert read_gguf(tmp_path / "c.gguf").get(KEY_MEMORY_TYPE.format(arch="qwen2ahn")) is None
    refused("memory type 'q8_0'", pipeline.attach, base, str(side), tmp_path / "d.gguf", memory_type="q8_0")


@pytest.mark.parametrize("arch,match", [("gemma", "unsupported base architecture 'gemma'"),
                                        ("qwen2ahn", "already has an AHN")])
def test_attach_to_unsupported_arch(tmp_path, sidecars, out, arch, match):
    base = fake_base(tmp_path / "base.gguf", arch=arch)
    refused(match, pipeline.attach, base, str(sidecars["qwen2"]), out)


@pytest.mark.parametrize("change,what", [({"n_layer": 3}, "layers 2 vs 3"), ({"n_embd": 512}, "hidden size"),
                                         ({"n_head": 8}, "attention heads"), ({"n_head_kv": 1}, "KV heads")])
def test_attach_to_other_base(tmp_path, sidecars, out, change, what):
    base = fake_base(tmp_path / "base.gguf", **change)
    msg = refused("does not fit this base", pipeline.attach, base, str(sidecars["qwen2"]), out)
    assert what in msg


def test_attach_llama_ahn_to_qwen2_base(tmp_path, sidecars, out):
    base = fake_base(tmp_path / "base.gguf")
    msg = refused("does not fit this base", pipeline.attach, base, str(sidecars["llama"]), out)
    assert "architecture llama vs qwen2" in msg


def edited_sidecar(src, dst, edit):
    c = read_gguf(src)
    edit(c)
    write_gguf(c, dst, progress=False)
    return dst


@pytest.mark.parametrize("edit,match", [
    (lambda c: c.tensors.pop(3), "missing AHN tensors"),
    (lambda c: c.tensors.append(c.tensors[0].__class__("blk.0.ahn_x.weight", QT.F32, (4,), 16,
                                                        np.zeros(4, np.float32))), "unexpected AHN tensors"),
    (lambda c: c.kv.__setitem__(f"{ARCH_SIDECAR}.ahn.variant", KV(VT.STRING, "Mamba3")), "unknown AHN variant"),
    (lambda c: c.kv.pop(f"{ARCH_SIDECAR}.ahn.window"), "missing metadata key"),
    (lambda c: c.tensors.__setitem__(0, c.tensors[0].__class__(
        c.tensors[0].name, QT.F32, c.tensors[0].shape, c.tensors[0].nbytes,
        np.full(c.tensors[0].shape, np.nan, np.float32))), "NaN/Inf"),
])
def test_attach_bad_sidecar(tmp_path, sidecars, out, edit, match):
    bad = edited_sidecar(sidecars["qwen2"], tmp_path / "bad.gguf", edit)
    refused(match, pipeline.attach, fake_base(tmp_path / "base.gguf"), str(bad), out)


def test_attach_needs_a_sidecar(tmp_path, out):
    base = fake_base(tmp_path / "base.gguf")
    refused("not an AHN sidecar", pipeline.attach, base, str(base), out)


def test_attach_window_checked(tmp_path, sidecars, out, capsys):
    base = fake_base(tmp_path / "base.gguf")
    rc = cli_main(["attach", str(base), str(sidecars["qwen2"]), "-o", str(out), "--sinks", "-3"])
    assert rc == 1 and "sinks S must be an integer >= 0" in capsys.readouterr().err


def test_attach_to_split_gguf(tmp_path, sidecars, out):
    base = fake_base(tmp_path / "base-00001-of-00002.gguf", split_count=2)
    refused("split GGUF", pipeline.attach, base, str(sidecars["qwen2"]), out)


def test_attach_missing_base(tmp_path, sidecars, out):
    refused("no such file", pipeline.attach, tmp_path / "missing.gguf", str(sidecars["qwen2"]), out)
