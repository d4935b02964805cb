"""Names declared once, checked: the AHN names and epsilons of the llama.cpp patch series
(patches/llama.cpp/*.patch) and of native/ are those of ahn_gguf/constants.py.

The patches are read as text, no llama.cpp tree needed: the C/C++ sources they touch are
reconstructed in full when the series creates them (src/models/ahn-base.cpp, ...: every hunk
applied in order, its context checked) and, for files of stock llama.cpp, as the lines the series
adds and keeps (a line a later patch removes is gone). From those:

* architectures: `{ LLM_ARCH_*AHN*, "name" }` in LLM_ARCH_NAMES (llama-arch.cpp);
* GGUF keys: `{ LLM_KV_AHN_*, "%s.ahn...." }` in LLM_KV_NAMES, "%s." being the architecture;
* tensors: the base names `{ LLM_TENSOR_AHN_*, "blk.%d.ahn_..." }` of LLM_TENSOR_NAMES, and what
  `create_ahn_tensors` loads, per variant case: `tn(LLM_TENSOR_AHN_X, "weight", i)` is the GGUF
  tensor "<base>.weight" (llama.cpp's LLM_TN_IMPL appends "." + suffix), `tn(LLM_TENSOR_AHN_X, i)`
  the bare base name (the 1-D parameters A_log, dt_bias);
* variants: the `variant == "Name"` -> GGML_AHN_VARIANT_* mapping of load_ahn_hparams, with the
  enum values of ggml.h;
* epsilons: the readout norm's default (llama_hparams::ahn_norm_eps), the L2-norm epsilons of the
  composed graph, and the #defines of native/ahn_memory_common.h.

Every comparison runs both ways: a name added, removed or renamed on either side fails.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cache
from pathlib import Path

import pytest

from ahn_gguf import constants as C
from tests.helpers import REPO_ROOT

ROOT = REPO_ROOT
PATCHES = sorted((ROOT / "patches" / "llama.cpp").glob("*.patch"))
NATIVE = ROOT / "native"

C_SOURCES = (".c", ".cc", ".cpp", ".h", ".hpp", ".cu", ".cuh")
HUNK = re.compile(r"^@@ -(\d+)(?:,(\d+))? \+(\d+)(?:,(\d+))? @@")
DIFF = re.compile(r"^diff --git a/(\S+) b/(\S+)$")


# --- reading the patch series --------------------------------------------------------------------

def _file_diffs(text: str) -> Iterable[tuple[str, bool, bool, list[tuple[int, int, list[str]]]]]:
    """(path, created, deleted, hunks) per file of one patch; a hunk is (old_start, old_len, body lines).

    Hunk bodies are cut by their line counts, so the mail signature ("-- ") that follows the last
    diff of a `git format-patch` file is never read as a removed line.
    """
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        m = DIFF.match(lines[i])
        if not m:
            i += 1
            continue
        path, created, deleted, hunks = m.group(2), False, False, []
        i += 1
        while i < len(lines) and not DIFF.match(lines[i]):
            line = lines[i]
            h = HUNK.match(line)
            if line.startswith("new file mode") or line == "--- /dev/null":
                created = True
            elif line.startswith("deleted file mode"):
                deleted = True
            if not h:
                if line.startswith("@@"):
                    pytest.fail(f"unreadable hunk header in {path}: {line}")
                i += 1
                continue
            old_start = int(h.group(1))
            old_left = int(h.group(2)) if h.group(2) is not None else 1
            new_left = int(h.group(4)) if h.group(4) is not None else 1
            old_len, body = old_left, []
            i += 1
            while old_left > 0 or new_left > 0:
                assert i < len(lines), f"{path}: hunk cut short"
                line = lines[i]
                i += 1
                if line.startswith("\\"):          # "\ No newline at end of file"
                    continue
                tag = line[:1] or " "              # an empty context line may lose its space
                assert tag in " +-", f"{path}: unexpected line in a hunk: {line!r}"
                old_left -= tag in " -"
                new_left -= tag in " +"
                body.append(tag + line[1:])
            hunks.append((old_start, old_len, body))
        yield path, created, deleted, hunks


@cache
def sources() -> dict[str, tuple[str, ...]]:
    """Per C/C++ source of the series: its full text (files the series creates) or the lines the
    series adds and keeps (stock files); both without the diff tags."""
    full: dict[str, list[str]] = {}
    added: dict[str, list[str]] = {}
    assert PATCHES, "no patches/llama.cpp/*.patch"
    for patch in PATCHES:
        for path, created, deleted, hunks in _file_diffs(patch.read_text(encoding="utf-8")):
            if not path.endswith(C_SOURCES):
                continue
            if deleted:
                full.pop(path, None)
                added.pop(path, None)
                continue
            if created:
                full[path] = []
            if path in full:
                text, delta = full[path], 0
                for old_start, old_len, body in hunks:
                    old = [b[1:] for b in body if b[0] in " -"]
                    new = [b[1:] for b in body if b[0] in " +"]
                    pos = (old_start - 1 if old_len else old_start) + delta
                    assert text[pos:pos + len(old)] == old, f"{patch.name}: a hunk of {path} does not apply"
                    text[pos:pos + len(old)] = new
                    delta += len(new) - len(old)
            else:
                kept = added.setdefault(path, [])
                for _, _, body in hunks:
                    for b in body:
                        if b[0] == "-" and b[1:] in kept:
                            kept.remove(b[1:])
                        elif b[0] == "+":
                            kept.append(b[1:])
    return {p: tuple(lines) for p, lines in {**added, **full}.items()}


def source(path: str) -> tuple[str, ...]:
    assert path in sources(), f"the patch series no longer touches {path}"
    return sources()[path]


def all_lines() -> Iterable[str]:
    for lines in sources().values():
        yield from lines


NAME_ENTRY = re.compile(r'\{\s*(LLM_(?:ARCH|KV|TENSOR)_\w+)\s*,\s*"([^"]*)"\s*\}')


def _is_ahn(enum: str, name: str) -> bool:
    return "AHN" in enum or "ahn" in name.lower()


@cache
def name_table(kind: str) -> dict[str, str]:
    """The AHN entries `{ LLM_<kind>_..., "name" }` of llama-arch.cpp's name maps: enum -> name."""
    out: dict[str, str] = {}
    for line in source("src/llama-arch.cpp"):
        for enum, name in NAME_ENTRY.findall(line):
            if enum.startswith(f"LLM_{kind}_") and _is_ahn(enum, name):
                assert enum not in out, f"{enum} named twice"
                out[enum] = name
    assert out, f"no AHN LLM_{kind}_* names found in the patches: has the declaration form changed?"
    return out


