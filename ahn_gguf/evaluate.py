"""`ahn-gguf eval MODEL`: long-context perplexity and retrieval probes, full vs window vs AHN vs the
window the AHN's bytes would buy.

Four attention modes on the same weights, at context lengths from 2W up to the model's limit:

- full:    ordinary causal attention over everything (the teacher of distillation);
- window:  S sinks + the last W tokens only (the AHN's memory switched off);
- ahn:     sinks + window + the AHN memory of every token that left the window;
- matched: S sinks + the last W' tokens, no AHN, where W' = W + floor((state bytes + write-gate
           bytes) / K/V bytes per token): the memory-matched baseline, a window widened by exactly
           the bytes the AHN costs (`matched_window`; the sizes are the runtime's own accounting,
           `Llama.ahn_memory()`, F16 K/V). An AHN is worth its bytes where it beats this one.

Perplexity is taken over the positions beyond the lossless span (query positions t >= S + W,
predicting token t + 1) of held-out documents (ahn_gguf.data: never used in training), the
first C tokens of each document for a context length C. One pass per (document, mode) at the
longest length gives the NLL of every position, hence of every shorter length (causality).
The headline numbers are the share of the window-only -> full-attention perplexity gap that the
AHN closes, (ppl_window - ppl_ahn) / (ppl_window - ppl_full), and its advantage over the
memory-matched window, ppl_matched - ppl_ahn (positive: the AHN is the better use of the bytes).
All modes score the same positions (t >= S + W), so the matched window is compared where the AHN's
window no longer sees everything.

The passkey probe hides "The pass key is NNNNN" at a random depth of 10-50% inside filler text of
C tokens and asks for it at the end; a trial counts when every digit of the key is the argmax
(= greedy decoding) given the ones before; the mean NLL of the digits is reported too.

The code-recall probe (`--recall-trials N`, for code) defines a helper with a random three-word name
(`def amber_orbit_ledger(items): ...`) at a line boundary 10-50% deep into a real held-out file and,
after the rest of the file, calls it with its first word given (`records = amber`): a trial counts
when the rest of the name (`_orbit_ledger`) is greedy-correct. It asks what a coding assistant needs of
a long file: a name defined far back, used at the end.

Engines:
- gguf (default): MODEL is an AHN GGUF run through the patched llama.cpp (`ahn_gguf.Llama`);
  full = `ahn_window` >= the context (exactly full attention), window = the GGUF key
  `{arch}.ahn.memory_enabled` overridden to false, ahn = the defaults. Logits are read batch by
  batch with llama_decode + llama_get_logits_ith, never as one [C, vocab] array.
- reference: MODEL is a Hugging Face base folder (or `smollm2`) and --ahn an AHN folder, run by
  the PyTorch reference (`ahn_gguf.reference`); for cross-checks at small lengths.

Results: a markdown table, JSON and a PNG plot (REPORT.md / .json / .png, default under reports/).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from . import constants as C
from .errors import UsageError
from .reports import save_figure

MODES = ("full", "window", "ahn", "matched")
MODE_LABEL = {"full": "full attention", "window": "sinks + window", "ahn": "sinks + window + AHN",
              "matched": "sinks + window W' (the AHN's bytes as K/V)"}


def matched_window(window: int, sinks: int, kv_bytes_per_token: int, gate_bytes_per_token: int,
                   state_bytes: int) -> int:
    """W' = W + floor((state bytes + write-gate bytes) / K/V bytes per token): the window a model
    without AHN gets for the bytes an AHN context of window W and S sinks holds (its gates are
    cached for each of the S + W live cells). Never more bytes than the AHN's."""
    if kv_bytes_per_token <= 0:
        raise UsageError("K/V bytes per token must be > 0")
    extra = state_bytes + gate_bytes_per_token * (sinks + window)
    return window + extra // kv_bytes_per_token
FILLER = ("The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ")
PASSKEY_INTRO = ("There is an important piece of information hidden inside a lot of irrelevant text. "
                 "Find it and memorize it. I will quiz you about it.\n")


# --- engines ----------------------------------------------------------------------------------------

def log_softmax_rows(logits: np.ndarray) -> np.ndarray:
    x = logits.astype(np.float32, copy=False)
    m = x.max(axis=-1, keepdims=True)
    return x - m - np.log(np.exp(x - m).sum(axis=-1, keepdims=True))


