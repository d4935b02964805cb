"""`ahn-gguf chat`: an interactive terminal chat with an AHN model.

Each turn only the new tokens are evaluated: the conversation is a growing token transcript,
and a turn appends the text that the chat template adds for it (end of the previous reply,
the user's message, the start of the reply). Nothing is re-tokenized or re-evaluated, and
the AHN memory carries whatever has left the window. Commands: /reset, /save FILE,
/load FILE, /status, /help, /quit.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from ahn_gguf.errors import AHNError
from ahn_gguf.session import SessionFileError, load_session, save_session

from .model_args import add_model_arguments

HELP = """commands:
  /reset        forget the conversation (and the AHN memory)
  /save FILE    save the session (conversation and model state) to FILE
  /load FILE    load a session saved with /save (same model file and window)
  /status       show the context position and the memory by part
  /help         this help
  /quit         leave (Ctrl-D too)"""


# a saved session that cannot be loaded into this chat (kept as the chat's name for it)
ChatStateError = SessionFileError


@dataclass
class ChatSession:
    """A conversation over one llama context: messages, the text fed so far, eval counters."""

    llm: object
    system: str | None = None
    messages: list = field(default_factory=list)
    fed_text: str = ""            # the rendered conversation as fed to the model so far
    last_prompt_tokens: int = 0   # prompt tokens evaluated for the last turn

    def __post_init__(self):
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        template = self.llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise AHNError("the model has no chat template (tokenizer.chat_template)")
        tok = lambda t: self.llm.detokenize([t], special=True).decode(errors="ignore")  # noqa: E731
        self._fmt = Jinja2ChatFormatter(template, eos_token=tok(self.llm.token_eos()), bos_token=tok(self.llm.token_bos()))

    def _render(self, messages) -> str:
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + messages
        return self._fmt(messages=msgs).prompt

    def reset(self) -> None:
        self.messages.clear()
        self.fed_text = ""
        self.llm.reset()

    def turn(self, user_text: str, max_tokens: int, temp: float, out) -> str:
        """Add a user message, stream the reply to `out`, return it."""
        messages = self.messages + [{"role": "user", "content": user_text}]
        rendered = self._render(messages)
        if rendered.startswith(self.fed_text):
            delta_text = rendered[len(self.fed_text):]
            tokens = list(self.llm._input_ids) if self.fed_text else []
        else:
            # the template rewrote earlier turns: the memory cannot be rolled back, start over
            self.llm.reset()
            delta_text, tokens = rendered, []
        new = self.llm.tokenize(delta_text.encode(), add_bos=not tokens, special=True)
        tokens = tokens + new
        if len(tokens) + max_tokens > self.llm.n_ctx():
            raise AHNError(f"the conversation ({len(tokens)} tokens) + {max_tokens} would pass n_ctx = {self.llm.n_ctx()}; /reset or raise --n-ctx")

        n_before = self.llm.n_tokens
        self.last_prompt_tokens = len(tokens) - n_before
        reply_tokens = []
        import llama_cpp

        # generate() reuses the evaluated prefix (our transcript) and evaluates only the new tokens
        for t in self.llm.generate(tokens, temp=temp, top_k=1 if temp == 0 else 40, reset=True):
            if llama_cpp.llama_vocab_is_eog(self.llm._model.vocab, t) or len(reply_tokens) >= max_tokens:
                break
            reply_tokens.append(t)
            out.write(self.llm.detokenize([t]).decode(errors="ignore"))
            out.flush()
        reply = self.llm.detokenize(reply_tokens).decode(errors="ignore")
        self.messages = messages + [{"role": "assistant", "content": reply}]
        self.fed_text = rendered + reply
        return reply

    def status(self) -> str:
        line = f"[position {self.llm.n_tokens}/{self.llm.n_ctx()}, last turn evaluated {self.last_prompt_tokens} prompt tokens"
        mem = self.llm.ahn_memory()
        if mem is not None:
            line += f"; memory: {mem.describe()}"
        return line + "]"

    def save(self, path: Path) -> None:
        save_session(self.llm, path, {"chat": {"system": self.system, "messages": self.messages, "fed_text": self.fed_text}})

    def load(self, path: Path) -> None:
        app = load_session(self.llm, path)   # checks magic, version, model and AHN settings first
        chat = app.get("chat")
        if not (isinstance(chat, dict) and isinstance(chat.get("messages"), list) and isinstance(chat.get("fed_text"), str)
                and all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in chat["messages"])
                and (chat.get("system") is None or isinstance(chat["system"], str))):
            self.llm.reset()
            raise ChatStateError(f"{path} is a session file, but not of `ahn-gguf chat` (no conversation in it)")
        self.system = chat.get("system")
        self.messages = chat["messages"]
        self.fed_text = chat["fed_text"]


def register(sub, name: str, help_text: str) -> None:
    p = sub.add_parser(
        name,
        help=help_text,
        description="Chat in the terminal with an AHN model; each turn evaluates only its new tokens.\n\n" + HELP,
        epilog="examples:\n  ahn-gguf chat\n  ahn-gguf chat qwen2.5-coder-0.5b\n"
               "  ahn-gguf chat model.gguf --window 2048 --sinks 64 --threads 4",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_model_arguments(p, n_ctx=65536, n_ctx_help="position limit of the conversation")
    p.add_argument("--max-tokens", type=int, default=256, help="longest reply (default: %(default)s)")
    p.add_argument("--temp", type=float, default=0.0, help="sampling temperature; 0 = greedy (default)")
    p.add_argument("--system", help="system prompt")
    p.set_defaults(func=main)


def main(args) -> int:
    from ahn_gguf.runtime import Llama

    llm = Llama(args.model, ahn_window=args.window, ahn_sinks=args.sinks, ahn_memory_type=args.memory_type,
                n_ctx=args.n_ctx, n_batch=512,
                n_threads=args.threads, n_threads_batch=args.threads, n_gpu_layers=args.n_gpu_layers, verbose=False)
    chat = ChatSession(llm, system=args.system)
    print(f"ahn-gguf chat: {llm.model_path}")
    if llm.has_ahn:
        print(f"AHN {llm.ahn_variant}: window {llm.ahn_window}, sinks {llm.ahn_sinks}. Type /help for commands.")
    while True:
        try:
            line = input("> ")
        except EOFError:
            print()
            return 0
        except KeyboardInterrupt:
            print()
            continue
        text = line.strip()
        if not text:
            continue
        try:
            if text.startswith("/"):
                cmd, _, arg = text.partition(" ")
                arg = arg.strip()
                if cmd in ("/quit", "/exit"):
                    return 0
                elif cmd == "/help":
                    print(HELP)
                elif cmd == "/reset":
                    chat.reset()
                    print("[conversation and memory cleared]")
                elif cmd == "/status":
                    print(chat.status())
                elif cmd == "/save":
                    if not arg:
                        raise AHNError("usage: /save FILE")
                    chat.save(Path(arg))
                    print(f"[saved to {arg}]")
                elif cmd == "/load":
                    if not arg:
                        raise AHNError("usage: /load FILE")
                    chat.load(Path(arg))
                    print(f"[loaded {arg}: {len(chat.messages)} messages, position {llm.n_tokens}]")
                else:
                    raise AHNError(f"unknown command {cmd}; /help lists them")
                continue
            t0 = time.perf_counter()
            chat.turn(text, args.max_tokens, args.temp, sys.stdout)
            dt = time.perf_counter() - t0
            print()
            print(chat.status()[:-1] + f", {dt:.1f} s]")
        except AHNError as e:
            print(f"error: {e}")
        except KeyboardInterrupt:
            print("\n[interrupted]")
