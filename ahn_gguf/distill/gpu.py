"""Distillation on a GPU machine that has PyTorch but no network, and receives at most 64 MiB per call.

Minutes of an H200 are worth days of a 2-core CPU (a SmolLM2 step of 2,048 tokens takes ~60 s
here), but such a machine cannot download the base model or the training text, and each call
carries at most 64 MiB. So the run is prepared here and replayed there, in two halves:

`python -m ahn_gguf.distill.gpu pack DIR` (here): writes DIR/manifest.json and the pieces:
- base.gguf.partNN: the base's quantized GGUF (`--base`: smollm2, the SmolLM2-135M-Instruct Q4_1,
  98 MB, 3 pieces; or qwen2.5-coder-0.5b, the Qwen2.5-Coder-0.5B-Instruct Q4_K_M, 491 MB, 9 calls
  with --piece-mib 56)
  cut into pieces of at most --piece-mib MiB (default 40): the base is dequantized there exactly as
  here (the base module's write_hf_dir), so the AHN is trained against the same float32 weights;
- inputs.tar: the pinned gguf-py (the dequantizer's GGUF reader, from the llama-cpp-python sdist)
  and the training text: the sources' Debian packages (ahn_gguf.data.SOURCES, sha256-pinned), or
  a folder's text files;
- manifest.json: every piece's sha256 and size, the GGUF's sha256, and `calls`: which pieces to
  carry in which call so that no call carries more than the limit.

`python -m ahn_gguf.distill.gpu run --pack DIR --work WORK --out OUT --minutes M -- DISTILL ARGS`
(there, on every call, the same command; only what is carried differs):
1. stages the pieces found in DIR into WORK/pieces (sha256-checked; WORK is outside the checkout,
   so it survives between the calls of a warm machine) and stops if some are still missing;
2. once all are there: assembles and checks the GGUF, unpacks inputs.tar, writes the base folder;
3. trains (`ahn-gguf distill` options after `--`; default --device cuda --bf16) for at most M
   minutes, continuing WORK/run when it holds a checkpoint (or --resume-from DIR, a run folder
   brought back from an earlier machine), then checkpoints;
4. copies the run folder (AHN in the released layout, training-log.json, checkpoint/state.pt) to
   OUT/run: carried back, `ahn-gguf distill ... --resume` continues it here, or the next GPU call
   continues it there.

tests/quality/test_distill_gpu.py runs both halves on the CPU (--device cpu, a small text folder).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

from ahn_gguf.atomic import atomic_output, write_bytes
from ahn_gguf.build.pins import sha256_file
from ahn_gguf.errors import AHNError

MANIFEST = "manifest.json"
GGUF_PIECE = "base.gguf.part{:02d}"
INPUTS = "inputs.tar"
CARRY_LIMIT_MIB = 64
# the named bases a pack can carry (trainer.NAMED_BASES' canonical names): each one's module has its pinned
# gguf_path() and write_hf_dir(src, target)
BASES = ("smollm2", "qwen2.5-coder-0.5b")


class GPUPackError(AHNError, RuntimeError):
    """The pack is incomplete, corrupted, or not what the run asks for."""


# --- here: the pack -------------------------------------------------------------------------------

def base_module(name: str):
    """The module of a named base (BASES)."""
    import importlib

    from .trainer import NAMED_BASES

    if name not in BASES:
        raise GPUPackError(f"base {name!r}: a pack carries one of {', '.join(BASES)}")
    return importlib.import_module(f"ahn_gguf.{NAMED_BASES[name][0]}")


def make_pack(out: Path, data: str | None = None, piece_mib: int = 40, base: str = "smollm2") -> dict:
    """Write the pack (see the module docstring) and return its manifest."""
    from ahn_gguf import data as D
    from ahn_gguf.build.pins import extract_member

    module = base_module(base)
    if not 1 <= piece_mib <= CARRY_LIMIT_MIB - 8:
        raise GPUPackError(f"--piece-mib {piece_mib}: pieces must leave room under the {CARRY_LIMIT_MIB} MiB a call carries")
    out.mkdir(parents=True, exist_ok=True)
    gguf = module.gguf_path()
    piece = piece_mib << 20
    pieces = []
    with open(gguf, "rb") as f:
        while chunk := f.read(piece):
            name = GGUF_PIECE.format(len(pieces))
            write_bytes(out / name, chunk)
            pieces.append(name)

    names = D.source_names(data or D.TRAIN_MIXTURE)
    spec = []
    with atomic_output(out / INPUTS) as tmp, tarfile.open(tmp, "w") as tar:
        tar.add(extract_member("vendor/llama.cpp/gguf-py"), arcname="gguf-py")
        for name in names:
            if name in D.SOURCES:
                deb = D.fetch_deb(D.SOURCES[name])
                tar.add(deb, arcname=f"debian/{deb.name}")
                spec.append(name)
            else:
                folder = Path(name)
                if not folder.is_dir():
                    raise GPUPackError(f"{name}: not a source of ahn_gguf.data.SOURCES nor a folder")
                arc = f"text/{len(spec)}-{folder.name}"
                for doc in sorted(folder.rglob("*")):
                    if doc.is_file() and doc.name.endswith(D.TEXT_SUFFIXES):
                        tar.add(doc, arcname=f"{arc}/{doc.relative_to(folder).as_posix()}")
                spec.append("@" + arc)   # a folder: found under WORK/inputs there

    files = {n: {"bytes": (out / n).stat().st_size, "sha256": sha256_file(out / n)} for n in [*pieces, INPUTS]}
    calls, current, size = [], [], 0
    for n in [*pieces, INPUTS]:
        if current and size + files[n]["bytes"] > (CARRY_LIMIT_MIB - 4) << 20:
            calls.append(current)
            current, size = [], 0
        current.append(n)
        size += files[n]["bytes"]
    calls.append(current)
    manifest = {"base": base, "gguf": gguf.name, "gguf_sha256": sha256_file(gguf), "gguf_pieces": pieces,
                "files": files, "data": ",".join(spec), "calls": calls,
                "made": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_bytes(out / MANIFEST, json.dumps(manifest, indent=1).encode())
    return manifest


# --- there: staging, assembly, the run ----------------------------------------------------------------

def stage(pack: Path, work: Path) -> tuple[dict, list[str]]:
    """Copy the pieces present in `pack` into WORK/pieces (checked); return (manifest, missing pieces)."""
    mpath = pack / MANIFEST
    staged_manifest = work / "pieces" / MANIFEST
    if mpath.is_file():
        manifest = json.loads(mpath.read_text())
    elif staged_manifest.is_file():
        manifest = json.loads(staged_manifest.read_text())
    else:
        raise GPUPackError(f"no {MANIFEST} in {pack} nor in {work / 'pieces'}: carry the pack's manifest")
    (work / "pieces").mkdir(parents=True, exist_ok=True)
    if mpath.is_file():
        shutil.copyfile(mpath, staged_manifest)
    missing = []
    for name, info in manifest["files"].items():
        dest = work / "pieces" / name
        if dest.is_file() and sha256_file(dest) == info["sha256"]:   # staged by an earlier call
            continue
        src = pack / name
        if not src.is_file():
            missing.append(name)
            continue
        digest = sha256_file(src)
        if digest != info["sha256"]:
            raise GPUPackError(f"{src}: sha256 {digest} is not the manifest's {info['sha256']} (a damaged piece)")
        with atomic_output(dest) as tmp:
            shutil.copyfile(src, tmp)
    return manifest, missing


def assemble(manifest: dict, work: Path) -> tuple[Path, str]:
    """(the base folder, the data spec with folders resolved) from a complete WORK/pieces. Idempotent."""
    from ahn_gguf.gguf_io.to_hf import PROVENANCE_FILE

    module = base_module(manifest.get("base", "smollm2"))   # packs made before --base carried SmolLM2
    pieces = work / "pieces"
    gguf = work / manifest["gguf"]
    if not gguf.is_file() or sha256_file(gguf) != manifest["gguf_sha256"]:
        with atomic_output(gguf) as tmp:
            with open(tmp, "wb") as f:
                for name in manifest["gguf_pieces"]:
                    f.write((pieces / name).read_bytes())
            if sha256_file(tmp) != manifest["gguf_sha256"]:
                raise GPUPackError(f"the assembled {manifest['gguf']} does not have the manifest's sha256")
    inputs = work / "inputs"
    if not (inputs / ".complete").is_file():
        shutil.rmtree(inputs, ignore_errors=True)
        with tarfile.open(pieces / INPUTS) as tar:
            tar.extractall(inputs, filter="data")
        (inputs / ".complete").write_text("")
    os.environ["AHN_GGUF_GGUF_PY"] = str(inputs / "gguf-py")        # the pinned gguf-py, no sdist download
    os.environ["AHN_GGUF_CACHE"] = str(work / "cache")              # the .debs found where data.py looks
    debs = work / "cache" / "debian"
    debs.mkdir(parents=True, exist_ok=True)
    for deb in (inputs / "debian").glob("*.deb") if (inputs / "debian").is_dir() else ():
        if not (debs / deb.name).is_file():
            shutil.copyfile(deb, debs / deb.name)
    base = work / "base"
    if not (base / PROVENANCE_FILE).is_file():
        module.write_hf_dir(gguf, base)
    spec = ",".join(str(inputs / s[1:]) if s.startswith("@") else s for s in manifest["data"].split(","))
    return base, spec


def run(args) -> int:
    work, out = Path(args.work).expanduser(), Path(args.out)
    manifest, missing = stage(Path(args.pack), work)
    if missing:
        print(f"staged in {work / 'pieces'}; still missing {', '.join(missing)}: carry them in the next call "
              f"(manifest 'calls': {manifest['calls']})", flush=True)
        return 0
    t0 = time.time()
    base, data_spec = assemble(manifest, work)
    print(f"assembled in {time.time() - t0:.0f} s: base {base}, data {data_spec}", flush=True)

    from .cli import config_from_args, register
    from .trainer import Distiller, tune_cpu_runtime

    parser = argparse.ArgumentParser(prog="distill")
    register(parser.add_subparsers(), "distill", "")
    dargs = parser.parse_args(["distill", str(base), "-o", str(work / "run"), "--data", data_spec,
                               "--device", args.device, *(["--bf16"] if args.bf16 else []), "--no-progress",
                               *args.distill])
    if args.resume_from:
        _take_resume(Path(args.resume_from), work / "run")
    resume = (work / "run" / "checkpoint" / "state.pt").is_file()
    cfg = config_from_args(dargs)
    tune_cpu_runtime(cfg.threads)
    distiller = Distiller(cfg, resume=resume, command=["python -m ahn_gguf.distill.gpu run", *sys.argv[1:]])
    log = distiller.run(max_seconds=args.minutes * 60)
    last = log.records[-1] if log.records else {}
    print(f"step {distiller.step}/{cfg.steps}, loss {last.get('loss', float('nan')):.5f}, "
          f"validation {log.validation[-1]['loss'] if log.validation else float('nan'):.5f}, "
          f"{log.status}, {time.time() - t0:.0f} s", flush=True)
    shutil.rmtree(out / "run", ignore_errors=True)
    shutil.copytree(work / "run", out / "run")
    return 0


def _take_resume(src: Path, run_dir: Path) -> None:
    """Continue from a run folder brought back from an earlier machine, unless WORK/run is further on."""
    from .trainer import load_checkpoint_file

    ckpt = src / "checkpoint" / "state.pt"
    if not ckpt.is_file():
        raise GPUPackError(f"--resume-from {src}: no checkpoint/state.pt")
    here = run_dir / "checkpoint" / "state.pt"
    step = lambda p: load_checkpoint_file(p)["step"]  # noqa: E731
    if here.is_file() and step(here) >= step(ckpt):
        return
    shutil.rmtree(run_dir, ignore_errors=True)
    shutil.copytree(src, run_dir)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m ahn_gguf.distill.gpu", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack", help="write the pack (here)")
    a.add_argument("dir", metavar="DIR")
    a.add_argument("--data", default=None, help="training sources (default: ahn_gguf.data.TRAIN_MIXTURE) or a folder")
    a.add_argument("--piece-mib", type=int, default=40, help="largest piece in MiB (default 40)")
    a.add_argument("--base", default="smollm2", choices=sorted(BASES),
                   help="the base to carry (default smollm2; qwen2.5-coder-0.5b takes 9 calls with --piece-mib 56)")
    b = sub.add_parser("run", help="stage, assemble, train for --minutes (there)")
    b.add_argument("--pack", required=True, help="folder with the manifest and the pieces carried in this call")
    b.add_argument("--work", default="~/ahn-distill-work", help="persistent work folder (default ~/ahn-distill-work)")
    b.add_argument("--out", required=True, help="where the run folder is copied ($OUT)")
    b.add_argument("--minutes", type=float, default=8.0, help="training time of this call (default 8)")
    b.add_argument("--device", default="cuda")
    b.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 base matmuls (default: bf16 autocast)")
    b.add_argument("--resume-from", default=None, metavar="RUN_DIR", help="a run folder brought back from earlier")
    b.add_argument("distill", nargs=argparse.REMAINDER, help="-- then `ahn-gguf distill` options")
    args = p.parse_args(argv)
    try:
        if args.cmd == "pack":
            m = make_pack(Path(args.dir), args.data, args.piece_mib, args.base)
            for i, call in enumerate(m["calls"]):
                mib = sum(m["files"][n]["bytes"] for n in call) / (1 << 20)
                print(f"call {i + 1}: carry {', '.join(call)} ({mib:.1f} MiB) and {MANIFEST}")
            return 0
        if args.distill and args.distill[0] == "--":
            args.distill = args.distill[1:]
        return run(args)
    except (AHNError, OSError, ValueError) as e:
        print(f"ahn_gguf.distill.gpu: error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
