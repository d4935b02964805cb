"""Self-distillation of an AHN (docs/AHN-SPEC.md, "Training"): the run, its schedule, checkpoints and log.

Per step: a batch of packed training sequences (ahn_gguf.data), a random lossless span S + W and
sink count S drawn as in the paper (span uniform from `spans` kept within (L/8, L); S uniform from
`sinks` kept <= span / 2), the teacher/student passes and KL of ahn_gguf.distill.student, AdamW on
the AHN parameters only, learning rate with linear warm-up then cosine decay.

Everything a resumed run needs is in one checkpoint file, written atomically: the AHN parameters,
the optimiser and scheduler states, the data position, the step, the RNG states, and the log so
far. The span of step n is drawn from a generator seeded by (seed, n), and the data order by
(seed, epoch), so a run resumed from any checkpoint computes exactly the losses an uninterrupted
run computes (tests/quality/test_distill.py).

Output folder (`out_dir`): config.json + model.safetensors in the released AHN layout (written at
every checkpoint too, so an interrupted run leaves a usable AHN), training-log.json (run settings,
provenance of base and data, one record per step) and training-log.csv; checkpoint/state.pt.
"""

from __future__ import annotations

import csv
import json
import math
import os
import random
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..atomic import atomic_output, write_text
from ..constants import HF_AHN_IMPLEMENTATION, HF_NUM_ATTN_SINKS, HF_SLIDING_WINDOW, canonical_variant
from ..errors import ExistingOutputError, MissingFileError, UsageError

LOG_JSON = "training-log.json"
LOG_CSV = "training-log.csv"
CHECKPOINT_DIR = "checkpoint"
CHECKPOINT_FILE = "state.pt"
CSV_FIELDS = ("step", "loss", "lr", "grad_norm", "tokens", "wall_s", "window", "sinks", "epoch")

DEFAULT_SPANS = (192, 256, 288, 320, 384, 512)
DEFAULT_SINKS = (0, 32, 64)
OBJECTIVES = ("kl", "local")


