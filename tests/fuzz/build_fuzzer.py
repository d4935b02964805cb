"""Build the coverage-guided loader fuzzer: the patched llama.cpp + load_model_fuzzer.cpp, with
clang's libFuzzer, AddressSanitizer and UndefinedBehaviorSanitizer.

The source tree is the one `ahn-gguf build` compiles (the pinned sdist, the patch series,
native/), so the fuzzer tests exactly the loader users run. Static libraries, no OpenMP (its
runtime and ASan do not mix well), the CPU backend only. The binary is cached like the wheel,
under `$AHN_GGUF_CACHE/fuzz/<key>/`, the key hashing the wheel's build key, the harness and the
flags: a rebuild happens only when one of them changes.

    python tests/fuzz/build_fuzzer.py          # prints the fuzzer's path (building it if needed)

Needs clang and its runtime (Debian: clang-14, libclang-rt-14-dev).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ahn_gguf.build.llama_cpp import BuildConfig, BuildError, _run, build_key, cpu_cmake_args, prepare_source
from ahn_gguf.build.pins import cache_dir

HERE = Path(__file__).resolve().parent
HARNESS = HERE / "load_model_fuzzer.cpp"
# -O1 keeps the harness fast enough to fuzz; line tables are all a symbolised stack trace needs (and cost far
# less compile time than full debug info on 2 cores). NDEBUG as in every release build users run: C assert()s
# (ggml's debug checks on values, e.g. a NaN weight in rms_norm) are compiled out there; GGML_ASSERT stays.
SANITIZE = "-fsanitize=address,undefined -fno-omit-frame-pointer -gline-tables-only -O1 -DNDEBUG"
CLANG_CANDIDATES = ("clang++-14", "clang++", "clang++-15", "clang++-16")


def find_clang() -> tuple[str, str]:
    """(clang, clang++) with a libFuzzer runtime, or BuildError saying what to install."""
    for cxx in CLANG_CANDIDATES:
        path = shutil.which(cxx)
        if path:
            cc = path.replace("clang++", "clang")
            probe = subprocess.run([path, "-fsanitize=fuzzer", "-x", "c++", "-", "-o", os.devnull],
                                   input="extern \"C\" int LLVMFuzzerTestOneInput(const char*, long){return 0;}",
                                   capture_output=True, text=True)
            if probe.returncode == 0:
                return cc, path
    raise BuildError("no clang with libFuzzer found: install clang and its runtime (Debian: apt-get install clang-14 libclang-rt-14-dev)")


def fuzzer_key(cxx: str) -> str:
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout.splitlines()[0]
    h = hashlib.sha256()
    for part in (build_key(BuildConfig()), HARNESS.read_bytes().hex(), SANITIZE, version, " ".join(cpu_cmake_args())):
        h.update(part.encode() + b"\n")
    return h.hexdigest()[:16]


def ensure_fuzzer(jobs: int = 0) -> Path:
    """The cached fuzzer binary, building it if needed (several minutes on 2 cores)."""
    cc, cxx = find_clang()
    key = fuzzer_key(cxx)
    out_dir = cache_dir() / "fuzz" / key
    binary = out_dir / "load_model_fuzzer"
    if binary.is_file():
        return binary
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="ahn-fuzz-", dir=out_dir.parent) as tmp:
        tmp = Path(tmp)
        src = prepare_source(tmp / "src", BuildConfig(), key) / "vendor" / "llama.cpp"
        build = tmp / "build"
        flags = SANITIZE + " -fsanitize=fuzzer-no-link"
        env = dict(os.environ, CC=cc, CXX=cxx)
        print(f"building the loader fuzzer (key {key}) with {cxx}; this takes several minutes", flush=True)
        _run(["cmake", "-S", str(src), "-B", str(build), "-G", "Ninja", "-DCMAKE_BUILD_TYPE=",
              f"-DCMAKE_C_FLAGS={flags}", f"-DCMAKE_CXX_FLAGS={flags}",
              "-DBUILD_SHARED_LIBS=OFF", "-DGGML_OPENMP=OFF", "-DGGML_CCACHE=OFF",
              "-DLLAMA_BUILD_COMMON=OFF", "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF",
              "-DLLAMA_BUILD_TOOLS=OFF", "-DLLAMA_BUILD_SERVER=OFF", "-DLLAMA_CURL=OFF",
              *cpu_cmake_args()], env=env, log=tmp / "cmake.log")
        _run(["cmake", "--build", str(build), "--target", "llama", "-j", str(jobs or os.cpu_count() or 2)],
             env=env, log=tmp / "build.log")
        libs = [build / "src" / "libllama.a", *sorted(build.glob("ggml/src/libggml*.a"))]
        # ggml.a (the backend registry) first, ggml-base last: static libraries resolve left to right
        libs.sort(key=lambda p: {"libllama.a": 0, "libggml.a": 1, "libggml-base.a": 3}.get(p.name, 2))
        staged = tmp / "staged"
        staged.mkdir()
        _run([cxx, *SANITIZE.split(), "-fsanitize=fuzzer", "-std=c++17",
              "-I", str(src / "include"), "-I", str(src / "ggml" / "include"),
              str(HARNESS), *map(str, libs), "-lpthread", "-ldl", "-lm", "-o", str(staged / binary.name)], env=env)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(staged, out_dir)
    return binary


if __name__ == "__main__":
    print(ensure_fuzzer())
    sys.exit(0)


def write_dictionary(path: Path) -> Path:
    """A libFuzzer dictionary of GGUF keys, architecture, variant and tensor names (from ahn_gguf.constants
    and llama.cpp's key names), so that mutations can swap one meaningful name for another."""
    from ahn_gguf import constants as C

    words = ["GGUF", "general.architecture", "general.alignment", "general.name", "llama", "qwen2",
             "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
             "tokenizer.ggml.scores", "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id",
             "tokenizer.ggml.eos_token_id", "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id",
             "tokenizer.ggml.add_bos_token", "tokenizer.chat_template", "gpt2", "<0x0A>", "[EMPTY_0]",
             "token_embd.weight", "output_norm.weight", "output.weight", *C.VARIANTS]
    for arch in C.BASE_FOR_ARCH:
        words.append(arch)
        words += [f"{arch}.{k}" for k in ("context_length", "embedding_length", "block_count", "feed_forward_length",
                                          "attention.head_count", "attention.head_count_kv", "attention.key_length",
                                          "attention.value_length", "rope.dimension_count", "rope.freq_base",
                                          "rope.scaling.type", "attention.layer_norm_rms_epsilon", "expert_count",
                                          "expert_used_count", "vocab_size", "nextn_predict_layers")]
        words += [k.format(arch=arch) for k in (C.KEY_VARIANT, C.KEY_WINDOW, C.KEY_SINKS, C.KEY_LAYERS, C.KEY_NORM_EPS,
                                                C.KEY_MEMORY_ENABLED)]
    words += [t.gguf.format(bid=0) for v in C.VARIANTS for t in C.AHN_TENSORS[v]]
    words += [f"blk.0.{t}" for t in ("attn_norm.weight", "attn_q.weight", "attn_k.weight", "attn_v.weight", "attn_q.bias",
                                     "attn_output.weight", "ffn_norm.weight", "ffn_gate.weight", "ffn_up.weight", "ffn_down.weight")]
    unique = list(dict.fromkeys(words))
    path.write_text("".join('"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"\n' for w in unique))
    return path
