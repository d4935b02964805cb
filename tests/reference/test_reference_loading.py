"""load_reference: released layouts load; every bad checkpoint fails with a message naming the problem."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from ahn_gguf.constants import (
    DN,
    GDN,
    HF_AHN_IMPLEMENTATION,
    HF_AHN_PREFIX,
    HF_FA_LAYER_IDS,
    HF_NUM_ATTN_SINKS,
    HF_SLIDING_WINDOW,
    HF_USE_AHN_ROUTER,
    HF_USE_Q_PROJ,
    MAMBA2,
    VARIANTS,
)
from ahn_gguf.fixtures import FIXTURE_SINKS, FIXTURE_WINDOW, LLAMA_MERGED, ahn_folder, base_folder
from ahn_gguf.reference import AHNConfigError, load_reference


def copy_folder(src: Path, dst: Path) -> Path:
    """Copy config files, link the (large) weights: tests then rewrite what they break."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.suffix == ".safetensors":
            (dst / f.name).symlink_to(f)
        else:
            shutil.copy(f, dst / f.name)
    return dst


def edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            cfg.pop(key, None)
        else:
            cfg[key] = value
    path.write_text(json.dumps(cfg))


def edit_tensors(folder: Path, edit) -> None:
    path = folder / "model.safetensors"
    tensors = dict(load_file(path))
    edit(tensors)
    path.unlink()  # may be a link to the shared fixture
    save_file(tensors, path)


@pytest.fixture
def qwen2(fixtures_root):
    return fixtures_root / base_folder("qwen2")


@pytest.fixture
def gdn_copy(fixtures_root, tmp_path):
    return copy_folder(fixtures_root / ahn_folder("qwen2", GDN), tmp_path / "ahn")


def ahn_key(layer: int, name: str) -> str:
    return HF_AHN_PREFIX.format(bid=layer) + name


# --- what loads -------------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("family", ["qwen2", "llama"])
def test_released_layout_loads_with_config_defaults(fixtures_root, family, variant):
    model = load_reference(fixtures_root / base_folder(family), fixtures_root / ahn_folder(family, variant))
    cfg = model.config
    assert cfg.ahn_variant == variant and cfg.window == FIXTURE_WINDOW
    assert cfg.sinks == (FIXTURE_SINKS[family, variant] or 0)  # num_attn_sinks absent -> 0
    assert cfg.fa_layer_ids == () and all(layer.ahn is not None for layer in model.model.layers)
    assert cfg.qkv_bias == (family == "qwen2") and cfg.tie_word_embeddings == (family == "qwen2")
    # bf16 checkpoint values arrive exactly, in float32
    stored = load_file(fixtures_root / ahn_folder(family, variant) / "model.safetensors")
    key = ahn_key(0, "o_proj.weight")
    assert torch.equal(model.state_dict()[key], stored[key].float())


def test_window_and_sinks_arguments_override_config(fixtures_root):
    model = load_reference(fixtures_root / base_folder("qwen2"), fixtures_root / ahn_folder("qwen2", GDN),
                           window=100, sinks=7)
    assert (model.config.window, model.config.sinks) == (100, 7)


def test_merged_sharded_folder_with_fa_layer(fixtures_root):
    model = load_reference(fixtures_root / LLAMA_MERGED)
    assert model.config.ahn_variant == GDN and model.config.fa_layer_ids == (1,)
    assert model.config.sinks == 2 and model.config.window == FIXTURE_WINDOW
    assert [layer.ahn is None for layer in model.model.layers] == [False, True, False]