def declared_enums(kind: str) -> set[str]:
    """The AHN values the series adds to the llm_arch / llm_kv / llm_tensor enums (llama-arch.h)."""
    decl = re.compile(rf"^\s*(LLM_{kind}_\w*AHN\w*)\s*,")
    return {m.group(1) for line in source("src/llama-arch.h") if (m := decl.match(line))}


def _function_body(lines: tuple[str, ...], name: str) -> list[str]:
    """The lines of the definition `... ::name(...) {` up to its closing brace."""
    start = next((i for i, line in enumerate(lines) if re.search(rf"::{name}\s*\(.*\)\s*\{{\s*$", line)), None)
    assert start is not None, f"no definition of {name} in the patches"
    depth, body = 0, []
    for line in lines[start:]:
        body.append(line)
        depth += line.count("{") - line.count("}")
        if depth == 0:
            return body
    pytest.fail(f"{name}: no closing brace")


AHN_BASE = "src/models/ahn-base.cpp"
TN = re.compile(r'\btn\(\s*(LLM_TENSOR_\w+)\s*,\s*(?:"([^"]+)"\s*,\s*)?\w+\s*\)')


@cache
def variant_enums() -> dict[str, str]:
    """variant name (the string of {arch}.ahn.variant) -> GGML_AHN_VARIANT_*, from load_ahn_hparams."""
    body = "\n".join(_function_body(source(AHN_BASE), "load_ahn_hparams"))
    found = re.findall(r'variant\s*==\s*"(\w+)"\s*\)\s*\{\s*hparams\.ahn_variant\s*=\s*(GGML_AHN_VARIANT_\w+)\s*;', body)
    assert found, "load_ahn_hparams: no `variant == \"...\"` mapping found"
    out = dict(found)
    assert len(out) == len(found), f"a variant name mapped twice: {found}"
    return out


