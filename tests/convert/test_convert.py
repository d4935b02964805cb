"""The converter end to end on the fixtures: AHN tensors, base tensors, metadata, tokenizer, quantization.

Every conversion here goes through the command line (`ahn_gguf.cli.main`, in process). The
reference for base tensors and metadata is the pinned llama.cpp's `convert_hf_to_gguf.py`
itself, run as a separate process on the same folders (started once, in the background).
GGUF files are read back with `gguf_io.read_gguf`, which tests/convert/test_convert_io.py checks
against gguf-py's GGUFReader (too slow to read a 150k-token vocabulary ten times here).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from ahn_gguf import __version__
from ahn_gguf.cli import main as cli_main
from ahn_gguf.constants import (
    AHN_NORM_EPS,
    AHN_TENSORS,
    AHN_UNUSED_TENSORS,
    ARCH_FOR_BASE,
    ARCH_SIDECAR,
    DN,
    GDN,
    HF_AHN_PREFIX,
    KEY_BASE_ARCH,
    KEY_BASE_HEAD_DIM,
    KEY_BASE_N_EMBD,
    KEY_BASE_N_HEAD,
    KEY_BASE_N_HEAD_KV,
    KEY_BASE_N_LAYER,
    KEY_CONVERTER,
    KEY_LAYERS,
    KEY_NORM_EPS,
    KEY_PARAM_COUNT,
    KEY_SINKS,
    KEY_SOURCE_AHN,
    KEY_SOURCE_BASE,
    KEY_TRAINING,
    KEY_VARIANT,
    KEY_WINDOW,
    MAMBA2,
    PUBLISHED_AHN_PARAMS,
    PUBLISHED_BASE_SHAPES,
    VARIANTS,
    ahn_param_count,
)
from ahn_gguf.convert.stock import script_path
from ahn_gguf.fixtures import (
    BASE_CONFIGS,
    FAMILIES,
    FIXTURE_SINKS,
    FIXTURE_WINDOW,
    LLAMA_MERGED,
    MERGED_FA_LAYER_IDS,
    ahn_folder,
    base_folder,
)
from ahn_gguf.gguf_io.contents import VT, gguf, read_gguf

QT = gguf.GGMLQuantizationType

# (family, variant, outtype) of the direct conversions: every variant of both families in f32
# (AHN tensors compared exactly), plus the other types the stock converter writes
CONVERSIONS = [(f, v, "f32") for f in FAMILIES for v in VARIANTS] + [
    ("qwen2", GDN, "f16"), ("llama", DN, "bf16"), ("llama", MAMBA2, "q8_0")]
# stock llama.cpp conversions of the bases, the reference for every base tensor and key
STOCK = sorted({(f, t) for f, _, t in CONVERSIONS})

MULTILINGUAL = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "长上下文记忆：人工海马网络把滑动窗口之外的信息压缩成固定大小的状态。",
    "emoji 🤖🧠✨ and flags 🇫🇷🇯🇵, zero-width joiner 👩‍💻",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n\tprint({'a': [1, 2, 3]})",
    "Accents: café, naïve, façade, Ångström, São Paulo, Dvořák, İstanbul.",
    "Mixed 日本語 テキスト, 한국어, русский текст, العربية, 12345.6789   spaces\n\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
]


# --- session fixtures: the conversions, done once ----------------------------------------------

@pytest.fixture(scope="session")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("convert")


@pytest.fixture(scope="session")
def merged_stripped(fixtures_root, out_dir):
    """The merged fixture's base alone (AHN tensors removed), for the stock converter."""
    # same folder name: llama.cpp derives general.name from it
    src, dst = fixtures_root / LLAMA_MERGED, out_dir / "base-only" / LLAMA_MERGED
    dst.mkdir(parents=True)
    tensors = {}
    for shard in sorted(src.glob("model-*.safetensors")):
        tensors.update({k: v for k, v in load_file(shard).items() if ".ahn." not in k})
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    for f in src.iterdir():
        if f.suffix != ".safetensors" and f.name != "model.safetensors.index.json":
            shutil.copy(f, dst / f.name)
    return dst