def test_unused_gdn_D_is_accepted_and_ignored(fixtures_root, tmp_path):
    base, ahn = fixtures_root / base_folder("llama"), fixtures_root / ahn_folder("llama", GDN)
    ids = torch.randint(0, 1000, (1, 60), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = load_reference(base, ahn, window=8, sinks=2)(ids)
    changed = copy_folder(ahn, tmp_path / "changed")
    edit_tensors(changed, lambda t: t.update({k: v * 0 - 5 for k, v in t.items() if k.endswith(".D")}))
    absent = copy_folder(ahn, tmp_path / "absent")
    edit_tensors(absent, lambda t: [t.pop(k) for k in list(t) if k.endswith(".D")])
    for folder in (changed, absent):
        with torch.no_grad():
            assert torch.equal(load_reference(base, folder, window=8, sinks=2)(ids), want)


# --- what is refused, and what it says ----------------------------------------------------------

def test_error_mismatched_shape_names_tensor_and_shapes(gdn_copy, qwen2):
    key = ahn_key(0, "o_proj.weight")
    edit_tensors(gdn_copy, lambda t: t.update({key: t[key][:, :, :32].contiguous()}))
    with pytest.raises(AHNConfigError, match=r"AHN tensor model\.layers\.0\.ahn\.fn\.o_proj\.weight: "
                                             r"expected shape \(4, 64, 64\), got \(4, 64, 32\)"):
        load_reference(qwen2, gdn_copy)


def test_error_mismatched_base_shape(tmp_path, fixtures_root, qwen2):
    # an AHN made for a base with another hidden size: its config says so
    ahn = copy_folder(fixtures_root / ahn_folder("llama", GDN), tmp_path / "llama-ahn")
    with pytest.raises(AHNConfigError, match=r"made for another base: hidden_size is 192 .* but 256"):
        load_reference(qwen2, ahn)


def test_error_unknown_variant(gdn_copy, qwen2):
    edit_config(gdn_copy, **{HF_AHN_IMPLEMENTATION: "RetNet"})
    with pytest.raises(AHNConfigError, match=r"unknown AHN variant 'RetNet' \(config key _ahn_implementation\)"):
        load_reference(qwen2, gdn_copy)


def test_error_not_an_ahn_checkpoint(gdn_copy, qwen2):
    edit_config(gdn_copy, **{HF_AHN_IMPLEMENTATION: None})
    with pytest.raises(AHNConfigError, match="has no '_ahn_implementation' key"):
        load_reference(qwen2, gdn_copy)


def test_error_missing_tensor_is_named(gdn_copy, qwen2):
    key = ahn_key(1, "a_proj.weight")
    edit_tensors(gdn_copy, lambda t: t.pop(key))
    with pytest.raises(AHNConfigError, match=rf"missing AHN tensors for variant GatedDeltaNet: {key}"):
        load_reference(qwen2, gdn_copy)


def test_error_missing_base_tensor_is_named(tmp_path, fixtures_root):
    base = copy_folder(fixtures_root / base_folder("llama"), tmp_path / "base")
    edit_tensors(base, lambda t: t.pop("model.layers.2.mlp.up_proj.weight"))
    with pytest.raises(AHNConfigError, match=r"missing base tensors: model\.layers\.2\.mlp\.up_proj\.weight"):
        load_reference(base)


def test_error_unexpected_extra_ahn_tensor(gdn_copy, qwen2):
    key = ahn_key(0, "q_proj.weight")
    edit_tensors(gdn_copy, lambda t: t.update({key: torch.zeros(256, 256, dtype=torch.bfloat16)}))
    with pytest.raises(AHNConfigError, match=rf"unexpected AHN tensors for variant GatedDeltaNet .*: {key}"):
        load_reference(qwen2, gdn_copy)


def test_error_tensors_of_another_variant(tmp_path, fixtures_root, qwen2):
    # a DN config over GDN tensors: the GDN-only tensors are unexpected
    ahn = copy_folder(fixtures_root / ahn_folder("qwen2", GDN), tmp_path / "ahn")
    edit_config(ahn, **{HF_AHN_IMPLEMENTATION: DN})
    with pytest.raises(AHNConfigError, match=r"unexpected AHN tensors for variant DeltaNet .*A_log"):
        load_reference(qwen2, ahn)


def test_error_ahn_tensors_in_a_full_attention_layer(gdn_copy, qwen2):
    edit_config(gdn_copy, **{HF_FA_LAYER_IDS: "1"})
    with pytest.raises(AHNConfigError, match=r"unexpected AHN tensors .*fa_layer_ids \[1\]: model\.layers\.1\.ahn"):
        load_reference(qwen2, gdn_copy)


@pytest.mark.parametrize("key", [HF_USE_AHN_ROUTER, HF_USE_Q_PROJ])
def test_error_unsupported_flags(gdn_copy, qwen2, key):
    edit_config(gdn_copy, **{key: True})
    with pytest.raises(AHNConfigError, match=f"sets {key}: True"):
        load_reference(qwen2, gdn_copy)


@pytest.mark.parametrize("window", [0, -4])
def test_error_window_not_positive(fixtures_root, gdn_copy, qwen2, window):
    with pytest.raises(AHNConfigError, match=rf"window W must be a positive integer .*got {window}"):
        load_reference(qwen2, fixtures_root / ahn_folder("qwen2", GDN), window=window)
    edit_config(gdn_copy, **{HF_SLIDING_WINDOW: window})
    with pytest.raises(AHNConfigError, match=rf"window W must be a positive integer .*got {window}"):
        load_reference(qwen2, gdn_copy)


def test_error_negative_sinks(fixtures_root, gdn_copy, qwen2):
    with pytest.raises(AHNConfigError, match=r"sinks S must be an integer >= 0; got -1"):
        load_reference(qwen2, fixtures_root / ahn_folder("qwen2", MAMBA2), sinks=-1)
    edit_config(gdn_copy, **{HF_NUM_ATTN_SINKS: -2})
    with pytest.raises(AHNConfigError, match=r"sinks S must be an integer >= 0; got -2"):
        load_reference(qwen2, gdn_copy)


def test_error_no_window_anywhere(gdn_copy, qwen2):
    edit_config(gdn_copy, **{HF_SLIDING_WINDOW: None})
    with pytest.raises(AHNConfigError, match="no window W for the AHN"):
        load_reference(qwen2, gdn_copy)


@pytest.mark.parametrize("model_type,arch", [("mistral", "MistralForCausalLM"), ("qwen3", "Qwen3ForCausalLM")])
def test_error_unsupported_base_architecture(tmp_path, fixtures_root, model_type, arch):
    base = copy_folder(fixtures_root / base_folder("llama"), tmp_path / "base")
    edit_config(base, model_type=model_type, architectures=[arch])
    with pytest.raises(AHNConfigError, match=rf"unsupported base architecture: model_type '{model_type}' "
                                             rf"\(architectures: {arch}\)"):
        load_reference(base)


def test_error_rope_scaling(tmp_path, fixtures_root):
    base = copy_folder(fixtures_root / base_folder("llama"), tmp_path / "base")
    edit_config(base, rope_scaling={"rope_type": "llama3", "factor": 8.0})
    with pytest.raises(AHNConfigError, match="unsupported rope scaling"):
        load_reference(base)


def test_error_bad_fa_layer_ids(gdn_copy, qwen2):
    edit_config(gdn_copy, **{HF_FA_LAYER_IDS: "0,7"})
    with pytest.raises(AHNConfigError, match=r"fa_layer_ids \[0, 7\]: layer ids \[7\] are outside 0\.\.1"):
        load_reference(qwen2, gdn_copy)
    edit_config(gdn_copy, **{HF_FA_LAYER_IDS: "one"})
    with pytest.raises(AHNConfigError, match="not a comma-separated list of layer ids"):
        load_reference(qwen2, gdn_copy)


def test_error_ahn_folder_with_base_tensors(fixtures_root, qwen2):
    with pytest.raises(AHNConfigError, match="holds non-AHN tensors"):
        load_reference(fixtures_root / base_folder("llama"), fixtures_root / LLAMA_MERGED)


def test_error_ahn_tensors_without_ahn_config(tmp_path, fixtures_root):
    merged = copy_folder(fixtures_root / LLAMA_MERGED, tmp_path / "merged")
    edit_config(merged, **{HF_AHN_IMPLEMENTATION: None})
    with pytest.raises(AHNConfigError, match="holds AHN tensors but its config has no '_ahn_implementation'"):
        load_reference(merged)


def test_error_missing_files(tmp_path, qwen2):
    with pytest.raises(AHNConfigError, match="no config.json in"):
        load_reference(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    shutil.copy(qwen2 / "config.json", empty / "config.json")
    with pytest.raises(AHNConfigError, match="no model.safetensors or model.safetensors.index.json in"):
        load_reference(empty)


def test_errors_are_value_errors():
    assert issubclass(AHNConfigError, ValueError)