@dataclass
class DistillConfig:
    base: str                               # Hugging Face base folder (or "smollm2")
    out_dir: str
    variant: str = "gdn"
    seq_len: int = 1024                     # L
    batch_size: int = 1
    steps: int = 500
    lr: float = 1e-3
    weight_decay: float = 0.1
    warmup: float = 0.1                     # fraction of steps
    min_lr_ratio: float = 0.0               # cosine decays to lr * min_lr_ratio
    clip: float = 1.0                       # max gradient norm (0: none)
    spans: tuple[int, ...] = DEFAULT_SPANS  # lossless span S + W candidates
    sinks: tuple[int, ...] = DEFAULT_SINKS  # S candidates
    window: int = 256                       # default W written to config.json (sliding_window)
    default_sinks: int = 32                 # default S written to config.json (num_attn_sinks)
    fa_layer_ids: str = ""
    data: str | None = None                 # sources, comma-separated (ahn_gguf.data); None = data.TRAIN_MIXTURE
    seed: int = 0
    o_proj_std: float = 0.0                 # 0: o_proj zero-initialised as in the paper
    grad_checkpoint: bool = True
    bf16: bool = False
    device: str = "cpu"
    threads: int = 2
    checkpoint_every_s: float = 600.0
    checkpoint_every_steps: int = 0         # 0: by time only
    save_dtype: str = "float32"             # dtype of model.safetensors
    max_sequences: int = 0                  # 0: all packed training sequences
    val_every: int = 25                     # score the validation batch every N steps (0: never)
    val_sequences: int = 2                  # validation sequences per source, set aside from training
    init_from: str | None = None            # AHN folder whose weights start the run (else fresh)
    objective: str = "kl"                   # "kl" (end to end) or "local" (layer-local, student.layer_local_step)
    progress: bool = True

    def validate(self) -> DistillConfig:
        self.variant = canonical_variant(self.variant)
        for name in ("seq_len", "batch_size", "steps", "window", "threads"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.warmup < 1:
            raise UsageError(f"warmup is a fraction of the steps in [0, 1), got {self.warmup}")
        if self.default_sinks < 0:
            raise UsageError(f"default sinks must be >= 0, got {self.default_sinks}")
        self.spans, self.sinks = tuple(sorted(set(self.spans))), tuple(sorted(set(self.sinks)))
        allowed_spans(self.spans, self.seq_len)  # raises if none fits
        if self.objective not in OBJECTIVES:
            raise UsageError(f"objective must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        if self.val_every < 0 or self.val_sequences < 0:
            raise UsageError("val_every and val_sequences must be >= 0")
        if self.val_every and self.val_sequences and self.window + self.default_sinks >= self.seq_len:
            raise UsageError(f"the validation batch is scored at the default S + W = {self.default_sinks + self.window}, "
                             f"which leaves no position of a {self.seq_len}-token sequence to score: raise --seq-len")
        return self


def allowed_spans(spans, seq_len: int) -> tuple[int, ...]:
    """Spans kept within (L/8, L) (docs/AHN-SPEC.md); at least one must remain."""
    kept = tuple(s for s in spans if seq_len / 8 < s < seq_len)
    if not kept:
        raise UsageError(f"no span in {list(spans)} lies within (L/8, L) = ({seq_len / 8:g}, {seq_len}): "
                         f"choose spans for sequence length {seq_len}")
    return kept


def draw_window(step: int, seed: int, spans, sinks, seq_len: int) -> tuple[int, int]:
    """(W, S) of a step: span uniform from the allowed spans, S uniform from sinks <= span / 2."""
    rng = np.random.default_rng([seed, 1_000_003, step])
    span = int(rng.choice(allowed_spans(spans, seq_len)))
    s_choices = [s for s in sinks if s <= span // 2] or [0]
    S = int(rng.choice(s_choices))
    return span - S, S


def lr_factor(step: int, total: int, warmup: float, min_ratio: float) -> float:
    """Linear warm-up over the first `warmup` fraction of steps, then cosine to `min_ratio`."""
    n_warm = int(round(warmup * total))
    if step < n_warm:
        return (step + 1) / n_warm
    progress = (step - n_warm) / max(1, total - n_warm)
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def tune_cpu_runtime(threads: int) -> None:
    """CPU settings that this workload measurably needs (DESIGN: a shared 2-core machine).

    - OpenMP workers sleep instead of spinning when idle (OMP_WAIT_POLICY=PASSIVE; only effective
      before torch is first imported): on a loaded machine spinning threads made a step 2-3x slower.
    - glibc malloc keeps freed memory instead of unmapping it (each step allocates the same
      ~100 MB tensors again; mmap/munmap of them cost ~25% of a step in page faults).
    - subnormal floats flushed to zero in this thread (reference.recurrence.LOG_FLUSH for the worker threads).
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL("libc.so.6")
            M_TRIM_THRESHOLD, M_TOP_PAD, M_MMAP_THRESHOLD = -1, -2, -3
            libc.mallopt(M_MMAP_THRESHOLD, 32 << 20)
            libc.mallopt(M_TRIM_THRESHOLD, 1 << 31)
            libc.mallopt(M_TOP_PAD, 256 << 20)
        except (OSError, AttributeError):
            pass
    import torch

    torch.set_num_threads(threads)
    torch.set_flush_denormal(True)


# the real bases reachable offline, by name: quantized GGUFs dequantized into Hugging Face folders
NAMED_BASES = {
    "smollm2": ("smollm2", "SmolLM2-135M-Instruct, Q4_1 (ahn_gguf.smollm2)"),
    "smollm2-135m": ("smollm2", None),
    "smollm2-135m-instruct": ("smollm2", None),
    "qwen2.5-coder-0.5b": ("qwen_coder", "Qwen2.5-Coder-0.5B-Instruct, Q4_K_M (ahn_gguf.qwen_coder)"),
    "qwen2.5-coder-0.5b-instruct": ("qwen_coder", None),
}


def resolve_base(base: str) -> Path:
    """A base folder; a name of NAMED_BASES ("smollm2", "qwen2.5-coder-0.5b") gives its dequantized folder."""
    import importlib

    named = NAMED_BASES.get(base.lower())
    if named:
        return importlib.import_module(f"ahn_gguf.{named[0]}").hf_dir()
    path = Path(base)
    if not (path / "config.json").is_file():
        names = ", ".join(f"'{k}' ({v[1]})" for k, v in NAMED_BASES.items() if v[1])
        raise MissingFileError(f"{base}: not a Hugging Face model folder (no config.json); named bases: {names}")
    return path


def base_provenance(base_dir: Path) -> dict:
    prov = {"folder": str(base_dir)}
    from ..gguf_io.to_hf import PROVENANCE_FILE

    if (base_dir / PROVENANCE_FILE).is_file():
        prov.update(json.loads((base_dir / PROVENANCE_FILE).read_text()))
    return prov


@dataclass
class Record:
    step: int            # 1-based: the step just taken
    loss: float
    lr: float
    grad_norm: float
    tokens: int          # tokens processed so far (batch * L per step)
    wall_s: float        # training wall time so far (all sessions of the run)
    window: int
    sinks: int
    epoch: int


@dataclass
class RunLog:
    config: dict
    base: dict = field(default_factory=dict)
    data: dict = field(default_factory=dict)
    commands: list = field(default_factory=list)
    records: list = field(default_factory=list)
    validation: list = field(default_factory=list)   # {"step", "loss", "per_source"} every val_every steps
    status: str = "running"
    notes: dict = field(default_factory=dict)


class Distiller:
    """One distillation run: `Distiller(cfg).run()`; `resume=True` continues from its checkpoint."""

    def __init__(self, cfg: DistillConfig, *, resume: bool = False, command: list[str] | None = None):
        self.cfg = cfg.validate()
        tune_cpu_runtime(cfg.threads)
        import torch

        from ..data import TrainSequences, load_tokenizer, split_documents
        from ..reference import attach_ahn, load_reference

        self.torch = torch
        self.out = Path(cfg.out_dir)
        self.ckpt_path = self.out / CHECKPOINT_DIR / CHECKPOINT_FILE
        if not resume and self.ckpt_path.is_file():
            raise ExistingOutputError(f"{self.ckpt_path} exists: pass --resume to continue that run, "
                                  f"or choose another output folder")
        if resume and not self.ckpt_path.is_file():
            raise MissingFileError(f"--resume: no checkpoint at {self.ckpt_path}")
        self.device = torch.device(cfg.device)
        base_dir = resolve_base(cfg.base)

        # data: each source's documents -> split (held-out documents never enter training) -> packed
        # sequences; a few per source set aside as the fixed validation batch
        from ..data import TRAIN_MIXTURE, load_mixture, training_sequences

        tokenizer = load_tokenizer(base_dir)
        train_rows, val_rows, data_prov = [], [], {"sources": {}}
        self.heldout_paths = []
        mixture = load_mixture(cfg.data or TRAIN_MIXTURE, training=True)
        for name, docs, prov in mixture:
            split = split_documents(docs)
            seqs = training_sequences(split, tokenizer, cfg.seq_len)
            n_val = min(cfg.val_sequences, len(seqs) // 2) if cfg.val_every else 0
            picked = np.random.default_rng([cfg.seed, 424_242]).choice(len(seqs), n_val, replace=False) if n_val else []
            keep = np.ones(len(seqs), dtype=bool)
            keep[list(picked)] = False
            train_rows.append(seqs[keep])
            val_rows += [(name, seqs[i]) for i in sorted(picked)]
            prefix = f"{name}/" if len(mixture) > 1 else ""
            self.heldout_paths += sorted(prefix + d.path for d in split.heldout)
            data_prov["sources"][name] = dict(prov, split=split.describe(), train_sequences=int(keep.sum()),
                                              validation_sequences=n_val)
        seqs = np.concatenate(train_rows) if train_rows else np.zeros((0, cfg.seq_len), dtype=np.int32)
        if cfg.max_sequences:
            seqs = seqs[:cfg.max_sequences]
        self.data = TrainSequences(seqs, seed=cfg.seed)
        self.val_batch = val_rows
        data_prov.update(heldout_documents=self.heldout_paths, train_sequences=len(seqs), seq_len=cfg.seq_len,
                         validation=f"{len(val_rows)} sequences ({cfg.val_sequences} per source, drawn with seed "
                                    f"{cfg.seed} and set aside from training), scored every {cfg.val_every} steps "
                                    f"at the default W = {cfg.window}, S = {cfg.default_sinks}")

        # model: frozen base + fresh AHN (o_proj zero unless o_proj_std > 0), AHN parameters trainable
        model = load_reference(base_dir)
        attach_ahn(model, cfg.variant, window=cfg.window, sinks=cfg.default_sinks,
                   fa_layer_ids=cfg.fa_layer_ids, o_proj_std=cfg.o_proj_std, seed=cfg.seed)
        model.config.hf["sliding_window_type"] = "random"
        if cfg.init_from:
            self._init_from(model, Path(cfg.init_from))
        model.freeze_base().to(self.device).eval()  # eval: no dropout anywhere (there is none)
        self.model = model
        params = model.ahn_parameters()
        decay = [p for p in params if p.dim() >= 2]          # projections; not A_log, dt_bias, norms
        no_decay = [p for p in params if p.dim() < 2]
        self.opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                      {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.95))
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: lr_factor(s, cfg.steps, cfg.warmup, cfg.min_lr_ratio))
        self.step = 0
        self.wall_s = 0.0
        self.log = RunLog(config=_jsonable(asdict(cfg)), base=base_provenance(base_dir), data=data_prov)
        self.log.notes = {
            "n_ahn_parameters": sum(p.numel() for p in params),
            "loss": ("KL(teacher || student), temperature 1, mean over positions >= S+W" if cfg.objective == "kl" else
                     "layer-local: per AHN layer, the fraction of o_proj(a_full - a_window) at positions >= S+W "
                     "the AHN leaves unrestored, on the teacher's inputs, mean over layers "
                     "(distill.student.layer_local_step); validation: KL"),
            "teacher": "the same frozen base with full causal attention",
            "student": "sinks + window + AHN on the same weights; only AHN parameters train",
        }
        if resume:
            self._load_checkpoint()
        self.log.commands.append({"argv": command or sys.argv, "start_step": self.step,
                                  "time": time.strftime("%Y-%m-%d %H:%M:%S")})

    def _init_from(self, model, source: Path) -> None:
        """Start from an earlier AHN (a warm start): an AHN folder or an AHN GGUF (a sidecar such as the
        shipped default's); its variant and layers must be this run's."""
        import torch

        from ..reference.loading import is_ahn_key, read_config, read_tensors

        if source.suffix == ".gguf":
            from ..convert.ahn import hf_tensors_from_gguf

            got, arrays = hf_tensors_from_gguf(source)
            tensors = {k: torch.from_numpy(v) for k, v in arrays.items()}
        else:
            got = canonical_variant(read_config(source).get(HF_AHN_IMPLEMENTATION, ""))
            tensors = {k: v.float() for k, v in read_tensors(source).items() if is_ahn_key(k)}
        if got != self.cfg.variant:
            raise UsageError(f"--init-from {source}: an AHN of variant {got}, this run trains {self.cfg.variant}")
        want = {k: v.shape for k, v in model.state_dict().items() if is_ahn_key(k)}
        unused = {k for k in want if k.endswith(".D")}        # GDN's D: unused by the math, not in a GGUF
        bad = sorted((set(want) - unused) ^ (set(tensors) - unused)) or \
            sorted(k for k in tensors if tuple(tensors[k].shape) != tuple(want[k]))
        if bad:
            raise UsageError(f"--init-from {source}: its AHN tensors do not fit this model: {bad[:4]}")
        model.load_state_dict(tensors, strict=False)

    def validate_now(self) -> dict:
        """Loss of the fixed validation batch at the default W and S (no gradient), overall and per source.

        Always float32, whatever the training precision: bf16 noise moves the KL itself (SmolLM2, a 1k-token
        sequence: 0.1306 under bf16 autocast vs 0.1248), so a bf16 run scored in bf16 would not compare with
        a float32 run, nor with itself across a change of --bf16."""
        from .student import distill_loss

        torch, cfg = self.torch, self.cfg
        per = {}
        with torch.no_grad():
            for name, row in self.val_batch:
                ids = torch.from_numpy(row[None]).long().to(self.device)
                loss = distill_loss(self.model, ids, cfg.window, cfg.default_sinks, grad_checkpoint=False, bf16=False)
                per.setdefault(name, []).append(loss.item())
        rec = {"step": self.step, "loss": float(np.mean([v for vs in per.values() for v in vs])),
               "per_source": {k: float(np.mean(v)) for k, v in per.items()}}
        self.log.validation.append(rec)
        return rec

    # -- one step ------------------------------------------------------------------------------

    def train_step(self) -> Record:
        from .student import distill_loss, layer_local_step

        torch, cfg = self.torch, self.cfg
        t0 = time.time()
        W, S = draw_window(self.step, cfg.seed, cfg.spans, cfg.sinks, cfg.seq_len)
        ids = torch.from_numpy(self.data.next_batch(cfg.batch_size)).long().to(self.device)
        self.opt.zero_grad(set_to_none=True)
        if cfg.objective == "local":       # backpropagates layer by layer itself
            loss = layer_local_step(self.model, ids, W, S, bf16=cfg.bf16)
        else:
            loss = distill_loss(self.model, ids, W, S, grad_checkpoint=cfg.grad_checkpoint, bf16=cfg.bf16)
            loss.backward()
            loss = loss.item()
        params = [p for g in self.opt.param_groups for p in g["params"]]
        gnorm = torch.nn.utils.clip_grad_norm_(params, cfg.clip if cfg.clip > 0 else float("inf"))
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.step += 1
        self.wall_s += time.time() - t0
        rec = Record(self.step, loss, lr, gnorm.item(), self.step * cfg.batch_size * cfg.seq_len,
                     round(self.wall_s, 3), W, S, self.data.epoch)
        self.log.records.append(asdict(rec))
        return rec

    # -- the run -------------------------------------------------------------------------------

    def run(self, stop_after: int | None = None, max_seconds: float | None = None) -> RunLog:
        """Train up to cfg.steps (or `stop_after` more steps: tests; or until `max_seconds` have passed:
        a machine lent for minutes), checkpointing as configured and at the end."""
        from tqdm import tqdm

        cfg = self.cfg
        end = cfg.steps if stop_after is None else min(cfg.steps, self.step + stop_after)
        deadline = time.time() + max_seconds if max_seconds is not None else float("inf")
        interrupted = []

        def on_signal(signum, _frame):
            interrupted.append(signum)

        old = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)} \
            if _main_thread() else {}
        last_ckpt = time.time()
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress, dynamic_ncols=True,
                   desc="distill", unit="step", file=sys.stderr)
        try:
            if cfg.val_every and self.val_batch and not self.log.validation:
                self._report_validation(bar)          # step 0: the starting point of the curve
            while self.step < end and not interrupted and time.time() < deadline:
                rec = self.train_step()
                tok_s = rec.tokens / max(rec.wall_s, 1e-9)
                bar.set_postfix_str(f"loss {rec.loss:.4f} lr {rec.lr:.2e} W {rec.window} S {rec.sinks} "
                                    f"{tok_s:.0f} tok/s", refresh=False)
                bar.update(1)
                if cfg.val_every and self.val_batch and (self.step % cfg.val_every == 0 or self.step == cfg.steps):
                    self._report_validation(bar)
                due = (cfg.checkpoint_every_steps and self.step % cfg.checkpoint_every_steps == 0) or \
                      (time.time() - last_ckpt >= cfg.checkpoint_every_s)
                if due and self.step < end:
                    self.save_checkpoint()
                    last_ckpt = time.time()
        finally:
            bar.close()
            for s, h in old.items():
                signal.signal(s, h)
        self.log.status = "done" if self.step >= cfg.steps else ("interrupted" if interrupted else "paused")
        self.save_checkpoint()
        if interrupted:
            print(f"interrupted at step {self.step}; checkpoint saved: resume with --resume", file=sys.stderr)
        return self.log

    def _report_validation(self, bar) -> None:
        v = self.validate_now()
        parts = " ".join(f"{k} {x:.4f}" for k, x in v["per_source"].items())
        bar.write(f"validation at step {v['step']}: loss {v['loss']:.5f} ({parts})", file=sys.stderr)

    # -- checkpoints and outputs ---------------------------------------------------------------------

    def save_outputs(self) -> None:
        """The AHN folder (released layout) and the training log, as of now."""
        from ..reference import save_ahn

        torch = self.torch
        cpu_model = self.model  # save_ahn reads the state dict; tensors are moved by .to(dtype) per tensor
        self.model.config.window, self.model.config.sinks = self.cfg.window, self.cfg.default_sinks
        save_ahn(cpu_model, self.out, dtype=getattr(torch, self.cfg.save_dtype))
        cfg_path = self.out / "config.json"
        c = json.loads(cfg_path.read_text())
        c[HF_SLIDING_WINDOW], c[HF_NUM_ATTN_SINKS] = self.cfg.window, self.cfg.default_sinks
        c["torch_dtype"] = self.cfg.save_dtype
        write_text(cfg_path, json.dumps(c, indent=2))
        self.log.notes.update({"steps_done": self.step, "tokens": self.step * self.cfg.batch_size * self.cfg.seq_len,
                               "train_wall_s": round(self.wall_s, 1)})
        write_text(self.out / LOG_JSON, json.dumps(asdict(self.log), indent=1))
        with atomic_output(self.out / LOG_CSV) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(self.log.records)

    def save_checkpoint(self) -> Path:
        torch = self.torch
        self.out.mkdir(parents=True, exist_ok=True)
        self.ckpt_path.parent.mkdir(parents=True, exist_ok=True)
        state = {
            "step": self.step,
            "wall_s": self.wall_s,
            "config": _jsonable(asdict(self.cfg)),
            "ahn": {k: v.detach().cpu() for k, v in self.model.state_dict().items() if ".ahn." in k},
            "optimizer": self.opt.state_dict(),
            "scheduler": self.sched.state_dict(),
            "data": self.data.state_dict(),
            "rng": {"python": random.getstate(), "numpy": _numpy_rng_state(),
                    "torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "log": asdict(self.log),
        }
        with atomic_output(self.ckpt_path) as tmp:
            torch.save(state, tmp)
        self.save_outputs()
        return self.ckpt_path

    def _load_checkpoint(self) -> None:
        torch = self.torch
        state = load_checkpoint_file(self.ckpt_path)
        saved = dict(state["config"])
        now = _jsonable(asdict(self.cfg))
        # settings that change the run must match; steps, checkpointing, threads, the device and bf16
        # autocast of the base's matmuls may differ (a run started on the CPU continues on a GPU in bf16)
        fixed = ("variant", "seq_len", "batch_size", "lr", "weight_decay", "warmup", "min_lr_ratio", "clip",
                 "spans", "sinks", "fa_layer_ids", "data", "seed", "o_proj_std", "max_sequences",
                 "val_every", "val_sequences", "window", "default_sinks", "init_from", "objective")
        from ..data import TRAIN_MIXTURE

        for cfg_dict in (saved, now):   # no --data means the default mixture, spelled out or not
            cfg_dict["data"] = cfg_dict.get("data") or TRAIN_MIXTURE
            cfg_dict.setdefault("objective", "kl")   # checkpoints from before --objective trained the KL
        diff = [k for k in fixed if saved.get(k) != now.get(k)]
        if diff:
            raise UsageError("the checkpoint was made with other settings: "
                             + ", ".join(f"{k} {saved.get(k)!r} (now {now.get(k)!r})" for k in diff))
        if saved.get("steps") != now.get("steps"):
            raise UsageError(f"the checkpoint's run has {saved.get('steps')} steps (its schedule depends on "
                             f"them); resume with --steps {saved.get('steps')}")
        missing = self.model.load_state_dict(state["ahn"], strict=False)
        if missing.unexpected_keys:
            raise UsageError(f"checkpoint AHN tensors not in the model: {missing.unexpected_keys[:4]}")
        self.opt.load_state_dict(state["optimizer"])
        self.sched.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        rng = state["rng"]
        random.setstate(rng["python"])
        _set_numpy_rng_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if rng.get("cuda") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        self.step, self.wall_s = state["step"], state["wall_s"]
        log = state["log"]
        self.log.records = log["records"][:self.step]
        self.log.validation = [v for v in log.get("validation", []) if v["step"] <= self.step]
        self.log.commands = log.get("commands", [])


def load_checkpoint_file(path: Path) -> dict:
    """A checkpoint read as data only (torch.load weights_only: tensors, numbers, strings, containers;
    never code, so a checkpoint from elsewhere, e.g. brought back from a GPU machine, cannot run
    anything). Checkpoints written before this format kept numpy's RNG state as an ndarray: numpy's
    array reconstruction, data only too, is allowed for them."""
    import torch

    legacy = [np.ndarray, np.dtype, type(np.dtype(np.uint32)), _numpy_reconstruct()]
    try:
        with torch.serialization.safe_globals(legacy):
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001  (the unpickler raises many kinds, all mean "not a checkpoint")
        raise UsageError(f"{path}: not a distillation checkpoint that can be read as data "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:300]})") from None
    if not isinstance(state, dict) or not {"step", "config", "ahn", "optimizer", "rng", "log"} <= set(state):
        raise UsageError(f"{path}: not a distillation checkpoint (missing its fields)")
    return state


def _numpy_reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def _numpy_rng_state() -> dict:
    """numpy's global RNG state as plain data (a tensor for the key array): loadable with weights_only."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}


def _set_numpy_rng_state(state) -> None:
    if isinstance(state, dict):
        state = (state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], state["has_gauss"],
                 state["cached_gaussian"])
    np.random.set_state(state)   # (a checkpoint of the earlier format: numpy's own tuple)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _jsonable(d: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

