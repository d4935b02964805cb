"""Run the loader fuzzer: the seed corpus, a campaign, the regression inputs, the report.

    python tests/fuzz/run_fuzz.py --seconds 1800 --report reports/fuzz-loader

builds (or reuses) the fuzzer, writes the seed corpus (tiny AHN models of both base families,
every variant), fuzzes for the given time with a fixed seed, replays tests/fuzz/regressions/, and
writes the figures (executions, coverage, crashes) as markdown + JSON. A crash leaves its input
as `crash-*` in the work folder: minimise it, fix the loader, and add it to regressions/.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REGRESSIONS = HERE / "regressions"
if __package__ in (None, ""):  # run as a script (the report): the repository root, for tests.helpers
    sys.path.insert(0, str(HERE.parents[1]))

FAMILIES = ("llama", "qwen2")
_STATS = re.compile(r"#(\d+)\s+\w+\s+cov: (\d+) ft: (\d+) corp: (\d+)")


# inputs that aborted the loader before the fuzzer existed (the vocabulary abort, and the
# GGML_ASSERTs on hyper-parameters patches/llama.cpp/0010 turned into load errors): tiny model + one metadata change
KNOWN = {
    "vocab-duplicate-token": ("tokenizer.ggml.tokens", "duplicate"),
    "block-count-zero": ("{arch}.block_count", 0),
    "block-count-huge": ("{arch}.block_count", 100000),
    "rope-dimension-mismatch": ("{arch}.rope.dimension_count", 16),
    "head-count-kv-zero": ("{arch}.attention.head_count_kv", 0),
    "expert-count-huge": ("{arch}.expert_count", 1000000),
}


def regression_inputs(work: Path) -> list[Path]:
    """The KNOWN inputs (built into `work`) and the raw files in regressions/."""
    from ahn_gguf.gguf_io.contents import KV, VT, read_gguf, write_gguf
    from tests.helpers.tiny_model import ARCH, build_tiny_ahn_gguf

    work.mkdir(parents=True, exist_ok=True)
    base = build_tiny_ahn_gguf(work / "base.gguf")
    out = []
    for name, (key, value) in KNOWN.items():
        c = read_gguf(base)
        key = key.format(arch=ARCH)
        if value == "duplicate":
            tokens = list(c.kv[key].value)
            tokens[7] = tokens[8]
            c.kv[key] = KV(VT.ARRAY, tokens, VT.STRING)
        else:
            c.kv[key] = KV(VT.UINT32, value)
        out.append(write_gguf(c, work / f"{name}.gguf", progress=False))
    base.unlink()
    return out + sorted(p for p in REGRESSIONS.iterdir() if p.name != "README.md")


def write_seed_corpus(folder: Path) -> Path:
    """One tiny AHN GGUF per base family and variant (~100 KB each)."""
    from ahn_gguf import constants as C
    from tests.helpers.tiny_model import build_tiny_ahn_gguf

    folder.mkdir(parents=True, exist_ok=True)
    for family in FAMILIES:
        for variant in C.VARIANTS:
            build_tiny_ahn_gguf(folder / f"{family}-{variant.lower()}.gguf", family=family, variant=variant)
    return folder


def _env() -> dict:
    # abort on the first sanitizer report; no leak of the allocator's own caches counted as a finding
    return dict(os.environ,
                ASAN_OPTIONS="abort_on_error=1:detect_leaks=1:allocator_may_return_null=1",
                UBSAN_OPTIONS=f"halt_on_error=1:print_stacktrace=1:suppressions={HERE / 'ubsan.supp'}")


def run_regressions(fuzzer: Path, inputs: list[Path], work: Path) -> dict[str, tuple[int, str]]:
    """Each input once through the harness: name -> (exit code, tail of its output)."""
    out = {}
    for path in inputs:
        proc = subprocess.run([str(fuzzer), "-rss_limit_mb=4096", "-timeout=60", str(path)], cwd=work, env=_env(),
                              capture_output=True, text=True, timeout=600)
        out[path.name] = (proc.returncode, (proc.stdout + proc.stderr)[-1500:])
    return out


def run_campaign(fuzzer: Path, work: Path, *, seconds: int, seed: int = 1) -> dict:
    """Fuzz for `seconds` from the seed corpus; the figures of the run."""
    from tests.fuzz.build_fuzzer import write_dictionary

    corpus = write_seed_corpus(work / "corpus")
    dictionary = write_dictionary(work / "gguf.dict")
    artifacts = work / "artifacts"
    artifacts.mkdir(exist_ok=True)
    log = work / "fuzz.log"
    t0 = time.time()
    with open(log, "w") as f:
        proc = subprocess.run([str(fuzzer), str(corpus), f"-dict={dictionary}", f"-seed={seed}", f"-max_total_time={seconds}",
                               "-max_len=400000", "-rss_limit_mb=4096", "-timeout=60", "-print_final_stats=1",
                               f"-artifact_prefix={artifacts}/"], cwd=work, env=_env(), stdout=f, stderr=subprocess.STDOUT,
                              timeout=seconds + 900)
    text = log.read_text(errors="replace")
    found = [m.groups() for m in _STATS.finditer(text)]
    execs = re.search(r"stat::number_of_executed_units:\s*(\d+)", text)
    crashes = sorted(p.name for p in artifacts.iterdir() if p.name.startswith(("crash-", "leak-", "timeout-", "oom-")))
    return {
        "seconds": round(time.time() - t0, 1),
        "seed": seed,
        "returncode": proc.returncode,
        "executions": int(execs.group(1)) if execs else (int(found[-1][0]) if found else 0),
        "coverage": int(found[-1][1]) if found else 0,
        "features": int(found[-1][2]) if found else 0,
        "corpus": int(found[-1][3]) if found else 0,
        "crashes": len(crashes) + (proc.returncode != 0 and not crashes),
        "crash_files": crashes,
        "log_tail": text[-3000:],
    }


# what the fuzzers found while the loader was hardened (the history the report keeps; each is fixed in
# patches/llama.cpp/0010 and replayed by KNOWN or by tests/hardening/test_bad_input.py)
FINDINGS = [
    ("Python mutation fuzz (issue report)", "two equal token strings: GGML_ASSERT(id_to_token.size() == token_to_id.size()) "
     "in llama-vocab.cpp aborted the load", "load error naming both token ids; the Python pre-check rejects it first"),
    ("reading the loader", "block_count 0 / > 512, expert counts, unknown rope scaling type, AHN head counts "
     "(GGML_ASSERTs; head_count_kv 0 divided by zero when the graph was built)", "load errors (LLAMA_CHECK_FILE)"),
    ("Python mutation fuzz, inside the vocabulary", "a SentencePiece vocabulary missing a byte token: std::out_of_range "
     "thrown through llama_tokenize (a C function) terminated the process", "falls back to <unk>, or drops the byte"),
    ("libFuzzer + UBSan", "a GGUF value type outside enum gguf_type loaded as the enum (undefined behaviour)",
     "the reader maps it to GGUF_TYPE_COUNT, which every caller rejects"),
    ("libFuzzer + UBSan", "a short read of a tensor's type left it uninitialised for the range check",
     "the reader stops at the short read"),
]


def write_report(stats: dict, regressions: dict, out: Path, conditions: str = "") -> None:
    from ahn_gguf.gguf_io.contents import atomic_output

    out.parent.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in stats.items() if k != "log_tail"}
    data["regressions"] = {name: rc for name, (rc, _) in regressions.items()}
    with atomic_output(out.with_suffix(".json")) as tmp:
        tmp.write_text(json.dumps(data, indent=2) + "\n")
    lines = [
        "# Loader fuzzing (libFuzzer + ASan + UBSan)",
        "",
        "`python tests/fuzz/run_fuzz.py --seconds N --report reports/fuzz-loader`: the patched llama.cpp loader",
        "(tests/fuzz/load_model_fuzzer.cpp: load a GGUF from bytes; when it loads, create a context and decode",
        "a few tokens), from a seed corpus of tiny AHN models (Llama and Qwen2 bases, GDN / DN / Mamba2) with a",
        "dictionary of GGUF names. CI runs the same harness for 180 s (tests/hardening/test_fuzz_loader.py).",
        "",
        "| figure | value |",
        "| --- | --- |",
        f"| wall time | {data['seconds']} s (seed {data['seed']}, 1 process) |",
        f"| executions | {data['executions']} |",
        f"| coverage (edges) | {data['coverage']} |",
        f"| features | {data['features']} |",
        f"| corpus at the end | {data['corpus']} inputs |",
        f"| crashes in this run | {data['crashes']} |",
        f"| regression inputs (KNOWN + tests/fuzz/regressions/) | {len(regressions)}, all exit 0: {all(rc == 0 for rc, _ in regressions.values())} |",
    ]
    if conditions:
        lines += ["", conditions]
    lines += ["", "## Found and fixed", "", "| found by | what | now |", "| --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} |" for a, b, c in FINDINGS]
    lines += ["", "Not findings: ggml's CPU kernels call vec_dot routines through one function-pointer type, which",
              "`-fsanitize=function` reports on every run (suppressed in tests/fuzz/ubsan.supp); C `assert()`s on values",
              "(a NaN weight in rms_norm) are compiled out of every release build, so the fuzzer builds with NDEBUG too."]
    with atomic_output(out.with_suffix(".md")) as tmp:
        tmp.write_text("\n".join(lines) + "\n")


def main() -> int:
    from tests.fuzz.build_fuzzer import ensure_fuzzer

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--work", type=Path, default=Path("scratch/fuzz"))
    ap.add_argument("--report", type=Path, help="write REPORT.md and REPORT.json")
    ap.add_argument("--conditions", default="", help="a sentence on the machine and load, for the report")
    args = ap.parse_args()
    fuzzer = ensure_fuzzer()
    args.work = args.work.resolve()   # the fuzzer runs inside it
    if args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True)
    stats = run_campaign(fuzzer, args.work, seconds=args.seconds, seed=args.seed)
    regressions = run_regressions(fuzzer, regression_inputs(args.work / "regressions"), args.work)
    print(json.dumps({k: v for k, v in stats.items() if k != "log_tail"}, indent=2))
    if stats["crashes"]:
        print(stats["log_tail"])
    if args.report:
        write_report(stats, regressions, args.report, args.conditions)
    return 1 if stats["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
