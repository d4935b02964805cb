"""`ahn-gguf convert` and `ahn-gguf attach`.

Kept light at import time (argparse only): `ahn-gguf --help` builds every subcommand's parser.
"""

from __future__ import annotations

import argparse
import logging
import sys

BASE_ID = "Qwen/Qwen2.5-3B-Instruct"
AHN_ID = "ByteDance-Seed/AHN-GDN-for-Qwen-2.5-Instruct-3B"

CONVERT_DESCRIPTION = f"""\
Convert a Hugging Face base model and an AHN checkpoint into one GGUF file for the patched
llama.cpp (architecture qwen2ahn / llamaahn), or an AHN checkpoint alone into a sidecar GGUF.

The base is converted by the pinned llama.cpp's own converter (convert_hf_to_gguf's model
classes: same tensors, tokenizer and chat template as stock llama.cpp); the AHN keys and
tensors are added to it. AHN weights are never quantized: F32 with --outtype f32, F16 otherwise.

BASE and AHN are folders or Hugging Face repo ids (downloaded when the hub is reachable; offline,
download them elsewhere and pass the folders). A merged folder (base + AHN weights in one, as
`ahn-gguf distill` writes) is converted alone.

examples:
  ahn-gguf convert {BASE_ID} {AHN_ID} -o qwen2.5-3b-ahn-gdn-f16.gguf
  ahn-gguf convert {BASE_ID} {AHN_ID} -o qwen2.5-3b-ahn-gdn-q4_k_m.gguf --outtype q4_k_m
  ahn-gguf convert {BASE_ID} {AHN_ID} -o long.gguf --sinks 128 --window 32640
  ahn-gguf convert ./Qwen2.5-3B-Instruct ./AHN-GDN-for-Qwen-2.5-Instruct-3B -o model.gguf
  ahn-gguf convert ./my-merged-model -o model.gguf
  ahn-gguf convert --ahn-only {AHN_ID} -o ahn-gdn-3b.gguf
"""

ATTACH_DESCRIPTION = f"""\
Merge an AHN into a Qwen2 or Llama GGUF you already have (any type, quantized ones included):
every base tensor is copied byte for byte, the architecture becomes qwen2ahn / llamaahn, and
the AHN keys and tensors are added (F32 next to an all-F32 base, F16 otherwise).

AHN is a sidecar made by `ahn-gguf convert --ahn-only`, or an AHN checkpoint folder / repo id.
The AHN must have been made for this base (layers, hidden size, heads, head dim are checked).

examples (qwen2.5-3b-instruct-*.gguf: a GGUF of {BASE_ID}, e.g. made by llama.cpp's
convert_hf_to_gguf.py and llama-quantize, or downloaded):
  ahn-gguf convert --ahn-only {AHN_ID} -o ahn-gdn-3b.gguf
  ahn-gguf attach qwen2.5-3b-instruct-q4_k_m.gguf ahn-gdn-3b.gguf -o qwen2.5-3b-ahn-gdn-q4_k_m.gguf
  ahn-gguf attach qwen2.5-3b-instruct-q8_0.gguf {AHN_ID} -o qwen2.5-3b-ahn-gdn-q8_0.gguf
"""


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", required=True, metavar="OUT.gguf", help="the GGUF file to write")
    p.add_argument("--window", type=_int, metavar="W",
                   help="default sliding window W recorded in the file, sinks excluded (default: the AHN "
                        "config's sliding_window, a training value; the paper uses 32640 for long context). "
                        "Can be overridden at load time")
    p.add_argument("--sinks", type=_int, metavar="S",
                   help="default number of attention-sink tokens S recorded in the file (default: the AHN "
                        "config's num_attn_sinks, else 0; the paper uses 128)")
    p.add_argument("--memory-type", choices=("f32", "f16"), default=None,
                   help="how the runtime stores the AHN's recurrent states and write gates, recorded in the file "
                        "({arch}.ahn.memory_type; default: not recorded, f32; f16 halves their bytes). Can be "
                        "overridden at load time")
    p.add_argument("--force", action="store_true", help="overwrite OUT if it exists")
    p.add_argument("--no-progress", action="store_true", help="no progress bar while writing tensors")
    p.add_argument("-v", "--verbose", action="store_true", help="also show the llama.cpp converter's own log")


