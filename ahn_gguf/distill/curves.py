"""Learning curves of distillation runs side by side: the validation KL against training time.

    python -m ahn_gguf.distill.curves RUN_DIR [RUN_DIR ...] -o OUT_DIR [--stem NAME]

reads each run's training-log.json (`ahn-gguf distill`) and writes OUT_DIR/NAME.md / .json / .png
(ahn_gguf.reports). Runs with different objectives are compared the only fair way: by the
validation KL (the same fixed batch, the same W and S, whatever the run optimises) after the same
training wall time, the time the steps took on the machine (validation passes not counted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..errors import MissingFileError
from ..reports import save_figure, write_report
from .trainer import LOG_JSON


def load_curve(run_dir: str | Path) -> dict:
    """One run: its settings and its validation points [{step, train_s, loss, per_source}]."""
    run_dir = Path(run_dir)
    path = run_dir / LOG_JSON
    if not path.is_file():
        raise MissingFileError(f"{run_dir}: no {LOG_JSON} (not an `ahn-gguf distill` output folder)")
    log = json.loads(path.read_text())
    cfg, records = log["config"], log["records"]
    wall = {0: 0.0, **{r["step"]: r["wall_s"] for r in records}}
    points = [{"step": v["step"], "train_s": wall.get(v["step"]), "loss": v["loss"], "per_source": v["per_source"]}
              for v in log.get("validation", []) if v["step"] in wall]
    return {"run": run_dir.name, "objective": cfg.get("objective", "kl"), "init_from": cfg.get("init_from"),
            "lr": cfg["lr"], "seq_len": cfg["seq_len"], "window": cfg["window"], "sinks": cfg["default_sinks"],
            "steps_done": len(records), "train_s": records[-1]["wall_s"] if records else 0.0,
            "s_per_step": records[-1]["wall_s"] / len(records) if records else None, "validation": points}


def at_time(curve: dict, seconds: float) -> dict | None:
    """The last validation point scored within `seconds` of training."""
    done = [p for p in curve["validation"] if p["train_s"] <= seconds + 1e-9]
    return done[-1] if done else None


def compare(run_dirs, out_dir: str | Path, stem: str = "distill-objectives", title: str | None = None,
            notes: str = ""):
    curves = [load_curve(d) for d in run_dirs]
    scored = [c for c in curves if c["validation"]]
    if not scored:
        raise MissingFileError("none of the runs has a validation point (train with --val-every N)")
    # runs from the same starting point are compared at the training time all of them reached
    common = {}
    for c in scored:
        key = c["init_from"] or "fresh"
        common[key] = min(common.get(key, float("inf")), c["validation"][-1]["train_s"])
    at_common = {c["run"]: at_time(c, common[c["init_from"] or "fresh"]) for c in scored}
    result = {"runs": curves, "common_train_s": common, "at_common": at_common}

    def markdown(plots: list[str]) -> str:
        lines = [f"# {title or 'Distillation objectives: validation KL per training time'}", "",
                 "Validation KL: the fixed validation batch of each run (the same sequences when runs share data "
                 "and seed), KL(teacher || student) at the default W and S, whatever the run optimises. Training "
                 "time: the wall time of the steps (validation passes not counted).", "",
                 "Runs from the same starting point (init) are compared at the training time all of them "
                 "reached (the middle column).", "",
                 "| run | objective | init | lr | steps | s / step | val KL at 0 | val KL at the common time "
                 "(train-min) | last val KL (step, train-min) |",
                 "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |"]
        for c in curves:
            v = c["validation"]
            first = f"{v[0]['loss']:.5f}" if v and v[0]["step"] == 0 else "-"
            mid = at_common.get(c["run"])
            mid = f"{mid['loss']:.5f} ({common[c['init_from'] or 'fresh'] / 60:.0f})" if mid else "-"
            last = f"{v[-1]['loss']:.5f} ({v[-1]['step']}, {v[-1]['train_s'] / 60:.0f})" if v else "-"
            init = Path(c["init_from"]).name if c["init_from"] else "fresh"
            sps = f"{c['s_per_step']:.0f}" if c["s_per_step"] else "-"
            lines.append(f"| {c['run']} | {c['objective']} | {init} | {c['lr']:g} | {c['steps_done']} | {sps} | "
                         f"{first} | {mid} | {last} |")
        lines += [""] + [f"![{p}]({p})" for p in plots]
        if notes:
            lines += ["", notes.strip()]
        return "\n".join(lines) + "\n"

    def plot(out: Path, stem_: str) -> list[str]:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            return []
        fig, ax = plt.subplots(figsize=(7, 4))
        for c in scored:
            ax.plot([p["train_s"] / 60 for p in c["validation"]], [p["loss"] for p in c["validation"]], "o-",
                    label=f"{c['run']} ({c['objective']})")
        ax.set_xlabel("training time (min)")
        ax.set_ylabel("validation KL")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        save_figure(fig, out / f"{stem_}.png")
        plt.close(fig)
        return [f"{stem_}.png"]

    return write_report(out_dir, stem, result, markdown, plot)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m ahn_gguf.distill.curves", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", metavar="RUN_DIR", help="`ahn-gguf distill` output folders")
    ap.add_argument("-o", "--output", required=True, metavar="OUT_DIR")
    ap.add_argument("--stem", default="distill-objectives", help="report file name (default distill-objectives)")
    ap.add_argument("--title", default=None)
    ap.add_argument("--notes", type=Path, default=None, metavar="FILE", help="markdown appended to the report")
    args = ap.parse_args(argv)
    notes = args.notes.read_text() if args.notes else ""
    md, _ = compare(args.runs, args.output, args.stem, args.title, notes)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