class StockRuns:
    """convert_hf_to_gguf.py, run as the stock script (its `__main__`) once per job, all jobs in one
    background process (torch and transformers are imported once), awaited on first use."""

    def __init__(self, jobs: dict):
        self.outs = {key: out for key, (_, _, out) in jobs.items()}
        argvs = [[str(folder), "--outfile", str(out), "--outtype", outtype] for folder, outtype, out in jobs.values()]
        driver = ("import json, os, runpy, sys\n"
                  "script, jobs = sys.argv[1], json.loads(sys.argv[2])\n"
                  "sys.path.insert(0, os.path.dirname(script))  # as `python script.py` sets it\n"
                  "for argv in jobs:\n"
                  "    sys.argv = [script] + argv\n"
                  "    runpy.run_path(script, run_name='__main__')\n")
        script = str(script_path())
        self.proc = subprocess.Popen([sys.executable, "-c", driver, script, json.dumps(argvs)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = None

    def __getitem__(self, key) -> Path:
        if self.log is None:
            self.log = self.proc.communicate()[0]
        assert self.proc.returncode == 0, f"stock convert_hf_to_gguf.py failed:\n{self.log[-3000:]}"
        return self.outs[key]


@pytest.fixture(scope="session")
def stock(fixtures_root, out_dir, merged_stripped):
    jobs = {(f, t): (fixtures_root / base_folder(f), t, out_dir / f"stock-{f}-{t}.gguf") for f, t in STOCK}
    jobs["merged", "f32"] = (merged_stripped, "f32", out_dir / "stock-merged-f32.gguf")
    runs = StockRuns(jobs)
    yield runs
    if runs.proc.poll() is None:
        runs.proc.kill()
        runs.proc.wait()


def convert_cli(*args) -> None:
    rc = cli_main(["convert", *map(str, args), "--no-progress"])
    assert rc == 0, f"ahn-gguf convert {' '.join(map(str, args))} failed with {rc}"


@pytest.fixture(scope="session")
def converted(fixtures_root, out_dir, stock):
    """{(family, variant, outtype): path} of every direct conversion (stock runs in parallel)."""
    out = {}
    for family, variant, outtype in CONVERSIONS:
        path = out_dir / f"{family}-{variant}-{outtype}.gguf"
        convert_cli(fixtures_root / base_folder(family), fixtures_root / ahn_folder(family, variant),
                    "-o", path, "--outtype", outtype)
        out[family, variant, outtype] = path
    return out


_cache = {}


def contents(path):
    if path not in _cache:
        _cache[path] = read_gguf(path)
    return _cache[path]


def hf_ahn(folder: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted(folder.glob("*.safetensors")):
        tensors.update({k: v for k, v in load_file(f).items() if ".ahn." in k})
    return tensors


def kv_values(c) -> dict:
    return {k: (v.type, v.sub_type, v.value) for k, v in c.kv.items()}


def expected_sinks(family, variant) -> int:
    return FIXTURE_SINKS[family, variant] or 0


# --- AHN tensors ------------------------------------------------------------------------------

def assert_ahn_tensors(c, hf: dict, variant: str, layers, outtype: str):
    """Every AHN tensor equals its source: exactly in F32; in F16 exactly the float16 rounding of
    the source (bf16 -> f32 is exact, so that is the only rounding); 1-D tensors F32 always."""
    names = set()
    for bid in layers:
        prefix = HF_AHN_PREFIX.format(bid=bid)
        for t in AHN_TENSORS[variant]:
            entry = c.tensor(t.gguf.format(bid=bid))
            names.add(entry.name)
            src = hf[prefix + t.hf].to(torch.float32).numpy()
            if t.transpose_heads:
                src = src.transpose(0, 2, 1)  # (H, d_in, d_out) -> (H, d_out, d_in): ggml ne (d_in, d_out, H)
            assert entry.shape == src.shape, entry.name
            if src.ndim == 1 or outtype == "f32":
                assert entry.ggml_type == QT.F32, entry.name
                np.testing.assert_array_equal(entry.array(), src, err_msg=entry.name)
            else:
                assert entry.ggml_type == QT.F16, entry.name
                np.testing.assert_array_equal(entry.array(), src.astype(np.float16).astype(np.float32),
                                              err_msg=entry.name)
    got = {t.name for t in c.tensors if ".ahn_" in t.name}
    assert got == names, f"AHN tensors beyond the expected set: {sorted(got - names)}"
    for name in AHN_UNUSED_TENSORS[variant]:
        assert not any(n.endswith(name) for n in got)


@pytest.mark.parametrize("family,variant,outtype", CONVERSIONS)
def test_ahn_tensors_equal_source(fixtures_root, converted, family, variant, outtype):
    c = contents(converted[family, variant, outtype])
    hf = hf_ahn(fixtures_root / ahn_folder(family, variant))
    n_layer = BASE_CONFIGS[family]["num_hidden_layers"]
    assert_ahn_tensors(c, hf, variant, range(n_layer), outtype)
    # the o_proj transpose, spelled out on one head: ggml row r of head h is column r of W[h]
    out = c.tensor("blk.0.ahn_out.weight").array()
    w = hf[HF_AHN_PREFIX.format(bid=0) + "o_proj.weight"].float().numpy()
    np.testing.assert_allclose(out[1, 3, :], w[1, :, 3], rtol=1e-3 if outtype != "f32" else 0)


# --- base tensors and metadata -------------------------------------------------------------------

def assert_base_equals_stock(c, ref):
    """Same base tensors (names, order, types, shapes, bytes) and the stock keys renamed to the AHN arch."""
    base_tensors = [t for t in c.tensors if ".ahn_" not in t.name]
    assert [t.name for t in base_tensors] == [t.name for t in ref.tensors]
    for got, want in zip(base_tensors, ref.tensors):
        assert (got.ggml_type, got.shape) == (want.ggml_type, want.shape), got.name
        assert np.array_equal(np.asarray(got.data), np.asarray(want.data)), f"{got.name}: bytes differ"
    arch, new = ref.arch, ARCH_FOR_BASE[ref.arch]
    got_kv = kv_values(c)
    for key, value in kv_values(ref).items():
        renamed = new + key[len(arch):] if key.startswith(arch + ".") else key
        if key == "general.architecture":
            value = (VT.STRING, None, new)
        assert got_kv.get(renamed) == value, f"{renamed}: {got_kv.get(renamed)!r:.200} != {value!r:.200}"
    return {k: v for k, v in got_kv.items() if k not in {new + k[len(arch):] if k.startswith(arch + ".") else k
                                                         for k in ref.kv}}


@pytest.mark.parametrize("family,variant,outtype", CONVERSIONS)
def test_base_and_metadata(fixtures_root, converted, stock, family, variant, outtype):
    c = contents(converted[family, variant, outtype])
    extra = assert_base_equals_stock(c, contents(stock[family, outtype]))
    arch = ARCH_FOR_BASE[family]
    cfg = BASE_CONFIGS[family]
    H, D, L = cfg["num_attention_heads"], cfg["hidden_size"], cfg["num_hidden_layers"]
    d = cfg.get("head_dim") or D // H
    ahn_src = fixtures_root / ahn_folder(family, variant)
    assert extra == {
        KEY_VARIANT.format(arch=arch): (VT.STRING, None, variant),
        KEY_WINDOW.format(arch=arch): (VT.UINT32, None, FIXTURE_WINDOW),
        KEY_SINKS.format(arch=arch): (VT.UINT32, None, expected_sinks(family, variant)),
        KEY_LAYERS.format(arch=arch): (VT.ARRAY, VT.INT32, [1] * L),
        KEY_NORM_EPS.format(arch=arch): (VT.FLOAT32, None, float(np.float32(AHN_NORM_EPS))),
        KEY_SOURCE_BASE: (VT.STRING, None, str(fixtures_root / base_folder(family))),
        KEY_SOURCE_AHN: (VT.STRING, None, str(ahn_src)),
        KEY_PARAM_COUNT: (VT.UINT64, None, ahn_param_count(variant, L, D, H, d)),
        KEY_TRAINING: (VT.STRING, None, c.get(KEY_TRAINING)),
        KEY_CONVERTER: (VT.STRING, None, f"ahn-gguf {__version__}"),
    }
    assert str(ahn_src) in c.get(KEY_TRAINING) and f"sliding_window={FIXTURE_WINDOW}" in c.get(KEY_TRAINING)
    assert c.arch == arch and c.get(f"{arch}.block_count") == L and c.get(f"{arch}.embedding_length") == D
    assert "tokenizer.ggml.tokens" in c.kv and c.get("tokenizer.ggml.model") == "gpt2"
    assert c.get("tokenizer.chat_template"), "the chat template is carried over"
    # the runtime's own pre-load check (metadata against tensors) accepts the file
    from ahn_gguf.gguf_io.check import check_gguf_file

    info = check_gguf_file(converted[family, variant, outtype])
    assert (info.arch, info.ahn_variant, info.ahn_window) == (arch, variant, FIXTURE_WINDOW)


def test_llama_qk_permuted_like_stock(fixtures_root, converted):
    """Llama q/k weights are stored in llama.cpp's rotary layout (the stock LlamaModel permutation)."""
    c = contents(converted["llama", GDN, "f32"])
    cfg = BASE_CONFIGS["llama"]
    q = load_file(fixtures_root / "llama-base" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    q = q.float().numpy()
    H, d = cfg["num_attention_heads"], cfg["head_dim"]
    permuted = q.reshape(H, 2, d // 2, -1).swapaxes(1, 2).reshape(q.shape)
    np.testing.assert_array_equal(c.tensor("blk.0.attn_q.weight").array(), permuted)
    assert not np.array_equal(permuted, q)


def test_merged_folder(fixtures_root, out_dir, stock):
    """A merged folder (base + AHN in one, fa_layer_ids "1") converts alone; layer 1 is flagged 0 and has no AHN."""
    out = out_dir / "merged.gguf"
    convert_cli(fixtures_root / LLAMA_MERGED, "-o", out, "--outtype", "f32")
    c = read_gguf(out)
    extra = assert_base_equals_stock(c, read_gguf(stock["merged", "f32"]))
    fa = {int(i) for i in MERGED_FA_LAYER_IDS.split(",")}
    L = BASE_CONFIGS["llama"]["num_hidden_layers"]
    assert extra[KEY_LAYERS.format(arch="llamaahn")] == (VT.ARRAY, VT.INT32, [0 if i in fa else 1 for i in range(L)])
    assert extra[KEY_SOURCE_BASE][2] == extra[KEY_SOURCE_AHN][2] == str(fixtures_root / LLAMA_MERGED)
    ahn_layers = [i for i in range(L) if i not in fa]
    assert_ahn_tensors(c, hf_ahn(fixtures_root / LLAMA_MERGED), GDN, ahn_layers, "f32")
    assert extra[KEY_PARAM_COUNT][2] == ahn_param_count(GDN, len(ahn_layers), 192, 3, 64)


# --- sidecar + attach ------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def sidecar(fixtures_root, out_dir):
    out = out_dir / "qwen2-gdn.sidecar.gguf"
    convert_cli("--ahn-only", fixtures_root / ahn_folder("qwen2", GDN), "-o", out)
    return out


def test_sidecar_contents(fixtures_root, sidecar):
    c = read_gguf(sidecar)
    cfg = BASE_CONFIGS["qwen2"]
    kv = kv_values(c)
    assert c.arch == ARCH_SIDECAR
    assert kv[KEY_VARIANT.format(arch=ARCH_SIDECAR)] == (VT.STRING, None, GDN)
    assert kv[KEY_WINDOW.format(arch=ARCH_SIDECAR)] == (VT.UINT32, None, FIXTURE_WINDOW)
    assert kv[KEY_SINKS.format(arch=ARCH_SIDECAR)] == (VT.UINT32, None, FIXTURE_SINKS["qwen2", GDN])
    assert [kv[k][2] for k in (KEY_BASE_ARCH, KEY_BASE_N_LAYER, KEY_BASE_N_EMBD, KEY_BASE_N_HEAD,
                                KEY_BASE_N_HEAD_KV, KEY_BASE_HEAD_DIM)] == \
        ["qwen2", cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
         cfg["num_key_value_heads"], cfg["hidden_size"] // cfg["num_attention_heads"]]
    assert KEY_SOURCE_BASE not in kv
    # lossless: every AHN tensor in F32, nothing else in the file
    assert_ahn_tensors(c, hf_ahn(fixtures_root / ahn_folder("qwen2", GDN)), GDN, range(2), "f32")
    assert len(c.tensors) == 2 * len(AHN_TENSORS[GDN])


@pytest.mark.parametrize("outtype", ["f32", "f16"])
def test_sidecar_attach_equals_direct(fixtures_root, out_dir, stock, converted, sidecar, outtype):
    """stock base GGUF + attach(sidecar) == direct conversion: same keys, values, types, tensors, bytes."""
    out = out_dir / f"attached-{outtype}.gguf"
    rc = cli_main(["attach", str(stock["qwen2", outtype]), str(sidecar), "-o", str(out), "--no-progress",
                   "--source-base", str(fixtures_root / base_folder("qwen2"))])
    assert rc == 0
    a, b = read_gguf(out), contents(converted["qwen2", GDN, outtype])
    assert list(a.kv) == list(b.kv)
    assert kv_values(a) == kv_values(b)
    assert [(t.name, t.ggml_type, t.shape) for t in a.tensors] == [(t.name, t.ggml_type, t.shape) for t in b.tensors]
    for x, y in zip(a.tensors, b.tensors):
        assert np.array_equal(np.asarray(x.data), np.asarray(y.data)), x.name


def test_attach_onto_q8_0_keeps_base_bytes(fixtures_root, out_dir, stock, converted):
    """Attach onto an already quantized base: base bytes untouched, AHN in F16; equal to the direct q8_0
    conversion. The AHN comes straight from its checkpoint folder here (no sidecar needed)."""
    base = stock["llama", "q8_0"]
    out = out_dir / "attached-q8_0.gguf"
    rc = cli_main(["attach", str(base), str(fixtures_root / ahn_folder("llama", MAMBA2)), "-o", str(out),
                   "--no-progress", "--window", "64", "--sinks", "8"])
    assert rc == 0
    c, ref = read_gguf(out), contents(base)
    extra = assert_base_equals_stock(c, ref)
    assert {t.ggml_type for t in ref.tensors if len(t.shape) == 2} == {QT.Q8_0}
    assert extra[KEY_WINDOW.format(arch="llamaahn")][2] == 64 and extra[KEY_SINKS.format(arch="llamaahn")][2] == 8
    assert extra[KEY_SOURCE_BASE][2] == base.name
    assert_ahn_tensors(c, hf_ahn(fixtures_root / ahn_folder("llama", MAMBA2)), MAMBA2, range(3), "q8_0")
    direct = contents(converted["llama", MAMBA2, "q8_0"])
    for x in c.tensors:
        assert np.array_equal(np.asarray(x.data), np.asarray(direct.tensor(x.name).data)), x.name


# --- parameter counts -----------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("variant", VARIANTS)
def test_param_count_formula_matches_fixture(fixtures_root, family, variant):
    cfg = BASE_CONFIGS[family]
    H, D = cfg["num_attention_heads"], cfg["hidden_size"]
    d = cfg.get("head_dim") or D // H
    total = sum(t.numel() for t in hf_ahn(fixtures_root / ahn_folder(family, variant)).values())
    assert total == ahn_param_count(variant, cfg["num_hidden_layers"], D, H, d)


@pytest.mark.parametrize("base", sorted(PUBLISHED_BASE_SHAPES))
@pytest.mark.parametrize("variant", VARIANTS)
def test_param_count_formula_matches_published(base, variant):
    """docs/AHN-SPEC.md: GDN 13.0M / 21.3M / 61.0M; DN 11.8M / 18.5M / 51.1M; Mamba2 11.9M / 18.6M / 51.4M."""
    layers, D, H, d = PUBLISHED_BASE_SHAPES[base]
    assert round(ahn_param_count(variant, layers, D, H, d) / 1e6, 1) == PUBLISHED_AHN_PARAMS[base, variant]


def test_param_count_logged_with_published_size(tmp_path, caplog):
    """A checkpoint shaped like Qwen2.5-3B: the log names the published size, and it agrees."""
    from ahn_gguf.convert.ahn import AHNPayload, BaseShape, expected_tensors

    base = BaseShape("qwen2", 36, 2048, 16, 2, 128)
    layers = [1] * 36
    tensors = {k: np.zeros(s, np.float32) for k, s in expected_tensors(GDN, base, layers).items()}
    p = AHNPayload(GDN, 32640, 128, layers, base, tensors, ahn_param_count(GDN, 36, 2048, 16, 128), "x", "y")
    with caplog.at_level("INFO", logger="ahn_gguf.convert"):
        p.log_parameter_count()
    assert "12,982,464 parameters" in caplog.text and "published size for Qwen2.5-3B: 13.0M" in caplog.text
    assert "DIFFERENT" not in caplog.text


# --- CLI ------------------------------------------------------------------------------------------

def test_help_explains_options(capsys):
    for sub in ("convert", "attach"):
        with pytest.raises(SystemExit):
            cli_main([sub, "--help"])
        text = capsys.readouterr().out
        for word in ("--window", "--sinks", "--force", "-o", "Qwen/Qwen2.5-3B-Instruct",
                     "ByteDance-Seed/AHN-GDN-for-Qwen-2.5-Instruct-3B"):
            assert word in text, f"`ahn-gguf {sub} --help` does not mention {word}"
    cli_main_help = subprocess.run([sys.executable, "-m", "ahn_gguf.cli", "convert", "--help"],
                                   capture_output=True, text=True)
    assert "--outtype" in cli_main_help.stdout and "q4_k_m" in cli_main_help.stdout
    assert "--ahn-only" in cli_main_help.stdout


def test_hub_id_offline_says_to_download(tmp_path):
    out = tmp_path / "x.gguf"
    env = {**__import__("os").environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "ahn_gguf.cli", "convert", "no-such-org/no-such-base",
                           "no-such-org/no-such-ahn", "-o", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1
    assert "no-such-org/no-such-base" in proc.stderr and "download the folders" in proc.stderr
    assert "pass their paths" in proc.stderr
    assert not out.exists()


# --- with the patched llama.cpp build -----------------------------------------------------------

def require_patched_llama_cpp():
    """The patched build, or a test failure (not a skip) saying to build it."""
    from ahn_gguf.convert.quantize import patched_llama_cpp
    from ahn_gguf.errors import ConversionError

    try:
        return patched_llama_cpp()
    except ConversionError as e:
        pytest.fail(str(e))


@pytest.mark.llama
def test_tokenizer_matches_hf(fixtures_root, converted):
    """The GGUF's tokenizer (read by the patched llama.cpp) encodes and decodes like the HF one."""
    llama_cpp = require_patched_llama_cpp()
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(fixtures_root / base_folder("qwen2"))
    llm = llama_cpp.Llama(str(converted["qwen2", GDN, "f32"]), vocab_only=True, verbose=False)
    for text in MULTILINGUAL:
        want = hf.encode(text, add_special_tokens=False)
        got = llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        assert got == want, f"{text!r}: llama.cpp {got} != HF {want}"
        assert llm.detokenize(got, special=True).decode("utf-8") == hf.decode(want) == text


@pytest.mark.llama
def test_kquant_keeps_ahn_unquantized(fixtures_root, out_dir, stock, converted):
    """q4_k_m: base quantized by llama.cpp's quantizer (bytes equal to quantizing the stock f16 base),
    AHN tensors F16 (2-D/3-D) and F32 (1-D)."""
    llama_cpp = require_patched_llama_cpp()
    out = out_dir / "qwen2-gdn-q4_k_m.gguf"
    convert_cli(fixtures_root / base_folder("qwen2"), fixtures_root / ahn_folder("qwen2", GDN), "-o", out,
                "--outtype", "Q4_K_M")
    c = read_gguf(out)
    assert c.get("general.file_type") == gguf.LlamaFileType.MOSTLY_Q4_K_M
    types = {t.name: t.ggml_type for t in c.tensors}
    assert types["blk.0.attn_q.weight"] in (QT.Q4_K, QT.Q5_K, QT.Q6_K)
    assert types["blk.0.ffn_gate.weight"] in (QT.Q4_K, QT.Q5_K, QT.Q6_K)
    assert_ahn_tensors(c, hf_ahn(fixtures_root / ahn_folder("qwen2", GDN)), GDN, range(2), "q4_k_m")
    # the base part is exactly llama.cpp's own quantization of the stock f16 conversion
    ref_path = out_dir / "stock-qwen2-q4_k_m.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    import ctypes
    assert llama_cpp.llama_model_quantize(str(stock["qwen2", "f16"]).encode(), str(ref_path).encode(),
                                          ctypes.byref(params)) == 0
    assert_base_equals_stock(c, read_gguf(ref_path))
    assert not list(out_dir.glob(".*.tmp")), "intermediate files left behind"
