"""The one place where AHN names are spelled: variants, config keys, GGUF keys, tensor names.

The converter, the runtime, the tests and the llama.cpp patches all take their names from here;
tests/llama_cpp/test_names.py reads patches/llama.cpp/ (and native/) and fails when the names or the epsilons
declared there differ from the ones below.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UsageError

# --- variants -----------------------------------------------------------------------------

GDN = "GatedDeltaNet"
DN = "DeltaNet"
MAMBA2 = "Mamba2"
VARIANTS = (GDN, DN, MAMBA2)

# short names accepted on the command line
VARIANT_ALIASES = {
    "gdn": GDN, "gateddeltanet": GDN,
    "dn": DN, "deltanet": DN,
    "mamba2": MAMBA2, "mamba": MAMBA2,
}

# enum values shared with native/ahn_memory.h (enum ahn_variant)
VARIANT_ID = {GDN: 0, DN: 1, MAMBA2: 2}


def canonical_variant(name: str) -> str:
    """'gdn' / 'GatedDeltaNet' / ... -> the canonical `_ahn_implementation` spelling."""
    if name in VARIANTS:
        return name
    key = name.replace("-", "").replace("_", "").lower()
    if key in VARIANT_ALIASES:
        return VARIANT_ALIASES[key]
    raise UsageError(f"unknown AHN variant {name!r}; expected one of {', '.join(VARIANTS)}")


# --- Hugging Face config.json keys (the released AHN checkpoints) ----------------------------

HF_AHN_IMPLEMENTATION = "_ahn_implementation"
HF_SLIDING_WINDOW = "sliding_window"
HF_NUM_ATTN_SINKS = "num_attn_sinks"
HF_FA_LAYER_IDS = "fa_layer_ids"
HF_USE_AHN_ROUTER = "use_ahn_router"
HF_USE_Q_PROJ = "use_q_proj"

# prefix of every AHN weight in a checkpoint: model.layers.{i}.ahn.fn.<name>
HF_AHN_PREFIX = "model.layers.{bid}.ahn.fn."

# --- GGUF -------------------------------------------------------------------------------------

# one architecture per base family, so stock llama.cpp refuses an AHN file by name
ARCH_FOR_BASE = {"qwen2": "qwen2ahn", "llama": "llamaahn"}
BASE_FOR_ARCH = {v: k for k, v in ARCH_FOR_BASE.items()}
# sidecar (AHN-only) files
ARCH_SIDECAR = "ahn"

# architecture-scoped keys ("{arch}." prefix), read by the runtime
KEY_VARIANT = "{arch}.ahn.variant"            # string, one of VARIANTS
KEY_WINDOW = "{arch}.ahn.window"              # u32, default W (excludes sinks)
KEY_SINKS = "{arch}.ahn.sinks"                # u32, default S
KEY_LAYERS = "{arch}.ahn.layers"              # arr[i32], one flag per layer: 1 = AHN, 0 = full attention
KEY_NORM_EPS = "{arch}.ahn.norm_epsilon"      # f32, eps of the readout RMSNorm
KEY_MEMORY_ENABLED = "{arch}.ahn.memory_enabled"  # bool, default true; false = sinks + window only (ablation)
KEY_MEMORY_TYPE = "{arch}.ahn.memory_type"    # string, "f32" (default) or "f16": how the recurrent states and
                                              # the per-token write gates are stored (computed in F32 either way)
MEMORY_TYPES = ("f32", "f16")

# provenance (not read by the runtime)
KEY_SOURCE_BASE = "ahn.source.base"           # string: HF id or folder of the base model
KEY_SOURCE_AHN = "ahn.source.ahn"             # string: HF id or folder of the AHN checkpoint
KEY_PARAM_COUNT = "ahn.parameter_count"       # u64: AHN parameters (all layers)
KEY_TRAINING = "ahn.training"                 # string: free text (released / distilled: steps, data)
KEY_CONVERTER = "ahn.converter"               # string: "ahn-gguf <version>"

# sidecar: what base the AHN belongs to
KEY_BASE_ARCH = "ahn.base.architecture"       # string: qwen2 / llama
KEY_BASE_N_LAYER = "ahn.base.block_count"     # u32
KEY_BASE_N_EMBD = "ahn.base.embedding_length" # u32
KEY_BASE_N_HEAD = "ahn.base.head_count"       # u32
KEY_BASE_N_HEAD_KV = "ahn.base.head_count_kv" # u32
KEY_BASE_HEAD_DIM = "ahn.base.head_dim"       # u32

# --- epsilons (docs/AHN-SPEC.md), the one place in Python; tests/llama_cpp/test_names.py checks them ------------

# readout RMSNorm eps (output path): the default of KEY_NORM_EPS; must equal the default of
# llama_hparams::ahn_norm_eps in patches/llama.cpp (0004, src/llama-hparams.h)
AHN_NORM_EPS = 1e-5
# L2 norm of q and k, GDN/DN (fla's l2norm at the commit AHN uses): x / sqrt(sum x^2 + eps), eps
# inside the sqrt; must equal AHN_L2_EPS_DELTA in native/ahn_memory_common.h
AHN_L2_EPS_DELTA = 1e-6
# L2 norm of q and k, Mamba2 (torch F.normalize): x / max(||x||, eps); must equal
# AHN_L2_EPS_MAMBA2 in native/ahn_memory_common.h
AHN_L2_EPS_MAMBA2 = 1e-12

# the largest window accepted anywhere (converter, runtime): far beyond any trained AHN
MAX_WINDOW = 1 << 24


@dataclass(frozen=True)
class AHNTensor:
    """One AHN weight: its checkpoint name, its GGUF name, and how it is laid out."""

    hf: str            # name after "model.layers.{i}.ahn.fn."
    gguf: str          # GGUF name, "{bid}" = layer index
    shape: str         # checkpoint shape in docs/AHN-SPEC.md terms
    transpose_heads: bool = False  # o_proj: (H, d_in, d_out) stored as (H, d_out, d_in)


# o_proj is stored per head transposed, (H, d_out, d_in), so that ggml_mul_mat contracts
# over d_in, the same convention as every nn.Linear weight in a GGUF file.
_O_PROJ = AHNTensor("o_proj.weight", "blk.{bid}.ahn_out.weight", "(H, d, d)", transpose_heads=True)

AHN_TENSORS = {
    GDN: (
        AHNTensor("b_proj.weight", "blk.{bid}.ahn_b.weight", "(H, D)"),
        AHNTensor("a_proj.weight", "blk.{bid}.ahn_a.weight", "(H, D)"),
        AHNTensor("A_log", "blk.{bid}.ahn_a_log", "(H)"),
        AHNTensor("dt_bias", "blk.{bid}.ahn_dt_bias", "(H)"),
        AHNTensor("g_proj.weight", "blk.{bid}.ahn_g.weight", "(H, D)"),
        AHNTensor("o_norm.weight", "blk.{bid}.ahn_norm.weight", "(d)"),
        _O_PROJ,
    ),
    DN: (
        AHNTensor("b_proj.weight", "blk.{bid}.ahn_b.weight", "(H, D)"),
        AHNTensor("g_proj.weight", "blk.{bid}.ahn_g.weight", "(H, D)"),
        AHNTensor("o_norm.weight", "blk.{bid}.ahn_norm.weight", "(d)"),
        _O_PROJ,
    ),
    MAMBA2: (
        AHNTensor("dt_proj.weight", "blk.{bid}.ahn_dt.weight", "(H, D)"),
        AHNTensor("dt_proj.bias", "blk.{bid}.ahn_dt.bias", "(H)"),
        AHNTensor("dt_bias", "blk.{bid}.ahn_dt_bias", "(H)"),
        AHNTensor("A_log", "blk.{bid}.ahn_a_log", "(H)"),
        AHNTensor("g_proj.weight", "blk.{bid}.ahn_g.weight", "(H, D)"),
        AHNTensor("g_proj.bias", "blk.{bid}.ahn_g.bias", "(H)"),
        AHNTensor("norm.weight", "blk.{bid}.ahn_norm.weight", "(H*d)"),
        _O_PROJ,
    ),
}

# present in released checkpoints, unused by the math (docs/AHN-SPEC.md): accepted, not converted
AHN_UNUSED_TENSORS = {GDN: ("D",), DN: (), MAMBA2: ()}


def ahn_param_count(variant: str, n_layer_ahn: int, hidden: int, n_head: int, head_dim: int) -> int:
    """AHN parameters of a model (all AHN layers), per docs/AHN-SPEC.md's tensor table, unused D included.

    The published sizes (docs/AHN-SPEC.md, "Checkpoints") are reproduced by this formula; the
    converter logs it and checks it against the tensors it writes.
    """
    variant = canonical_variant(variant)
    H, D, d = n_head, hidden, head_dim
    o_proj = H * d * d
    if variant == GDN:
        per = 3 * H * D + 3 * H + d + o_proj          # b, a, g proj; A_log, dt_bias, D; o_norm
    elif variant == DN:
        per = 2 * H * D + d + o_proj                  # b, g proj; o_norm
    else:
        per = 2 * H * D + 4 * H + H * d + o_proj      # dt, g proj; dt bias, dt_bias, A_log, g bias; norm
    return n_layer_ahn * per


# --- published sizes (docs/AHN-SPEC.md, "Checkpoints") ---------------------------------------------------

# (layers, hidden D, heads H, head dim d) of the bases of the released AHN checkpoints
PUBLISHED_BASE_SHAPES = {
    "Qwen2.5-3B": (36, 2048, 16, 128),
    "Qwen2.5-7B": (28, 3584, 28, 128),
    "Qwen2.5-14B": (48, 5120, 40, 128),
}
# published AHN sizes in millions of parameters (all layers; ahn_param_count reproduces them)
PUBLISHED_AHN_PARAMS = {
    ("Qwen2.5-3B", GDN): 13.0, ("Qwen2.5-7B", GDN): 21.3, ("Qwen2.5-14B", GDN): 61.0,
    ("Qwen2.5-3B", DN): 11.8, ("Qwen2.5-7B", DN): 18.5, ("Qwen2.5-14B", DN): 51.1,
    ("Qwen2.5-3B", MAMBA2): 11.9, ("Qwen2.5-7B", MAMBA2): 18.6, ("Qwen2.5-14B", MAMBA2): 51.4,
}