def enum_values(lines: Iterable[str], prefix: str) -> dict[str, int]:
    return {m.group(1): int(m.group(2)) for line in lines if (m := re.match(rf"^\s*({prefix}\w+)\s*=\s*(\d+)\s*,", line))}


@cache
def loaded_tensors() -> dict[str, set[str]]:
    """variant name -> the GGUF tensor names create_ahn_tensors loads for it ("{bid}" = layer)."""
    bases = name_table("TENSOR")
    enum_to_variant = {e: v for v, e in variant_enums().items()}
    per_case: dict[str | None, set[str]] = {}
    case, depth, switch_depth = None, 0, None
    for line in _function_body(source(AHN_BASE), "create_ahn_tensors"):
        if re.search(r"\bswitch\s*\(", line):
            switch_depth = depth
        if m := re.search(r"\bcase\s+(\w+)\s*:", line):
            case = m.group(1)
        elif re.search(r"\bdefault\s*:", line):
            case = "default"
        for enum, suffix in TN.findall(line):
            assert enum in bases, f"create_ahn_tensors loads {enum}, which has no name in LLM_TENSOR_NAMES"
            name = bases[enum].replace("%d", "{bid}") + (f".{suffix}" if suffix else "")
            per_case.setdefault(case, set()).add(name)
        depth += line.count("{") - line.count("}")
        if switch_depth is not None and depth <= switch_depth and "}" in line:
            case, switch_depth = None, None     # the switch ended: what follows is for every variant
    assert "default" not in per_case, f"create_ahn_tensors loads tensors for no known variant: {per_case['default']}"
    common = per_case.pop(None, set())
    unknown = set(per_case) - set(enum_to_variant)
    assert not unknown, f"create_ahn_tensors has cases for variants load_ahn_hparams never sets: {unknown}"
    return {enum_to_variant[e]: per_case.get(e, set()) | common for e in enum_to_variant}


# --- names ---------------------------------------------------------------------------------------------

def python_keys() -> dict[str, str]:
    return {k: v for k, v in vars(C).items() if k.startswith("KEY_") and isinstance(v, str)}


def test_the_series_is_read():
    """The reader sees the files the checks below depend on (a moved file fails here, by name)."""
    for path in ("src/llama-arch.cpp", "src/llama-arch.h", "src/llama-hparams.h", AHN_BASE, "ggml/include/ggml.h"):
        assert source(path), path
    assert any(line.startswith("void llama_model_ahn_base::create_ahn_tensors") for line in source(AHN_BASE))


def test_architecture_names():
    archs = name_table("ARCH")
    assert set(archs.values()) == set(C.ARCH_FOR_BASE.values()), (
        f"AHN architectures: patches {sorted(archs.values())}, constants.ARCH_FOR_BASE {sorted(C.ARCH_FOR_BASE.values())}")
    # LLM_ARCH_<BASE>_AHN is the AHN architecture of the base LLM_ARCH_<BASE>, the base of BASE_FOR_ARCH
    for enum, name in archs.items():
        m = re.fullmatch(r"LLM_ARCH_(\w+)_AHN", enum)
        assert m, f"{enum}: not of the form LLM_ARCH_<BASE>_AHN"
        assert C.BASE_FOR_ARCH[name] == m.group(1).lower(), f"{name} ({enum}) vs BASE_FOR_ARCH[{name!r}]"
    assert C.ARCH_SIDECAR not in archs.values(), "the sidecar architecture is not a runtime architecture"