class Engine:
    """Scores token sequences: per-position NLL of the next token and whether it is the argmax."""

    name = "engine"
    window: int
    sinks: int
    n_ctx_train: int
    matched: int | None = None      # W' of mode "matched" (None: unknown, the mode is refused)
    memory: dict | None = None      # the byte sizes W' comes from

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def score(self, ids, mode: str) -> tuple[np.ndarray, np.ndarray]:
        """(nll [n-1], top1 [n-1] bool): for t = 0 .. n-2, -log p(ids[t+1] | ids[:t+1]) and argmax hit."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"engine": self.name, "window": self.window, "sinks": self.sinks, "matched_window": self.matched,
                "memory": self.memory}


class ReferenceEngine(Engine):
    """The PyTorch reference: base folder + AHN folder."""

    name = "reference"

    def __init__(self, base: str | Path, ahn: str | Path | None, *, window: int | None = None,
                 sinks: int | None = None, threads: int = 2, chunk: int = 512, matched: int | None = None):
        import torch

        from .distill.trainer import resolve_base, tune_cpu_runtime
        from .reference import load_reference

        tune_cpu_runtime(threads)
        self.torch = torch
        self.base = resolve_base(str(base))
        self.ahn = ahn
        self.model = load_reference(self.base, ahn, window=window, sinks=sinks).eval()
        cfg = self.model.config
        if cfg.window is None:
            raise UsageError("no window W: pass --window (the model has no AHN config giving one)")
        self.window, self.sinks = cfg.window, cfg.sinks
        self.n_ctx_train = cfg.max_position_embeddings
        self.chunk = chunk
        self.matched = matched   # the reference has no byte accounting: W' is given (--matched-window)
        from .data import load_tokenizer

        self._tok = load_tokenizer(self.base)

    def tokenize(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def score(self, ids, mode: str):
        torch = self.torch
        if mode == "ahn" and not self.model.has_ahn:
            raise UsageError("mode 'ahn' needs an AHN: pass --ahn AHN_DIR")
        window = self.window
        if mode == "matched":
            if self.matched is None:
                raise UsageError("mode 'matched' with the reference engine needs --matched-window W' "
                                 "(the GGUF engine computes it from the runtime's memory accounting)")
            mode, window = "window", self.matched
        x = torch.as_tensor(np.asarray(ids), dtype=torch.long)[None]
        with torch.no_grad():
            h = self.model.hidden_states(x, mode=mode, window=window, sinks=self.sinks)[0, :-1]
            nll, top1 = [], []
            for i in range(0, h.shape[0], self.chunk):
                lp = torch.log_softmax(self.model.logits(h[i:i + self.chunk]).float(), dim=-1)
                tgt = x[0, i + 1:i + 1 + self.chunk]
                nll.append(-lp.gather(-1, tgt[:, None])[:, 0])
                top1.append(lp.argmax(-1) == tgt)
        return torch.cat(nll).numpy().astype(np.float64), torch.cat(top1).numpy()

    def describe(self) -> dict:
        return dict(super().describe(), base=str(self.base), ahn=str(self.ahn))


class GGUFEngine(Engine):
    """An AHN GGUF through the patched llama.cpp (ahn_gguf.Llama), one context per mode."""

    name = "gguf"

    def __init__(self, model_path: str | Path, *, n_ctx: int, window: int | None = None,
                 sinks: int | None = None, threads: int = 2, n_batch: int = 512, memory_type: str | None = None):
        from .gguf_io.check import check_gguf_file

        self.path = str(model_path)
        info = check_gguf_file(self.path)
        if info.arch not in C.BASE_FOR_ARCH:
            raise UsageError(f"{model_path}: architecture {info.arch!r} has no AHN (expected one of "
                             f"{', '.join(C.BASE_FOR_ARCH)}); convert or attach an AHN first")
        self.arch = info.arch
        self.window = window if window is not None else info.ahn_window
        self.sinks = sinks if sinks is not None else info.ahn_sinks
        self.n_ctx, self.threads, self.n_batch = n_ctx, threads, n_batch
        self.memory_type = memory_type   # of the AHN's states and gates (None: what the GGUF records)
        self._mode = None
        self._llm = None
        self.n_ctx_train = None
        self._open("ahn")
        import llama_cpp

        self.n_ctx_train = int(llama_cpp.llama_model_n_ctx_train(self._llm.model))
        mem = self._llm.ahn_memory()
        self.memory = {"kv_bytes_per_token": mem.kv_bytes_per_cell, "gate_bytes_per_token": mem.gate_bytes_per_cell,
                       "state_bytes": mem.state_bytes_per_seq, "kv_type": "f16",
                       "memory_type": self._llm.ahn_memory_type}
        self.matched = matched_window(self.window, self.sinks, mem.kv_bytes_per_cell, mem.gate_bytes_per_cell,
                                      mem.state_bytes_per_seq)

    def _open(self, mode: str):
        if self._mode == mode:
            return self._llm
        from .runtime import Llama

        self._llm = None  # free the previous context first
        kw = dict(n_ctx=self.n_ctx, n_batch=self.n_batch, n_ubatch=self.n_batch, n_threads=self.threads,
                  n_threads_batch=self.threads, logits_all=False, verbose=False)
        if mode == "full":
            kw.update(ahn_window=self.n_ctx, ahn_sinks=0)   # W >= every context: exactly full attention
        elif mode == "matched":                             # the wider window, memory off
            kw.update(ahn_window=min(self.matched, self.n_ctx), ahn_sinks=self.sinks)
            kw["kv_overrides"] = {C.KEY_MEMORY_ENABLED.format(arch=self.arch): False}
        else:
            kw.update(ahn_window=self.window, ahn_sinks=self.sinks)
            if mode == "ahn":
                kw.update(ahn_memory_type=self.memory_type)
            if mode == "window":
                kw["kv_overrides"] = {C.KEY_MEMORY_ENABLED.format(arch=self.arch): False}
        self._llm = Llama(self.path, **kw)
        self._mode = mode
        return self._llm

    def tokenize(self, text: str) -> list[int]:
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def score(self, ids, mode: str):
        import llama_cpp

        llm = self._open(mode)
        ctx = llm.ctx
        ids = [int(t) for t in ids]
        n = len(ids)
        if n > self.n_ctx:
            raise UsageError(f"{n} tokens exceed the context {self.n_ctx}")
        n_vocab = llm.n_vocab()
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        nll = np.empty(n - 1, dtype=np.float64)
        top1 = np.empty(n - 1, dtype=bool)
        try:
            for start in range(0, n - 1, self.n_batch):
                chunk = ids[start:min(n - 1, start + self.n_batch)]   # the last token needs no logits
                batch.n_tokens = len(chunk)
                for i, tok in enumerate(chunk):
                    batch.token[i] = tok
                    batch.pos[i] = start + i
                    batch.n_seq_id[i] = 1
                    batch.seq_id[i][0] = 0
                    batch.logits[i] = 1
                rc = llama_cpp.llama_decode(ctx, batch)
                if rc != 0:
                    raise RuntimeError(f"llama_decode returned {rc} at position {start}")
                rows = np.empty((len(chunk), n_vocab), dtype=np.float32)
                for i in range(len(chunk)):
                    rows[i] = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(ctx, i), shape=(n_vocab,))
                lp = log_softmax_rows(rows)
                tgt = np.asarray(ids[start + 1:start + 1 + len(chunk)])
                nll[start:start + len(chunk)] = -lp[np.arange(len(chunk)), tgt]
                top1[start:start + len(chunk)] = lp.argmax(-1) == tgt
        finally:
            llama_cpp.llama_batch_free(batch)
        return nll, top1

    def describe(self) -> dict:
        return dict(super().describe(), model=self.path, arch=self.arch, n_ctx=self.n_ctx)


# --- the evaluation ---------------------------------------------------------------------------------

def context_lengths(window: int, sinks: int, max_ctx: int) -> list[int]:
    """2W, 4W, 8W, ... below max_ctx, then max_ctx itself."""
    out, c = [], 2 * window
    while c < max_ctx:
        if c > sinks + window + 1:
            out.append(c)
        c *= 2
    out.append(max_ctx)
    return out


@dataclass
class EvalResult:
    engine: dict
    window: int
    sinks: int
    lengths: list
    documents: list
    nll: dict = field(default_factory=dict)        # mode -> {length: mean NLL over scored positions}
    ppl: dict = field(default_factory=dict)        # mode -> {length: exp(mean NLL)}
    positions: dict = field(default_factory=dict)  # length -> positions scored (all documents)
    # mode -> [{"documents": [...], "nll_sum": {length: summed NLL}}]: one block per document measured
    # here; a block of several documents is a pooled earlier result that kept only its means (--reuse)
    document_nll: dict = field(default_factory=dict)
    gap_closed: dict = field(default_factory=dict)  # length -> (ppl_window - ppl_ahn) / (ppl_window - ppl_full)
    matched_window: int | None = None               # W' of mode "matched"
    advantage: dict = field(default_factory=dict)   # length -> ppl_matched - ppl_ahn (> 0: the AHN wins)
    passkey: dict = field(default_factory=dict)    # mode -> {length: {"accuracy", "nll", "trials"}}
    recall: dict = field(default_factory=dict)     # the code-recall probe, as passkey
    seconds: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def passkey_prompt(engine: Engine, length: int, rng: np.random.Generator) -> tuple[list[int], int]:
    """(token ids of exactly `length` tokens ending with the key's digits, number of answer tokens)."""
    key = int(rng.integers(10000, 100000))
    needle = engine.tokenize(f"The pass key is {key}. Remember it. {key} is the pass key.\n")
    intro = engine.tokenize(PASSKEY_INTRO)
    question = engine.tokenize("What is the pass key? The pass key is")
    answer = engine.tokenize(f" {key}")
    filler = engine.tokenize(FILLER)
    n_fill = length - len(intro) - len(needle) - len(question) - len(answer)
    if n_fill < 8:
        raise UsageError(f"context {length} is too short for the passkey prompt")
    reps = filler * (n_fill // len(filler) + 1)
    depth = int(n_fill * rng.uniform(0.1, 0.5))
    ids = intro + reps[:depth] + needle + reps[depth:n_fill] + question + answer
    assert len(ids) == length
    return ids, len(answer)


# identifiers of the code-recall probe: common words, so that the name is ordinary code, but three drawn
# at random, so that it cannot be guessed from the code around it
RECALL_WORDS = ("amber", "anchor", "basin", "beacon", "binder", "bridge", "canyon", "carbon", "cedar", "cipher",
                "comet", "copper", "coral", "delta", "ember", "falcon", "fern", "garnet", "glacier", "harbor",
                "hazel", "indigo", "island", "jasper", "kernel", "lantern", "ledger", "lotus", "magnet", "maple",
                "marble", "meadow", "nectar", "nimbus", "oasis", "orbit", "oyster", "pebble", "pepper", "plume",
                "quartz", "quiver", "raven", "ripple", "saddle", "salmon", "signal", "spruce", "summit", "tandem",
                "thistle", "timber", "tundra", "velvet", "walnut", "willow", "zephyr", "zinc")


def code_recall_prompt(engine: Engine, code: str, length: int, rng: np.random.Generator) -> tuple[list[int], int]:
    """(token ids of exactly `length` tokens, number of answer tokens) for the code-recall probe.

    A helper with a three-word name (`RECALL_WORDS`) is defined at a line boundary at 10-50% depth
    of real code (`code`: a held-out file); the code that follows is the file's own, and at the end a
    comment asks for the helper and the code calls it: `records = <first word>` -- the answer is the
    rest of the name, `_<second>_<third>` (not the call's argument, which the definition does not
    fix). Only a model that still holds the definition can complete it: the two last words are random."""
    words = [str(w) for w in rng.choice(RECALL_WORDS, 3, replace=False)]
    needle = engine.tokenize(f"\n\ndef {'_'.join(words)}(items):\n    \"\"\"Return the items in a stable order.\"\"\"\n"
                             f"    return sorted(items)\n\n")
    question = engine.tokenize(f"\n\n\n# sort the records with the helper defined above\nrecords = {words[0]}")
    answer = engine.tokenize(f"_{words[1]}_{words[2]}")
    n_fill = length - len(needle) - len(question) - len(answer)
    if n_fill < 8:
        raise UsageError(f"context {length} is too short for the code-recall prompt")
    # cut the code at the start of a line near the drawn depth (chars per token of this file)
    chars_per_token = len(code) / max(len(engine.tokenize(code)), 1)
    target = int(n_fill * rng.uniform(0.1, 0.5) * chars_per_token)
    cut = code.find("\n", target)
    if cut < 0:
        raise UsageError(f"the code-recall text is too short for a {length}-token prompt (no line break after the insertion depth)")
    before = engine.tokenize(code[:cut + 1])[:n_fill - 8]
    after = engine.tokenize(code[cut + 1:])
    rest = n_fill - len(before)
    if len(after) < rest:
        raise UsageError(f"the code-recall text is too short for a {length}-token prompt")
    ids = before + needle + after[:rest] + question + answer
    assert len(ids) == length
    return ids, len(answer)


def _probe(engine: Engine, name: str, prompts: dict, modes, trials: int, res: EvalResult, progress: bool) -> dict:
    """Greedy retrieval of the prompts' answers (their last tokens) in every mode: mode -> length -> result."""
    from tqdm import tqdm

    out = {}
    bar = tqdm(total=len(modes) * len(prompts) * trials, desc=name, disable=not progress, file=sys.stderr)
    for m in modes:
        t0 = time.time()
        out[m] = {}
        for c in res.lengths:
            if c not in prompts:
                out[m][c] = None
                continue
            hits, nlls = 0, []
            for ids, n_ans in prompts[c]:
                nll, top1 = engine.score(ids, m)
                hits += int(top1[-n_ans:].all())
                nlls.append(float(nll[-n_ans:].mean()))
                bar.update(1)
            out[m][c] = {"accuracy": hits / trials, "nll": float(np.mean(nlls)), "trials": trials}
        res.seconds[f"{name.replace(' ', '_')}_{m}"] = round(time.time() - t0, 1)
    bar.close()
    return out


def default_modes(engine: Engine) -> tuple[str, ...]:
    """Every mode the engine can run: "matched" needs a known W'."""
    return tuple(m for m in MODES if m != "matched" or engine.matched is not None)


def run_eval(engine: Engine, sequences, *, lengths, modes=None, passkey_trials: int = 3, seed: int = 0,
             progress: bool = True, recall_texts=(), recall_trials: int = 0, perplexity: bool = True,
             known: dict | None = None, probe_modes=None) -> EvalResult:
    """Perplexity beyond the window for every mode and length (default: `default_modes`), the passkey
    probe (`passkey_trials` prompts per length), and the code-recall probe (`recall_trials` prompts per
    length, built from `recall_texts`, real held-out code, taken in turn). `perplexity=False`: the
    probes alone (`sequences` unused). `known` (`reusable_blocks`): mode -> NLL sums measured earlier,
    as blocks of documents; those (mode, document) pairs are not scored again. `probe_modes`: the
    modes the probes run in (default: `modes`)."""
    from tqdm import tqdm

    modes = tuple(modes) if modes else default_modes(engine)
    probe_modes = modes if probe_modes is None else tuple(probe_modes)
    W, S = engine.window, engine.sinks
    first = S + W                                    # first query position scored
    res = EvalResult(engine.describe(), W, S, list(lengths), [p for p, _ in sequences])
    res.matched_window = engine.matched
    max_len = max(lengths)
    for ids in (s for _, s in sequences):
        if len(ids) < max_len:
            raise UsageError(f"a sequence has {len(ids)} tokens, fewer than the longest context {max_len}")
    if perplexity:
        known = known or {}
        docs = res.documents
        if len(set(docs)) != len(docs):
            raise UsageError("two evaluation documents have the same path")
        per_doc = {c: max(0, c - 1 - first) for c in lengths}   # positions t = S+W .. C-2 of every document
        res.positions = {c: per_doc[c] * len(docs) for c in lengths}
        todo = {m: [(p, ids) for p, ids in sequences
                    if not any(p in b["documents"] for b in known.get(m, ()))] for m in modes}
        bar = tqdm(total=sum(len(v) for v in todo.values()), desc="perplexity", disable=not progress,
                   file=sys.stderr)
        for m in modes:
            blocks = [{"documents": list(b["documents"]), "nll_sum": {int(c): float(v) for c, v in b["nll_sum"].items()}}
                      for b in known.get(m, ())]
            t0 = time.time()
            for path, ids in todo[m]:
                nll, _ = engine.score(ids[:max_len], m)   # nll[t]: predicting token t+1 from positions <= t
                sums = {}
                for c in lengths:
                    part = nll[first:c - 1]
                    if len(part) != per_doc[c]:
                        raise RuntimeError(f"{path}: {len(part)} positions scored at C = {c}, expected {per_doc[c]}")
                    sums[c] = float(part.sum())
                blocks.append({"documents": [path], "nll_sum": sums})
                bar.update(1)
            if todo[m]:
                res.seconds[f"perplexity_{m}"] = round(time.time() - t0, 1)
            covered = sorted(p for b in blocks for p in b["documents"])
            if covered != sorted(docs):
                raise UsageError(f"mode {m}: the reused blocks cover {covered}, not the documents {docs}")
            res.document_nll[m] = blocks
            res.nll[m] = {c: sum(b["nll_sum"][c] for b in blocks) / max(res.positions[c], 1) for c in lengths}
            res.ppl[m] = {c: math.exp(v) for c, v in res.nll[m].items()}
        bar.close()
        gap_closed(res)

    if passkey_trials > 0:
        rng = np.random.default_rng(seed)
        prompts = {}
        for c in lengths:
            try:
                prompts[c] = [passkey_prompt(engine, c, rng) for _ in range(passkey_trials)]
            except ValueError:
                res.notes.append(f"passkey: context {c} is too short for the prompt; not probed")
        res.passkey = _probe(engine, "passkey", prompts, probe_modes, passkey_trials, res, progress)
    if recall_trials > 0:
        if not recall_texts:
            raise UsageError("the code-recall probe needs held-out code (recall_texts)")
        rng = np.random.default_rng([seed, 1])
        prompts = {}
        for c in lengths:
            try:
                prompts[c] = [code_recall_prompt(engine, recall_texts[i % len(recall_texts)], c, rng)
                              for i in range(recall_trials)]
            except UsageError as e:
                res.notes.append(f"code recall: context {c}: {e}; not probed")
        res.recall = _probe(engine, "code recall", prompts, probe_modes, recall_trials, res, progress)
    return res


def gap_closed(res: EvalResult) -> None:
    """Fill res.gap_closed (full, window and ahn measured) and res.advantage (ahn and matched measured)."""
    if all(m in res.ppl for m in ("full", "window", "ahn")):
        for c in res.lengths:
            gap = res.ppl["window"][c] - res.ppl["full"][c]
            res.gap_closed[c] = (res.ppl["window"][c] - res.ppl["ahn"][c]) / gap if abs(gap) > 1e-12 else None
    if all(m in res.ppl for m in ("ahn", "matched")):
        res.advantage = {c: res.ppl["matched"][c] - res.ppl["ahn"][c] for c in res.lengths}


def reusable_blocks(previous: dict, *, window: int, sinks: int, lengths, documents, matched_window,
                    measure=()) -> tuple[dict, list[str]]:
    """What an earlier result of the same setting (same W, S, lengths) lends this one: mode -> NLL-sum
    blocks of documents this evaluation also scores, for the modes that do not depend on the AHN
    (full, window; matched when its W' is this model's) and are not in `measure`. Per-document
    sums are taken document by document, so a run over more documents measures only the new ones; a
    result that kept only its means (written before per-document sums) lends one block of all its
    documents, usable when every one of them is scored here. Returns (known, modes lent)."""
    if not (previous["window"] == window and previous["sinks"] == sinks
            and [int(c) for c in previous["lengths"]] == list(lengths)):
        raise UsageError(f"--reuse: the earlier result has W = {previous['window']}, S = {previous['sinks']}, "
                         f"lengths {previous['lengths']}; this one W = {window}, S = {sinks}, lengths {list(lengths)}")
    # the matched window's W' depends on the AHN's bytes (an F16 memory halves them): taken only when equal
    if ("matched" not in measure and "matched" in previous["ppl"]
            and previous.get("matched_window") not in (None, matched_window)):
        raise UsageError(f"--reuse: the earlier result's matched window is W' = {previous.get('matched_window')}, "
                         f"this model's is W' = {matched_window} (another memory type?); measure it here "
                         "(--modes ahn,matched)")
    mine = set(documents)
    known, lent = {}, []
    for m in MODES:
        if m == "ahn" or m in measure or m not in previous["ppl"]:   # only what does not depend on the AHN
            continue
        blocks = previous.get("document_nll", {}).get(m)
        if blocks is None:          # means only: one pooled block of the earlier result's documents
            if not set(previous["documents"]) <= mine:
                raise UsageError(f"--reuse: the earlier result keeps only means over {previous['documents']}, "
                                 f"and this evaluation does not score all of them ({sorted(mine)}); evaluate "
                                 "at least those documents (--docs)")
            blocks = [{"documents": previous["documents"],
                       "nll_sum": {int(c): previous["nll"][m][c] * previous["positions"][c]
                                   for c in previous["nll"][m]}}]
        blocks = [b for b in blocks if set(b["documents"]) <= mine]
        if blocks:
            known[m] = blocks
            lent.append(m)
    return known, lent


def take_probes(res: EvalResult, previous: dict, modes) -> None:
    """Copy the earlier result's probe results of `modes` where this run has the probe but did not
    run it in those modes (they do not depend on the AHN either)."""
    for probe in ("passkey", "recall"):
        table = getattr(res, probe)
        for m in modes:
            if table and m not in table and m in previous.get(probe, {}):
                table[m] = {int(c): v for c, v in previous[probe][m].items()}


# --- reports -------------------------------------------------------------------------------------------

def _fmt(x, nd=3):
    return "n/a" if x is None else f"{x:.{nd}f}"


def _modes(res: EvalResult) -> list[str]:
    """The modes measured, by perplexity or by a probe, in MODES order."""
    return [m for m in MODES if m in res.ppl or m in res.passkey or m in res.recall]


def markdown(res: EvalResult, title: str, extra: list[str] | None = None) -> str:
    modes = _modes(res)
    lines = [f"# {title}", ""]
    lines += extra or []
    scored = (f"perplexity over query positions >= S + W = {res.sinks + res.window} of {len(res.documents)} "
              f"held-out documents (first C tokens of each)" if res.ppl else
              f"probes only (no perplexity pass), built from {len(res.documents)} held-out documents")
    lines += ["", f"Window W = {res.window}, sinks S = {res.sinks}; {scored}.", ""]
    if res.matched_window is not None and "matched" in modes:
        mem = res.engine.get("memory") or {}
        how = (f" = {res.window} + floor(({mem['state_bytes']:,} state bytes + {mem['gate_bytes_per_token']:,} gate bytes "
               f"x {res.sinks + res.window} cells) / {mem['kv_bytes_per_token']:,} K/V bytes per token, "
               f"{mem.get('kv_type', 'f16').upper()} K/V, {mem.get('memory_type', 'f32').upper()} states and gates)"
               if mem else "")
        lines += [f"Memory-matched window: W' = {res.matched_window}{how}: a window-only model given the AHN's "
                  f"bytes. \"AHN - matched\" < 0 means the AHN is the better use of them.", ""]
    head = "| context C | positions scored | " + " | ".join(MODE_LABEL[m] for m in modes)
    if res.gap_closed:
        head += " | gap closed by AHN"
    if res.advantage:
        head += " | AHN - matched"
    head += " |"
    if res.ppl:
        lines += [head, "|" + " --- |" * (2 + len(modes) + bool(res.gap_closed) + bool(res.advantage))]
    for c in (res.lengths if res.ppl else ()):
        row = f"| {c} | {res.positions[c]} | " + " | ".join(_fmt(res.ppl[m][c]) for m in modes)
        if res.gap_closed:
            g = res.gap_closed[c]
            row += " | " + ("n/a" if g is None else f"{100 * g:.1f}%")
        if res.advantage:
            row += f" | {-res.advantage[c]:+.3f}"
        lines.append(row + " |")
    for probe, intro in (("passkey", "Passkey retrieval (key at 10-50% depth; accuracy = all digits "
                                     "greedy-correct; mean NLL of the digits)"),
                         ("recall", "Code recall (a helper with a random three-word name defined at 10-50% depth "
                                    "of held-out code, called at the end with its first word given; accuracy = "
                                    "the rest of its name greedy-correct; mean NLL of those tokens)")):
        table = getattr(res, probe)
        if not table:
            continue
        trials = next((v["trials"] for v in table[modes[0]].values() if v), 0)
        lines += ["", f"{intro}, {trials} prompts per length:", "",
                  "| context C | " + " | ".join(MODE_LABEL[m] for m in modes) + " |",
                  "|" + " --- |" * (1 + len(modes))]
        for c in res.lengths:
            cells = ["n/a" if table[m][c] is None else
                     f"{table[m][c]['accuracy']:.2f} (NLL {table[m][c]['nll']:.2f})" for m in modes]
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    if res.notes:
        lines += [""] + [f"- {n}" for n in res.notes]
    return "\n".join(lines) + "\n"


def plot(res: EvalResult, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = _modes(res)
    probes = [(p, t) for p, t in (("passkey", "passkey retrieval"), ("recall", "code recall")) if getattr(res, p)]
    first = 1 if res.ppl else 0
    n = first + len(probes)
    fig, axes = plt.subplots(1, n, figsize=(6 * n, 4.2), squeeze=False)
    if res.ppl:
        ax = axes[0][0]
        for m in modes:
            ax.plot(res.lengths, [res.ppl[m][c] for c in res.lengths], marker="o", label=MODE_LABEL[m])
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context length C (tokens)")
        ax.set_ylabel(f"perplexity, positions >= S+W = {res.sinks + res.window}")
        ax.set_title("held-out perplexity")
        ax.grid(alpha=0.3)
        ax.legend()
    for i, (probe, name) in enumerate(probes, start=first):
        table = getattr(res, probe)
        ax = axes[0][i]
        for m in modes:
            cs = [c for c in res.lengths if table[m][c] is not None]
            ax.plot(cs, [table[m][c]["accuracy"] for c in cs], marker="o", label=MODE_LABEL[m])
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.05, 1.05)
        ax.set_xlabel("context length C (tokens)")
        ax.set_ylabel(f"{name} accuracy")
        ax.set_title(name)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    save_figure(fig, path)
    plt.close(fig)


def write_report(res: EvalResult, out: Path, title: str, extra: list[str] | None = None) -> dict[str, Path]:
    """OUT.md, OUT.json, OUT.png (OUT: a path without suffix; a .md/.json/.png suffix given is dropped)."""
    from .reports import write_report as write

    out = Path(out)
    stem = out.stem if out.suffix in (".md", ".json", ".png") else out.name

    def plots(d: Path, s: str) -> list[str]:
        plot(res, d / f"{s}.png", title)
        return [f"{s}.png"]

    files = write(out.parent, stem, res.as_dict(),
                  lambda names: markdown(res, title, extra) + "".join(f"\n![plot]({n})\n" for n in names), plots)
    return {"md": files.md, "json": files.json, "png": files.plots[0]}


# --- command line -------------------------------------------------------------------------------------

def heldout_token_sequences(engine: Engine, source: str | None, length: int, max_docs: int | None,
                            texts: list | None = None):
    """The first `length` tokens of each evaluation document of a source (ahn_gguf.data.evaluation_documents:
    the held-out documents of a training source, every long one of an evaluation-only source).
    `texts`, if given, receives the text of each document taken (for the code-recall probe)."""
    from .data import evaluation_documents, load_source, split_documents

    docs, prov = load_source(source)
    eval_only = bool(prov.get("eval_only"))
    out = []
    for doc in evaluation_documents(docs, eval_only):
        ids = engine.tokenize(doc.text)
        if len(ids) >= length:
            out.append((doc.path, ids[:length]))
            if texts is not None:
                texts.append(doc.text)
        if max_docs and len(out) >= max_docs:
            break
    if not out:
        raise UsageError(f"no evaluation document has {length} tokens; lower --max-ctx")
    prov = dict(prov, split=("evaluation-only source: every document >= 32k characters" if eval_only
                             else split_documents(docs).describe()))
    return out, prov


def register(subparsers, name: str, help_text: str) -> None:
    p = subparsers.add_parser(name, help=help_text, description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", metavar="MODEL", help="AHN GGUF or an embedded model's name, 'smollm2' or "
                                                 "'qwen2.5-coder-0.5b' (engine gguf); HF base folder / 'smollm2' "
                                                 "(engine reference)")
    p.add_argument("--engine", choices=("gguf", "reference"), default="gguf")
    p.add_argument("--ahn", metavar="AHN_DIR", help="AHN folder (engine reference)")
    p.add_argument("--window", type=int, help="W (default: the model's)")
    p.add_argument("--sinks", type=int, help="S (default: the model's)")
    p.add_argument("--memory-type", choices=("f32", "f16"), default=None,
                   help="storage of the AHN's states and write gates (engine gguf; default: what the GGUF records, "
                        "f32 unless it says f16, as the embedded default does): f16 halves their bytes, and with "
                        "them the matched window's W'")
    p.add_argument("--max-ctx", type=int, help="longest context (default: the model's training context)")
    p.add_argument("--lengths", help="comma-separated context lengths (default: 2W, 4W, ... max-ctx)")
    p.add_argument("--docs", type=int, default=0, help="at most N held-out documents (default: all)")
    p.add_argument("--data", default=None, help="one source: python3.11-doc (default), python3.11-stdlib, "
                                                "perl-doc, git-doc (ahn_gguf.data.SOURCES), a python3.11-doc .deb, "
                                                "or a text folder")
    p.add_argument("--passkey-trials", type=int, default=3, help="passkey prompts per length (0: none)")
    p.add_argument("--recall-trials", type=int, default=0,
                   help="code-recall prompts per length (default 0: none): a helper with a random three-word "
                        "name defined at 10-50%% depth of a held-out file, called at the end; for code sources "
                        "(python3.11-stdlib or a folder of code)")
    p.add_argument("--no-perplexity", action="store_true",
                   help="the probes alone (--passkey-trials, --recall-trials): no perplexity pass")
    p.add_argument("--modes", default=None, help="comma-separated modes of full,window,ahn,matched "
                                                "(default: all the engine can run)")
    p.add_argument("--matched-window", type=int, default=None, metavar="W'",
                   help="W' of mode matched for --engine reference (the GGUF engine computes it)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="report path without suffix (default reports/eval-<model name>)")
    p.add_argument("--title", default=None)
    p.add_argument("--reuse", metavar="JSON",
                   help="take full / window / matched (those not in --modes) from this earlier result of the same "
                        "W, S and lengths, document by document: only documents it lacks are measured, so "
                        "--docs can grow an evaluation (a result written before per-document sums lends its "
                        "means only when every one of its documents is scored here)")
    p.add_argument("--notes", metavar="FILE", help="markdown to put under the title of the report (provenance, training)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_run)


def _run(args) -> int:
    modes = tuple(m.strip() for m in (args.modes or "").split(",") if m.strip())
    bad = [m for m in modes if m not in MODES]
    if bad:
        raise UsageError(f"unknown modes {bad}; expected {', '.join(MODES)}")
    if args.engine == "reference":
        if args.memory_type is not None:
            raise UsageError("--memory-type is for --engine gguf (the reference keeps its states in float32)")
        engine = ReferenceEngine(args.model, args.ahn, window=args.window, sinks=args.sinks, threads=args.threads,
                                 matched=args.matched_window)
        max_ctx = args.max_ctx or engine.n_ctx_train
    else:
        if args.ahn:
            raise UsageError("--ahn is for --engine reference; a GGUF carries its AHN (ahn-gguf attach)")
        from .default_model import resolve_model

        args.model = resolve_model(args.model)   # an embedded model's name -> its GGUF
        if args.max_ctx is None:
            from .gguf_io.header import read_metadata as read_gguf_metadata

            meta = read_gguf_metadata(args.model)
            arch = meta.get("general.architecture")
            max_ctx = int(meta.get(f"{arch}.context_length", 8192))
        else:
            max_ctx = args.max_ctx
        engine = GGUFEngine(args.model, n_ctx=max_ctx, window=args.window, sinks=args.sinks, threads=args.threads,
                            memory_type=args.memory_type)
    lengths = ([int(x) for x in args.lengths.split(",")] if args.lengths
               else context_lengths(engine.window, engine.sinks, max_ctx))
    if max(lengths) > max_ctx:
        raise UsageError(f"length {max(lengths)} exceeds --max-ctx {max_ctx}")
    t0 = time.time()
    if args.no_perplexity and args.passkey_trials <= 0 and args.recall_trials <= 0:
        raise UsageError("--no-perplexity leaves nothing to measure: give --passkey-trials or --recall-trials")
    texts = []
    sequences, prov = heldout_token_sequences(engine, args.data, max(lengths), args.docs or None, texts)
    modes = modes or default_modes(engine)
    known, lent, previous = {}, [], None
    if args.reuse:
        try:
            previous = json.loads(Path(args.reuse).read_text())
            known, lent = reusable_blocks(previous, window=engine.window, sinks=engine.sinks, lengths=lengths,
                                          documents=[p for p, _ in sequences], matched_window=engine.matched,
                                          measure=modes if args.modes else ())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            if isinstance(e, UsageError):
                raise
            raise UsageError(f"--reuse {args.reuse}: not a readable ahn-gguf eval result ({type(e).__name__}: {e})") from e
    res = run_eval(engine, sequences, lengths=lengths, modes=tuple(dict.fromkeys(modes + tuple(lent))),
                   passkey_trials=args.passkey_trials, seed=args.seed, progress=not args.no_progress,
                   recall_texts=texts, recall_trials=args.recall_trials, perplexity=not args.no_perplexity,
                   known=known, probe_modes=modes)
    res.data = prov
    if lent:
        take_probes(res, previous, lent)
        reused = sorted({p for m in lent for b in known[m] for p in b["documents"]})
        res.notes.append(f"modes {', '.join(lent)}: {len(reused)} of {len(res.documents)} documents taken from "
                         f"{args.reuse} (they do not depend on the AHN weights), the rest measured here")
    res.seconds["total"] = round(time.time() - t0, 1)
    name = Path(args.model).stem if args.engine == "gguf" else Path(str(args.ahn or args.model)).name
    out = Path(args.output) if args.output else Path("reports") / f"eval-{name}"
    title = args.title or f"AHN evaluation: {name} ({args.engine} engine)"
    extra = [f"Model: `{args.model}`" + (f" + AHN `{args.ahn}`" if args.ahn else "") + f", engine {args.engine}.",
             f"Held-out text: {prov.get('deb', prov.get('folder', '?'))}; {prov.get('split', '')}."]
    if args.notes:
        extra = [Path(args.notes).read_text().rstrip(), ""] + extra
    paths = write_report(res, out, title, extra)
    print(markdown(res, title, extra))
    print("written: " + ", ".join(str(p) for p in paths.values()))
    return 0
