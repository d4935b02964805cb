"""The one report writer of `ahn-gguf eval` and every `ahn-gguf bench`: markdown + JSON + plots.

A report is a result dict (what was measured, with the settings and the machine), written as
STEM.json, any number of plots (PNG files the `plot` callback writes, atomically, through
`save_figure`), and STEM.md, whose text the `markdown` callback makes knowing which plots exist
(a machine without matplotlib still gets its tables). Every file is written atomically
(ahn_gguf.atomic): an interrupted run never leaves a half-written report beside a complete one.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .atomic import atomic_output, write_text


@dataclass
class ReportFiles:
    md: Path
    json: Path
    plots: list[Path] = field(default_factory=list)

    def __iter__(self):  # `md, js = write_report(...)`
        return iter((self.md, self.json))

    def all(self) -> list[Path]:
        return [self.md, self.json, *self.plots]


def save_figure(fig, path: Path, dpi: int = 120) -> Path:
    """A matplotlib figure saved as PNG, atomically."""
    with atomic_output(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format="png")
    return path


def write_report(out_dir: str | Path, stem: str, result: dict, markdown: Callable[[list[str]], str],
                 plot: Callable[[Path, str], list[str]] | None = None) -> ReportFiles:
    """Write OUT_DIR/STEM.json, the plots, then OUT_DIR/STEM.md.

    `plot(out_dir, stem)` returns the file names of the plots it wrote (an empty list when it could
    not plot); `markdown(plot_names)` returns the report's text."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = plot(out_dir, stem) if plot else []
    js = write_text(out_dir / f"{stem}.json", json.dumps(result, indent=2, default=str) + "\n")
    md = write_text(out_dir / f"{stem}.md", markdown(plots))
    return ReportFiles(md, js, [out_dir / p for p in plots])