def test_gguf_keys():
    keys = {enum: name.replace("%s.", "{arch}.", 1) if name.startswith("%s.") else name
            for enum, name in name_table("KV").items()}
    assert all("%" not in k for k in keys.values()), keys
    py = python_keys()
    # every key the patches name is spelled in constants.py ...
    missing = set(keys.values()) - set(py.values())
    assert not missing, f"GGUF keys in the patches but not in constants.py: {sorted(missing)}"
    # ... and every architecture-scoped key of constants.py (the runtime's) is named by the patches;
    # the others (provenance, sidecar) are the converter's and must not appear there
    py_runtime = {v for v in py.values() if v.startswith("{arch}.")}
    assert py_runtime == set(keys.values()), (
        f"runtime keys: constants.py only {sorted(py_runtime - set(keys.values()))}, "
        f"patches only {sorted(set(keys.values()) - py_runtime)}")


def test_every_key_is_declared_and_read():
    """Each AHN key enum of llama-arch.h has a name, and load_ahn_hparams reads it (get_key / get_arr)."""
    named = set(name_table("KV"))
    assert declared_enums("KV") == named, f"llm_kv {sorted(declared_enums('KV'))} vs LLM_KV_NAMES {sorted(named)}"
    body = "\n".join(_function_body(source(AHN_BASE), "load_ahn_hparams"))
    read = set(re.findall(r"\bget_(?:key|arr|key_or_arr)\s*\(\s*(LLM_KV_\w+)", body))
    assert named <= read, f"AHN keys never read by load_ahn_hparams: {sorted(named - read)}"
    assert declared_enums("ARCH") == set(name_table("ARCH"))
    assert declared_enums("TENSOR") == set(name_table("TENSOR"))


def test_tensor_names_per_variant():
    loaded = loaded_tensors()
    assert set(loaded) == set(C.VARIANTS), f"variants: create_ahn_tensors {sorted(loaded)}, constants {sorted(C.VARIANTS)}"
    for variant in C.VARIANTS:
        py = {t.gguf for t in C.AHN_TENSORS[variant]}
        assert len(py) == len(C.AHN_TENSORS[variant]), f"{variant}: a GGUF name twice in AHN_TENSORS"
        got = loaded[variant]
        assert got == py, (f"{variant} tensors: patches only {sorted(got - py)}, "
                           f"constants.AHN_TENSORS only {sorted(py - got)}")


def test_tensor_base_names():
    """Every AHN base name of LLM_TENSOR_NAMES is some GGUF tensor of constants.py (no unused or
    misspelt entry), every tn(LLM_TENSOR_AHN_*) of the series is inside create_ahn_tensors, and
    every AHN GGUF name is "blk.{bid}.ahn_*", which the quantizer's ".ahn_" rule keeps in F32/F16."""
    py_all = {t.gguf for ts in C.AHN_TENSORS.values() for t in ts}
    for enum, base in name_table("TENSOR").items():
        name = base.replace("%d", "{bid}")
        assert any(g == name or g.startswith(name + ".") for g in py_all), f"{enum} {base!r}: no such tensor in constants.py"
    loaded = set().union(*loaded_tensors().values())
    everywhere = set()
    for line in all_lines():
        for enum, suffix in TN.findall(line):
            if "AHN" in enum:
                base = name_table("TENSOR")[enum].replace("%d", "{bid}")
                everywhere.add(base + (f".{suffix}" if suffix else ""))
    assert everywhere == loaded, f"AHN tensors created outside create_ahn_tensors: {sorted(everywhere - loaded)}"
    assert any('name.find(".ahn_")' in line for line in all_lines()), "the quantizer's .ahn_ rule is gone"
    assert all(g.startswith("blk.{bid}.ahn_") for g in py_all)


def test_variant_names_and_ids():
    names = variant_enums()
    assert set(names) == set(C.VARIANTS), f"variants: patches {sorted(names)}, constants {sorted(C.VARIANTS)}"
    ggml = enum_values(source("ggml/include/ggml.h"), "GGML_AHN_VARIANT_")
    assert set(ggml) == set(names.values()), f"enum ggml_ahn_variant {sorted(ggml)} vs load_ahn_hparams {names}"
    ids = {v: ggml[e] for v, e in names.items()}
    assert ids == C.VARIANT_ID, f"variant ids: patches {ids}, constants.VARIANT_ID {C.VARIANT_ID}"
    native = enum_values((NATIVE / "ahn_memory.h").read_text().splitlines(), "AHN_VARIANT_")
    assert {e.removeprefix("AHN_VARIANT_"): i for e, i in native.items()} == \
           {e.removeprefix("GGML_AHN_VARIANT_"): i for e, i in ggml.items()}, "native/ahn_memory.h vs ggml.h"