def register(subparsers, name: str, help_text: str) -> None:
    if name == "convert":
        _register_convert(subparsers, name, help_text)
    elif name == "attach":
        _register_attach(subparsers, name, help_text)
    else:
        raise ValueError(f"ahn_gguf.convert.cli registers 'convert' and 'attach', not {name!r}")


def _register_convert(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=CONVERT_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE",
                   help=f"base model: folder or repo id (e.g. {BASE_ID}); with --ahn-only, the AHN checkpoint")
    p.add_argument("ahn", metavar="AHN", nargs="?",
                   help=f"AHN checkpoint: folder or repo id (e.g. {AHN_ID}); omit for a merged folder")
    p.add_argument("--outtype", metavar="TYPE",
                   help="f32, f16 (default), bf16, q8_0: written directly; q4_k_m, q5_k_m, q6_k, q4_0, iq4_xs, "
                        "... (any llama.cpp quantization type): the base is converted to f16 and quantized "
                        "by llama.cpp's quantizer (needs the patched build: `ahn-gguf build`)")
    p.add_argument("--ahn-only", action="store_true",
                   help="write only the AHN, as a sidecar GGUF for `ahn-gguf attach` (tensors in F32)")
    p.add_argument("--training", metavar="TEXT",
                   help="provenance text stored as ahn.training (default: the source and its training config)")
    p.add_argument("--threads", type=_int, default=0, metavar="N",
                   help="quantizer threads (default: all cores)")
    _add_common(p)
    p.set_defaults(func=_run_convert)


def _register_attach(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=ATTACH_DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base_gguf", metavar="BASE.gguf", help="a Qwen2 or Llama GGUF (f32, f16, bf16, q8_0, k-quants, ...)")
    p.add_argument("ahn", metavar="AHN", help="sidecar GGUF (`ahn-gguf convert --ahn-only`), or AHN checkpoint "
                                              "folder / repo id")
    p.add_argument("--source-base", metavar="TEXT",
                   help="provenance stored as ahn.source.base (default: the base GGUF's file name)")
    _add_common(p)
    p.set_defaults(func=_run_attach)


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("ahn_gguf").setLevel(logging.INFO)
    # llama.cpp's converter logs every tensor and prints the chat template at INFO
    for name in ("hf-to-gguf", "gguf"):
        logging.getLogger(name).setLevel(logging.INFO if verbose else logging.WARNING)


def _run_convert(args) -> int:
    setup_logging(args.verbose)
    from ahn_gguf.errors import ConversionError

    from . import pipeline

    progress = not args.no_progress
    if args.ahn_only:
        if args.ahn is not None:
            raise ConversionError("--ahn-only takes one checkpoint (the AHN), got two; "
                                  "usage: ahn-gguf convert --ahn-only AHN -o ahn.gguf")
        if args.outtype is not None:
            raise ConversionError("--outtype does not apply to --ahn-only: a sidecar stores the AHN in F32 and "
                                  "attach picks the type that matches the base")
        pipeline.convert_ahn_only(args.base, args.output, window=args.window, sinks=args.sinks, force=args.force,
                                  training=args.training, progress=progress, memory_type=args.memory_type)
    else:
        pipeline.convert(args.base, args.ahn, args.output, outtype=args.outtype or "f16", window=args.window,
                         sinks=args.sinks, force=args.force, training=args.training, threads=args.threads,
                         progress=progress, memory_type=args.memory_type)
    return 0


def _run_attach(args) -> int:
    setup_logging(args.verbose)
    from . import pipeline

    pipeline.attach(args.base_gguf, args.ahn, args.output, window=args.window, sinks=args.sinks, force=args.force,
                    source_base=args.source_base, progress=not args.no_progress, memory_type=args.memory_type)
    return 0
