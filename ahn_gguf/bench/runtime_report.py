"""The report of `ahn-gguf bench runtime`: markdown, plots, and the files written.

What is here: `markdown` (the summary table, one section per model, the targets as sentences),
`plot` (one PNG per model: prefill, decode, cache against the context) and `write_report`, which
writes them with the JSON through `ahn_gguf.reports.write_report`.

Separate from the measurement (`runtime_measure`) because it only formats what a result already
holds: it computes no ratio itself, so a report re-rendered from a run's JSON
(`bench runtime --from-json`) is the same text as the run's own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ahn_gguf import reports
from ahn_gguf.reports import ReportFiles, save_figure

from .runtime_measure import AHN, COMPOSED, STOCK, STOCK_FA, WINDOW

MIB = 1024 ** 2


def _f(x: Any, spec: str, none: str = "–") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not isinstance(x, bool) else none


def _pct(x: Any) -> str:
    return f"{100 * x:+.1f}%" if isinstance(x, (int, float)) else "–"


def _ok(x: Any) -> str:
    return {True: "**met**", False: "**missed**"}.get(x, "n/a")


def markdown(result: dict, plots: dict[str, str] | None = None) -> str:
    s = result["settings"]
    bw = result["bandwidth_gbs"]
    m0 = result["machine"]
    lines = ["# Runtime benchmark: stock full attention vs sinks + window + AHN", ""]
    if result.get("busy_warning"):
        lines += [f"> **Warning**: {result['busy_warning']}.", ""]
    if s.get("quick"):
        lines += ["> **QUICK RUN** (`--quick`: small windows and contexts, few repetitions) — a smoke test of the "
                  "benchmark, not the reference numbers.", ""]
    lines += [
        f"Command: `{result.get('command', 'ahn-gguf bench runtime')}`; {result['seconds'] / 60:.1f} min. "
        f"{m0['processor']}, {m0['cpus']} CPUs, {s['threads']} thread(s), llama-cpp-python {m0['llama_cpp']}, "
        f"n_batch = n_ubatch = {s['n_batch']}, F16 K/V cache, {s['decode_tokens']} greedy decode steps per point. "
        f"Load average at start / end: {', '.join(f'{x:.1f}' for x in m0['load_avg_at_start'])} / "
        f"{', '.join(f'{x:.1f}' for x in m0['load_avg_at_end'])}.",
        "",
        f"Memory bandwidth measured in the same run: **{bw['bound']:.1f} GB/s** (best of in-place scale "
        f"{bw['inplace_scale']:.1f}, copy {bw['copy']:.1f}, triad {bw['triad']:.1f}; at the end: "
        f"{result['bandwidth_gbs_at_end']['bound']:.1f}).",
        "",
        "Modes (same process, same base weights): **stock** = the plain base GGUF (the patched build's unchanged "
        "path) with flash attention off and on — the ratios use the faster of the two at each point; **window** = "
        "the AHN GGUF with `ahn.memory_enabled=false` (sinks + window only); **ahn** = sinks + window + AHN with the "
        "fused `GGML_OP_AHN_MEMORY`; **ahn-composed** = the same from stock ggml ops (`LLAMA_AHN_COMPOSED=1`).",
        "",
        "Protocol: one pass per mode up to the largest context; prefill in n_batch chunks, prefill rate at L = "
        "prefilled tokens / cumulative prefill time (exact for causal models); at each L, k greedy tokens decoded "
        "one by one (rate = 1 / median step; spread = p10..p90 of the steps relative to the median). Points "
        f"inside the window were measured {max(s['repeats'], s['short_repeats'])}x, the others {s['repeats']}x; the "
        "best run is kept (± after a prefill rate: slowest / fastest run − 1).",
        "",
        "Decode bound: bytes one step must read (weights used per token — token_embd counted in full when it is "
        "also the output matrix — + K/V of the live tokens + AHN states read and written) / measured bandwidth.",
        "",
    ]
    lines += _summary(result)
    for mr in result["models"]:
        lines += _model_section(mr, (plots or {}).get(mr["name"]))
    return "\n".join(lines) + "\n"


def _summary(result: dict) -> list[str]:
    out = ["## Summary (measured; targets of the issue in brackets)", "",
           "| model | W / S | cache at max L: stock / AHN [AHN within 5% of formula, flat] | at 8 W prefill / decode vs stock "
           "[>= 2x] | inside the window, AHN slower by (prefill / decode) [<= 5%] | memory step, composed / fused "
           "cost per token beyond the window, prefill [>= 2x] |", "|---|---|---|---|---|---|"]
    for mr in result["models"]:
        t = mr["targets"]
        c = t.get("cache_at_max_L")
        cache = (f"{c['stock_live_bytes'] / MIB:.1f} / {c['ahn_live_bytes'] / MIB:.1f} MiB at L = {c['L']} "
                 f"({_ok(t['cache_ok'])}: {100 * t['cache_max_rel_error_vs_formula']:.2f}%)") if c else "–"
        a8 = t.get("at_8W")
        at8 = f"{a8['prefill_speedup']:.2f}x / {a8['decode_speedup']:.2f}x ({_ok(t['at_8W_ok'])})" if a8 else "–"
        iw = t.get("inside_window")
        ins = (f"{_pct(iw['prefill_slowdown'])} / {_pct(iw['decode_slowdown'])} ({_ok(t['inside_window_ok'])})"
               if iw else "–")
        ms = t.get("memory_step")
        mem = (f"{_f(ms['prefill_composed_over_fused'], '.2f')}x (decode {_f(ms['decode_composed_over_fused'], '.2f')}x) "
               f"({_ok(t['memory_step_ok'])})") if ms else "–"
        out.append(f"| {mr['name']} | {mr['window']} / {mr['sinks']} | {cache} | {at8} | {ins} | {mem} |")
    return out + [""]


def _model_section(mr: dict, plot: str | None) -> list[str]:
    W, S = mr["window"], mr["sinks"]
    L = [f"## {mr['name']}: {mr['description']}", "", f"W = {W}, S = {S}, contexts {mr['checkpoints'][0]} .. "
         f"{mr['checkpoints'][-1]} (up to {mr['checkpoints'][-1] / W:g} W); n_ctx = {mr['n_ctx']}; "
         f"{mr['seconds'] / 60:.1f} min.", ""]
    L += [f"- {n}" for n in mr["notes"]]
    L.append("")
    if plot:
        L += [f"![{mr['name']}]({plot})", ""]
    modes_ = mr["modes"]
    L += ["### Prefill tokens/s (time to L)", "", "| L | L/W | " + " | ".join(modes_) + " | ahn / stock |",
          "|---:|---:|" + "---:|" * (len(modes_) + 1)]
    rows = {r["L"]: r for r in mr["rows"]}
    for i, Lx in enumerate(mr["checkpoints"]):
        cells = []
        for m in modes_.values():
            p = m["points"][i]
            spread = f" ±{100 * p['prefill_spread']:.0f}%" if p.get("prefill_spread") else ""
            cells.append(f"{p['prefill_tok_s']:.1f}{spread}")
        L.append(f"| {Lx} | {Lx / W:g} | " + " | ".join(cells) + f" | {_f(rows[Lx].get('ahn_prefill_vs_stock'), '.2f')}x |")
    L += ["", "### Decode tokens/s (median of k steps; ± p10..p90 spread)", "",
          "| L | L/W | " + " | ".join(modes_) + " | ahn / stock |", "|---:|---:|" + "---:|" * (len(modes_) + 1)]
    for i, Lx in enumerate(mr["checkpoints"]):
        cells = [f"{m['points'][i]['decode_tok_s']:.1f} ±{100 * m['points'][i]['decode_spread']:.0f}%" for m in modes_.values()]
        L.append(f"| {Lx} | {Lx / W:g} | " + " | ".join(cells) + f" | {_f(rows[Lx].get('ahn_decode_vs_stock'), '.2f')}x |")
    L += ["", "### Cache bytes (MiB): live at L / allocated", "",
          "| L | stock live | stock alloc (n_ctx = L) | stock state_seq | window live | ahn live | ahn formula | ahn alloc | "
          "stock / ahn |", "|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for i, Lx in enumerate(mr["checkpoints"]):
        st = modes_[STOCK]["points"][i]
        a = modes_.get(AHN, {}).get("points", [None] * (i + 1))[i]
        w = modes_.get(WINDOW, {}).get("points", [None] * (i + 1))[i]
        L.append(f"| {Lx} | {st['cache_live_bytes'] / MIB:.2f} | {st['cache_alloc_if_nctx_L_bytes'] / MIB:.2f} | "
                 f"{st['state_seq_bytes'] / MIB:.2f} | {_f(w and w['cache_live_bytes'] / MIB, '.2f')} | "
                 f"{_f(a and a['cache_live_bytes'] / MIB, '.2f')} | {_f(a and a['formula_bytes'] / MIB, '.2f')} | "
                 f"{_f(a and a['cache_alloc_bytes'] / MIB, '.2f')} | "
                 f"{_f(a and st['cache_live_bytes'] / a['cache_live_bytes'], '.2f')}x |")
    L += ["", f"Stock allocates K/V for its whole n_ctx ({modes_[STOCK]['points'][0]['cache_alloc_bytes'] / MIB:.1f} MiB "
          f"at n_ctx = {mr['n_ctx']} in this run; the column above is what n_ctx = L would allocate). "
          "`state_seq` = llama_state_seq_get_size, the serialised sequence (a runtime cross-check of the live K/V).", ""]
    L += ["### Decode against the memory-bandwidth bound", "",
          "| L | " + " | ".join(f"{m} MB/step, % of bound" for m in modes_) + " |", "|---:|" + "---:|" * len(modes_)]
    for i, Lx in enumerate(mr["checkpoints"]):
        cells = [f"{m['points'][i]['decode_bytes'] / 1e6:.0f}, {100 * m['points'][i]['decode_bandwidth_fraction']:.0f}%"
                 for m in modes_.values()]
        L.append(f"| {Lx} | " + " | ".join(cells) + " |")
    if all(m in modes_ for m in (WINDOW, AHN, COMPOSED)):
        L += ["", "### Memory-step cost (AHN mode − window-only mode), per point (noisy; the targets use the steady state)", "",
              "| L | prefill fused s | prefill composed s | composed / fused | decode fused ms | decode composed ms | "
              "composed / fused |", "|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mr["rows"]:
            L.append(f"| {r['L']} | {r['memory_prefill_s_fused']:.3f} | {r['memory_prefill_s_composed']:.3f} | "
                     f"{_f(r['memory_prefill_composed_over_fused'], '.2f')}x | {r['memory_decode_ms_fused']:.3f} | "
                     f"{r['memory_decode_ms_composed']:.3f} | {_f(r['memory_decode_composed_over_fused'], '.2f')}x |")
    L += ["", "### Targets (measured)", ""] + _targets_lines(mr) + [""]
    return L


def _targets_lines(mr: dict) -> list[str]:
    t = mr["targets"]
    out = []
    if "cache_ok" in t:
        c = t["cache_at_max_L"]
        out.append(f"- Cache within 5% of the formula and flat beyond the window: {_ok(t['cache_ok'])} — max deviation "
                   f"from the formula (K/V + write gates + state) {100 * t['cache_max_rel_error_vs_formula']:.2f}%, "
                   f"live bytes beyond S + W vary by {100 * (t['cache_live_flat_beyond_window'] or 0):.2f}%, allocation by "
                   f"{100 * t['cache_alloc_flat']:.2f}%. Against the paper's element count (K/V + state, no gates) the "
                   f"runtime holds {_pct(t['cache_over_paper_formula'])}: the GDN write gates (2 H F32 per cached token). "
                   f"At L = {c['L']}: stock {c['stock_live_bytes'] / MIB:.1f} MiB vs AHN {c['ahn_live_bytes'] / MIB:.1f} MiB "
                   f"({c['ratio']:.1f}x).")
    if "at_8W" in t:
        a = t["at_8W"]
        line = (f"- At 8 W (L = {a['L']}) decode >= 2x and prefill >= 2x stock: {_ok(t['at_8W_ok'])} — prefill "
                f"{a['prefill_speedup']:.2f}x, decode {a['decode_speedup']:.2f}x.")
        if not t["at_8W_ok"] and "window_prefill_speedup" in a:
            reach = "; ".join(f"AHN {w} reaches 2x from L = {a[f'{w}_2x_from_L']} ({a[f'{w}_2x_from_L'] // mr['window']} W)"
                              for w in ("prefill", "decode") if a[f"{w}_2x_from_L"])
            line += (f" What bounds it: sinks + window without any memory (the ceiling of every memory design on "
                     f"this model) reaches {a['window_prefill_speedup']:.2f}x prefill / {a['window_decode_speedup']:.2f}x "
                     f"decode at 8 W, and the AHN keeps {a['prefill_speedup'] / a['window_prefill_speedup']:.0%} / "
                     f"{a['decode_speedup'] / a['window_decode_speedup']:.0%} of that. The rest is the per-token work "
                     f"that does not depend on the context (projections, MLP, output head), which stock and AHN both "
                     f"pay: up to {1 / a['window_prefill_speedup']:.0%} of stock's prefill time at 8 W for a model this "
                     f"small; the attention share, "
                     f"hence the ratio, grows with L ({reach}).")
        out.append(line)
    if "inside_window" in t:
        a = t["inside_window"]
        same = (f"; against stock with the AHN modes' flash-attention setting: prefill "
                f"{_pct(a['same_fa_prefill_slowdown'])}, decode {_pct(a['same_fa_decode_slowdown'])}"
                if "same_fa_prefill_slowdown" in a else "")
        out.append(f"- Inside the window (L in {a['Ls']}) AHN <= 5% slower than stock: {_ok(t['inside_window_ok'])} — "
                   f"worst prefill slowdown {_pct(a['prefill_slowdown'])}, decode {_pct(a['decode_slowdown'])} "
                   f"(negative = faster){same}.")
    if "memory_step" in t:
        a = t["memory_step"]
        out.append(f"- Fused memory step >= 2x the composition: {_ok(t['memory_step_ok'])} — steady state beyond the "
                   f"window (L = {a['from_L']} .. {a['to_L']}), cost over the window-only mode per token: prefill "
                   f"{a['prefill_fused_ms']:.3f} ms fused vs {a['prefill_composed_ms']:.3f} ms composed "
                   f"({_f(a['prefill_composed_over_fused'], '.2f')}x); decode {a['decode_fused_ms']:.3f} ms vs "
                   f"{a['decode_composed_ms']:.3f} ms ({_f(a['decode_composed_over_fused'], '.2f')}x). The memory step "
                   "here is everything the AHN adds to a layer: write-gate projections, the memory update and read, "
                   "and the readout (norm, output gate, per-head projection); only the update/read differs between "
                   "fused and composed.")
    return out


def plot(result: dict, out_dir: Path, stem: str) -> dict[str, str]:
    """One PNG per model: prefill, decode, cache vs context. {model: file name}; {} without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return {}
    files = {}
    style = {STOCK: ("tab:red", "--"), STOCK_FA: ("tab:orange", "-"), WINDOW: ("tab:gray", ":"),
             AHN: ("tab:blue", "-"), COMPOSED: ("tab:green", "-.")}
    for mr in result["models"]:
        fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
        W = mr["window"]
        for name, m in mr["modes"].items():
            c, ls = style.get(name, (None, "-"))
            Ls = [p["L"] for p in m["points"]]
            axes[0].plot(Ls, [p["prefill_tok_s"] for p in m["points"]], ls, color=c, marker="o", ms=3, label=name)
            axes[1].plot(Ls, [p["decode_tok_s"] for p in m["points"]], ls, color=c, marker="o", ms=3, label=name)
            if name in (STOCK, AHN, WINDOW):
                axes[2].plot(Ls, [p["cache_live_bytes"] / MIB for p in m["points"]], ls, color=c, marker="o", ms=3,
                             label=f"{name} live")
        if AHN in mr["modes"]:
            a = mr["modes"][AHN]["points"]
            axes[2].plot([p["L"] for p in a], [p["cache_alloc_bytes"] / MIB for p in a], ":", color="tab:blue",
                         label="ahn allocated")
        st = mr["modes"][STOCK]["points"]
        axes[2].plot([p["L"] for p in st], [p["cache_alloc_if_nctx_L_bytes"] / MIB for p in st], ":", color="tab:red",
                     label="stock allocated (n_ctx = L)")
        for ax, title, ylab in zip(axes, ("prefill (time to L)", "decode", "cache"),
                                   ("tokens/s", "tokens/s", "MiB")):
            ax.set_xscale("log", base=2)
            ax.axvline(W + mr["sinks"], color="k", lw=0.6, alpha=0.4)
            ax.set_title(f"{mr['name']}: {title}")
            ax.set_xlabel("context length L (tokens); line: S + W")
            ax.set_ylabel(ylab)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylim(bottom=0)
        axes[1].set_ylim(bottom=0)
        fig.tight_layout()
        name = f"{stem}-{mr['name']}.png"
        save_figure(fig, out_dir / name, dpi=110)
        plt.close(fig)
        files[mr["name"]] = name
    return files


def write_report(result: dict, out_dir: Path, stem: str) -> ReportFiles:
    by_model: dict[str, str] = {}

    def plots(d: Path, s: str) -> list[str]:
        by_model.update(plot(result, d, s))
        result["plots"] = by_model
        return list(by_model.values())

    return reports.write_report(out_dir, stem, result, lambda _names: markdown(result, by_model), plots)