# --- epsilons ------------------------------------------------------------------------------------------

FLOAT = r"([0-9]+(?:\.[0-9]*)?(?:[eE][-+]?[0-9]+)?)[fF]?"


def header_defines(path: Path) -> dict[str, float]:
    """`#define NAME <float literal>` and `[static] const[expr] float NAME = <literal>;` of a C header."""
    text = path.read_text()
    out = {m.group(1): float(m.group(2)) for m in re.finditer(rf"^\s*#\s*define\s+(\w+)\s+\(?{FLOAT}\)?\s*$", text, re.M)}
    out.update({m.group(1): float(m.group(2))
                for m in re.finditer(rf"\b(?:constexpr|const)\s+(?:float|double)\s+(\w+)\s*=\s*{FLOAT}\s*;", text)})
    return out


def test_l2_epsilons_match_the_native_header():
    defines = header_defines(NATIVE / "ahn_memory_common.h")
    for name in ("AHN_L2_EPS_DELTA", "AHN_L2_EPS_MAMBA2"):
        assert name in defines, f"native/ahn_memory_common.h no longer defines {name}"
        assert getattr(C, name) == defines[name], f"constants.{name} = {getattr(C, name)!r}, the header's = {defines[name]!r}"
    # the header's other epsilons would need a Python twin too
    assert {n for n in defines if "EPS" in n} == {"AHN_L2_EPS_DELTA", "AHN_L2_EPS_MAMBA2"}


def test_epsilons_of_the_patches():
    """The readout norm's default eps, and the L2-norm eps of the composed graph (LLAMA_AHN_COMPOSED=1:
    build_gdn_l2_norm is fla's x / sqrt(sum x^2 + eps), ggml_l2_norm torch's x / max(||x||, eps))."""
    defaults = [float(m.group(1)) for line in source("src/llama-hparams.h")
                if (m := re.search(rf"\bfloat\s+ahn_norm_eps\s*=\s*{FLOAT}\s*;", line))]
    assert defaults == [C.AHN_NORM_EPS], f"llama_hparams::ahn_norm_eps default {defaults} vs constants.AHN_NORM_EPS"
    text = "\n".join(source(AHN_BASE))
    delta = [float(x) for x in re.findall(rf"\bbuild_gdn_l2_norm\s*\(\s*ctx0\s*,\s*\w+\s*,\s*{FLOAT}\s*\)", text)]
    mamba2 = [float(x) for x in re.findall(rf"\bggml_l2_norm\s*\(\s*ctx0\s*,\s*\w+\s*,\s*{FLOAT}\s*\)", text)]
    assert delta and set(delta) == {C.AHN_L2_EPS_DELTA}, delta
    assert mamba2 and set(mamba2) == {C.AHN_L2_EPS_MAMBA2}, mamba2


PY_DIRS = ("ahn_gguf", "convert")


def test_python_takes_the_epsilons_from_constants():
    """No AHN epsilon spelled as a literal in the package or the converter outside constants.py: an
    L2 norm or RMS norm eps argument, or `+ 1e-6` beside a sum of squares."""
    bad = []
    pattern = re.compile(r"(\beps\s*=\s*1e-|normalize\([^)]*\beps\s*=\s*[0-9]|sum\([^)]*\)\s*\+\s*1e-)")
    for d in PY_DIRS:
        for path in sorted((ROOT / d).rglob("*.py")):
            if path == ROOT / "ahn_gguf" / "constants.py":
                continue
            for n, line in enumerate(path.read_text().splitlines(), 1):
                if pattern.search(line):
                    bad.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not bad, "epsilon literals (use ahn_gguf.constants):\n" + "\n".join(bad)
