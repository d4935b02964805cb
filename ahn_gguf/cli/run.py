"""`ahn-gguf run`: one long-context generation, with the memory the AHN used.

Without arguments it runs the embedded default model (SmolLM2-135M-Instruct + a distilled
AHN-GDN) on the bundled demo document, far longer than the window, and asks a question about
it: the tokens that left the window are only in the AHN's memory.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ahn_gguf.default_model import DATA_DIR
from ahn_gguf.errors import MissingFileError, UsageError

from .model_args import add_model_arguments

DEMO_DOCUMENT = DATA_DIR / "demo-document.txt"
DEMO_QUESTION = "In two sentences: what is this document about, and what does it say at its very beginning?"


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description=(
            "Generate a reply to a prompt (optionally after a long document) with an AHN GGUF, "
            "streaming tokens, then print speed and the memory by part (window K/V, sinks, gate "
            "cache, recurrent state). Default model: the embedded SmolLM2-135M-Instruct + AHN-GDN; "
            "'qwen2.5-coder-0.5b' names the embedded Qwen2.5-Coder-0.5B-Instruct (Q4_K_M) + AHN-GDN."
        ),
        epilog=(
            "examples:\n"
            "  ahn-gguf run                                  # demo: long document + question\n"
            "  ahn-gguf run model.gguf -p 'Tell me a story' --max-tokens 200\n"
            "  ahn-gguf run qwen2.5-coder-0.5b --file module.py -p 'Which functions does it define?'\n"
            "  ahn-gguf run model.gguf --file book.txt -p 'Summarise the book.' --window 1024 --sinks 64\n"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p, n_ctx=32768, n_ctx_help="position limit")
    p.add_argument("-p", "--prompt", help="the question or instruction (default: a question about the document)")
    p.add_argument("--file", type=Path, help="a text document to read before the prompt (default: the bundled demo document when no prompt is given)")
    p.add_argument("--max-tokens", type=int, default=128, help="tokens to generate (default: %(default)s)")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--raw", action="store_true", help="plain completion instead of the model's chat template")
    p.set_defaults(func=main)


def main(args) -> int:
    from ahn_gguf.runtime import Llama

    document = None
    if args.file is not None:
        if not args.file.is_file():
            raise MissingFileError(f"--file: no such file: {args.file}")
        document = args.file.read_text(errors="replace")
    elif args.prompt is None:
        document = DEMO_DOCUMENT.read_text()
    question = args.prompt or DEMO_QUESTION

    llm = Llama(
        args.model,
        ahn_window=args.window,
        ahn_sinks=args.sinks,
        ahn_memory_type=args.memory_type,
        n_ctx=args.n_ctx,
        n_batch=512,
        n_threads=args.threads,
        n_threads_batch=args.threads,
        n_gpu_layers=args.n_gpu_layers,
        seed=args.seed,
        verbose=False,
    )
    content = f"{document.strip()}\n\n{question}" if document else question
    if args.raw:
        prompt_tokens = llm.tokenize(content.encode(), add_bos=True)
    else:
        # the model's own chat template (from the GGUF), as llama-cpp-python applies it
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = llm.metadata.get("tokenizer.chat_template")
        if template is None:
            raise UsageError("the model has no chat template; use --raw")
        eos = llm.detokenize([llm.token_eos()]).decode(errors="ignore")
        bos = llm.detokenize([llm.token_bos()]).decode(errors="ignore")
        fmt = Jinja2ChatFormatter(template, eos_token=eos, bos_token=bos)
        rendered = fmt(messages=[{"role": "user", "content": content}]).prompt
        prompt_tokens = llm.tokenize(rendered.encode(), add_bos=False, special=True)

    if len(prompt_tokens) + args.max_tokens > args.n_ctx:
        raise UsageError(f"prompt ({len(prompt_tokens)} tokens) + --max-tokens exceed --n-ctx {args.n_ctx}")

    print(f"model: {llm.model_path}")
    if llm.has_ahn:
        print(f"AHN: {llm.ahn_variant}, window {llm.ahn_window}, sinks {llm.ahn_sinks}, {llm.ahn_memory_type.upper()} "
              f"memory; prompt {len(prompt_tokens)} tokens")
    print("-" * 72)

    t0 = time.perf_counter()
    n_gen = 0
    t_first = None
    for tok in llm.generate(prompt_tokens, temp=args.temp, top_k=1 if args.temp == 0 else 40, reset=True):
        if t_first is None:
            t_first = time.perf_counter()
        if llm.token_eos() == tok or n_gen >= args.max_tokens:
            break
        sys.stdout.write(llm.detokenize([tok]).decode(errors="ignore"))
        sys.stdout.flush()
        n_gen += 1
    t1 = time.perf_counter()
    print("\n" + "-" * 72)

    prefill_s = (t_first or t1) - t0
    decode_s = t1 - (t_first or t1)
    print(f"prefill: {len(prompt_tokens)} tokens in {prefill_s:.2f} s ({len(prompt_tokens) / max(prefill_s, 1e-9):.1f} tok/s)")
    if n_gen > 1:
        print(f"decode:  {n_gen} tokens in {decode_s:.2f} s ({(n_gen - 1) / max(decode_s, 1e-9):.1f} tok/s)")
    mem = llm.ahn_memory()
    if mem is not None:
        print(f"memory:  {mem.describe()} for {llm.n_tokens} tokens of context")
    return 0
