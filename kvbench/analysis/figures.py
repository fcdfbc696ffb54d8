"""Tables -> figures (PNG and SVG, the same bytes for the same tables), with seaborn's faceting.

Every figure reads the frame of cells.csv (kvbench.analysis.frame) and takes its x axis and its
panels from what the sweep varies: a prompt-length sweep is drawn against the prompt, a model
sweep against model size (models by parameter count), a generation-length sweep against new
tokens. Columns of panels are kv modes (or metrics), rows the other settings that vary. A cell
that did not finish (oom, unsupported, error) is one marker at its panel's top edge, never a
silent hole. A figure with nothing to compare is left out, with one line saying why.

    kvbench figures --tables results/<sweep>/tables --out results/<sweep>/figures
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt  # after facets' matplotlib.use('Agg') takes effect: no figure exists yet
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.cm import ScalarMappable
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from kvbench import record as kvrecord
from kvbench.analysis import aggregate as agg
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.analysis import speedup_figures
from kvbench.analysis.facets import (
    AXIS_LABELS,
    FAILED,
    RC,
    SAVE_METADATA,
    Skip,
    _titles,
    _x_axis,
    facet_label,
    failed_handles,
    grid,
    mark_failed,
    ticks,
    x_values,
)

FORMATS = ("png", "svg")
FIGURE_STEMS = (
    "decode_ms_per_token",
    "peak_memory",
    "prefill_decode_split",
    "speedup_heatmap",
    "per_token_latency",
    "floor_fraction",
    "speedup_vs_model",
    "speedup_vs_new_tokens",
    "kv_variants",
)


# ---------------------------------------------------------------------------------- figures


def line_figure(
    df: pd.DataFrame, y: pd.Series, ylabel: str, title: str, *, yerr=None, beside=None, hline=None, log: bool = True
) -> plt.Figure:
    """A panel per kv mode (columns) and varying setting (rows); x from what the sweep varies,
    a line per batch; `beside` (a second series) dashed in the same colour."""
    x = fr.x_axis(df)
    if x is None:
        raise Skip("one cell per kv mode: nothing varies to draw a line along")
    hue = "cell.batch" if x != "cell.batch" else None
    data = df.assign(
        y=y,
        x=x_values(df, x)[0],
        facet=facet_label(df, ("cell.kv_mode", x, "cell.batch")),
        hue=df["cell.batch"].map(rp.lab) if hue else "all",
        lo=np.nan,
        hi=np.nan,
        beside=beside,
    )
    if yerr is not None:
        data["lo"], data["hi"] = (y - yerr[0]).clip(lower=0), (yerr[1] - y).clip(lower=0)
    hues = sorted(set(data["hue"]), key=rp.natural)
    colors = dict(zip(hues, sns.color_palette("viridis", len(hues) + 1)[: len(hues)]))  # viridis' pale end dropped
    modes = list(df["cell.kv_mode"].cat.categories)
    g = grid(data, "cell.kv_mode", modes, sharex=True, sharey=True, height=3.4, aspect=1.2)

    def panel(data, **_):
        ax = plt.gca()
        ok = data[data["ok"] & data["y"].notna()].sort_values("x")
        for h, d in ok.groupby("hue", sort=False):
            ax.plot(d["x"], d["y"], marker="o", color=colors[h])
            if d["beside"].notna().any():
                ax.plot(d["x"], d["beside"], linestyle="--", color=colors[h], linewidth=1)
            if yerr is not None:
                ax.errorbar(
                    d["x"], d["y"], yerr=[d["lo"], d["hi"]], fmt="none", ecolor=colors[h], elinewidth=0.8, capsize=2
                )
        bad = data[~data["ok"]]
        mark_failed(ax, bad["x"], bad["status"], [f"b{rp.lab(b)}" for b in bad["cell.batch"]])
        if hline is not None:
            ax.axhline(hline[0], color="0.3", linestyle=":", linewidth=1)

    g.map_dataframe(panel)
    _titles(g, "kv_mode = {}")
    pos, labels = x_values(df, x)[1:]
    for ax in g.axes.flat:
        _x_axis(ax, x, pos, labels)
    g.set_axis_labels(AXIS_LABELS[x], ylabel)
    vals = pd.concat([data.loc[data["ok"], "y"], data.loc[data["ok"], "beside"]]).dropna()
    if not len(vals):
        raise Skip("no cell finished (status ok)")
    lo, hi = float(vals.min()), float(vals.max())
    log = log and lo > 0 and hi / lo > 20  # a small range reads better on a linear axis
    ax0 = g.axes.flat[0]
    if log:
        ax0.set_yscale("log")
    ax0.set_ylim(*((lo / 1.3, hi * 1.6) if log else (min(0, lo * 1.1), hi * 1.15 + 1e-12)))
    ticks(ax0.yaxis, *ax0.get_ylim(), log=log)
    handles = [Line2D([], [], color=c, marker="o", label=f"batch {h}") for h, c in colors.items()] if hue else []
    if beside is not None:
        handles.append(Line2D([], [], color="0.3", linestyle="--", label="KV cache by formula"))
    if hline is not None:
        handles.append(Line2D([], [], color="0.3", linestyle=":", label=hline[1]))
    if yerr is not None:
        handles.append(
            Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=10, label="min–max over iterations")
        )
    g.add_legend(legend_data={h.get_label(): h for h in handles + failed_handles(df.loc[~df["ok"], "status"])})
    g.figure.suptitle(title, y=1.02)
    return g.figure


def decode_figure(df: pd.DataFrame) -> plt.Figure:
    d = "latency.decode_ms_per_token"
    return line_figure(
        df,
        df[f"{d}.median"].astype(float),
        "decode ms / token (median)",
        "Decode latency per token",
        yerr=(df[f"{d}.min"].astype(float), df[f"{d}.max"].astype(float)),
    )


def memory_figure(df: pd.DataFrame) -> plt.Figure:
    """Issue 17: what the cache costs, the peak bytes beyond the weights, beside the formula's bytes."""
    sources = sorted(set(df.loc[df["ok"] & df["beyond_bytes"].notna(), "beyond_source"].astype(str)))
    return line_figure(
        df,
        df["beyond_bytes"] / fr.MIB,
        f"peak beyond the weights, MiB\n({', '.join(sources) or 'n/a'})",
        "Peak memory beyond the weights (solid) and the KV cache by formula (dashed)",
        beside=df["memory.kv_cache_bytes_formula"].astype(float) / fr.MIB,
    )


def floor_figure(df: pd.DataFrame) -> plt.Figure:
    return line_figure(
        df,
        df["analytic.fraction_of_floor"].astype(float),
        "analytic floor / measured\n(floor: bytes / measured read bandwidth)",
        "Decode step vs its analytic lower bound (bytes over the read bandwidth, FLOPs over the peak rate)",
        hline=(1.0, "at the floor (1.0); above is suspect"),
    )


def split_figure(df: pd.DataFrame) -> plt.Figure:
    """One stacked bar per cell: the prefill, then the decode steps of one generation."""
    keys = [k for k in ("batch", "prompt_len", "new_tokens") if df[f"cell.{k}"].nunique() > 1] or [
        "batch",
        "prompt_len",
    ]
    data = df.assign(
        facet=facet_label(df, ("cell.kv_mode", *(f"cell.{k}" for k in keys))),
        label=df[[f"cell.{k}" for k in keys]].apply(
            lambda r: " · ".join(f"{k[0]}{rp.lab(v)}" for k, v in zip(keys, r)), axis=1
        ),
        prefill=df["latency.prefill_ms.median"].astype(float),
        decode=df["latency.decode_ms_per_token.median"].astype(float) * df["latency.decode_steps"].astype(float),
    )
    labels = list(dict.fromkeys(data.sort_values([f"cell.{k}" for k in keys])["label"]))
    colors = sns.color_palette("colorblind", 2)
    g = grid(
        data,
        "cell.kv_mode",
        list(df["cell.kv_mode"].cat.categories),
        sharey=True,
        sharex=False,
        height=0.9 + 0.28 * len(labels),
        aspect=4.2 / (0.9 + 0.28 * len(labels)),
    )

    def panel(data, **_):
        ax = plt.gca()
        ok = data[data["ok"]]
        ypos = ok["label"].map(labels.index)
        ax.barh(ypos, ok["prefill"], color=colors[0], height=0.7)
        ax.barh(ypos, ok["decode"], left=ok["prefill"], color=colors[1], height=0.7)
        bad = data[~data["ok"]]
        for y, status in zip(bad["label"].map(labels.index), bad["status"]):  # the marker, turned on its side
            ax.scatter(
                [0.03],
                [y],
                transform=ax.get_yaxis_transform(),
                marker="X",
                s=60,
                zorder=6,
                clip_on=False,
                color=FAILED.get(str(status), ("#9467bd", ""))[0],
            )
        ax.set_xlim(left=0)

    g.map_dataframe(panel)
    _titles(g, "kv_mode = {}")
    for ax in g.axes.flat:
        ax.set_yticks(range(len(labels)), labels, fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)
    g.set_axis_labels("ms per generation (median)", "cell")
    handles = [
        Patch(color=colors[0], label="prefill (time to first token)"),
        Patch(color=colors[1], label="decode (steps × median ms/step)"),
        *failed_handles(df.loc[~df["ok"], "status"]),
    ]
    g.add_legend(legend_data={h.get_label(): h for h in handles})
    g.figure.suptitle("Prefill vs decode: where one generation's time goes", y=1.02)
    return g.figure


def heatmap_figure(df: pd.DataFrame) -> plt.Figure:
    """none ms / cached ms over batch x prompt length per cached mode; colour on a log scale centred on 1."""
    sp = agg.speedup_table(df)
    if not len(sp):
        raise Skip("no cached cell has a `none` cell beside it")
    if sp["cell.batch"].nunique() < 2 and sp["cell.prompt_len"].nunique() < 2:
        raise Skip("one batch and one prompt length: see speedup_vs_model / speedup_vs_new_tokens")
    long = pd.concat(
        [
            sp.assign(metric=name, v=sp[col].astype(float))
            for col, name in (("decode_speedup", "decode"), ("total_speedup", "whole generation"))
        ]
    )
    long["facet"] = long["metric"] + facet_label(long, ("cell.kv_mode", "cell.batch", "cell.prompt_len")).map(
        lambda s: f", {s}" if s else ""
    )
    vals = long["v"][long["v"] > 0]
    span = max(float(vals.max()), 1 / float(vals.min()), 2.0) if len(vals) else 2.0
    norm, cmap = mcolors.LogNorm(1 / span, span), matplotlib.colormaps["RdBu"]
    batches, prompts = sorted(set(sp["cell.batch"])), sorted(set(sp["cell.prompt_len"]))
    g = grid(
        long,
        "cell.kv_mode",
        [m for m in sp["cell.kv_mode"].cat.categories if m != "none"],
        sharex=False,
        sharey=False,
        height=max(2.4, 0.45 * len(batches) + 1.3),
        aspect=max(4.2, 0.75 * len(prompts) + 1.4) / max(2.4, 0.45 * len(batches) + 1.3),
    )

    def panel(data, **_):
        ax = plt.gca()
        wide = data.pivot_table(
            index="cell.batch", columns="cell.prompt_len", values="v", aggfunc="first", observed=True
        ).reindex(index=batches, columns=prompts)
        sns.heatmap(
            wide,
            ax=ax,
            cmap=cmap,
            norm=norm,
            cbar=False,
            annot=wide.map(lambda v: f"{v:.2f}×"),
            fmt="",
            annot_kws={"fontsize": 8},
            linewidths=0.5,
            linecolor="white",
        )
        bad = data[data["v"].isna()]
        ax.grid(False)
        for b, p, s, n in zip(bad["cell.batch"], bad["cell.prompt_len"], bad["status"], bad["none_status"]):
            status = s if s != "ok" else n
            ax.scatter(
                [prompts.index(p) + 0.5],
                [batches.index(b) + 0.5],
                marker="X",
                s=60,
                zorder=6,
                color=FAILED.get(str(status), ("#9467bd", ""))[0],
            )
        ax.set_xlabel("prompt length (tokens)")
        ax.set_ylabel("batch")
        ax.tick_params(axis="y", rotation=0)

    g.map_dataframe(panel)
    _titles(g, "{} vs none")
    g.figure.subplots_adjust(hspace=0.6, top=0.88, right=0.85)
    cbar = g.figure.colorbar(
        ScalarMappable(norm=norm, cmap=cmap), ax=g.axes, shrink=0.8, label="speedup = none ms / mode ms"
    )
    ticks(cbar.ax.yaxis, 1 / span, span, log=True, fmt="{:g}×")
    bad = long.loc[long["v"].isna()]
    if len(bad):
        g.figure.legend(
            handles=failed_handles(bad["status"].where(bad["status"] != "ok", bad["none_status"])),
            loc="lower center",
            frameon=False,
            ncols=3,
            bbox_to_anchor=(0.5, -0.05),
        )
    g.figure.suptitle("Speedup of each KV cache over none", y=1.02)
    return g.figure


# ---------------------------------------------------------------------------------- entry points


def _read(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if path.is_file() and path.stat().st_size else None


def _save(fig, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=SAVE_METADATA[fmt], bbox_inches="tight")
        kvrecord.write_atomic_bytes(out_dir / f"{stem}.{fmt}", buf.getvalue())
        paths.append(out_dir / f"{stem}.{fmt}")
    return paths


def render(
    tables_dir: Path,
    out_dir: Path,
    only: Sequence[str] | None = None,
    log: Callable[[str], None] = lambda line: print(line, file=sys.stderr),
) -> list[Path]:
    """Draw every figure the sweep supports (PNG and SVG each); say in one line why any other is
    left out (and remove an older copy of it). `only`: just these stems."""
    unknown = sorted(set(only or ()) - set(FIGURE_STEMS))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURE_STEMS)}")
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    df = fr.read_cells(tables_dir / "cells.csv")
    builders = {
        "decode_ms_per_token": lambda: decode_figure(df),
        "peak_memory": lambda: memory_figure(df),
        "prefill_decode_split": lambda: split_figure(df),
        "speedup_heatmap": lambda: heatmap_figure(df),
        "per_token_latency": lambda: speedup_figures.per_token_figure(df, _read(tables_dir / "per_step.csv")),
        "floor_fraction": lambda: floor_figure(df),
        "speedup_vs_model": lambda: speedup_figures.axis_speedup_figure(df, "model"),
        "speedup_vs_new_tokens": lambda: speedup_figures.axis_speedup_figure(df, "new_tokens"),
        "kv_variants": lambda: speedup_figures.kv_variants_figure(df),
    }
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), matplotlib.rc_context(RC):
        for stem, build in builders.items():
            if only is not None and stem not in only:
                continue
            try:
                fig = build()
            except Skip as why:
                log(f"figures: {stem} left out of this sweep: {why}")
                for fmt in FORMATS:  # a figure left out must not survive from an older run
                    (out_dir / f"{stem}.{fmt}").unlink(missing_ok=True)
                continue
            written += _save(fig, out_dir, stem)
            plt.close(fig)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench figures", description="A sweep's tables -> figures (PNG + SVG).")
    parser.add_argument("--tables", required=True, type=Path, help="the sweep's tables directory (cells.csv, ...)")
    parser.add_argument("--out", required=True, type=Path, help="figures directory to write")
    parser.add_argument("--only", nargs="+", metavar="FIGURE", default=None, help=f"of {', '.join(FIGURE_STEMS)}")
    args = parser.parse_args(argv)
    try:
        paths = render(args.tables, args.out, only=args.only)
    except (FileNotFoundError, ValueError) as exc:
        print(f"figures: error: {exc}", file=sys.stderr)
        return 1
    print(f"figures: {len(paths)} files -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
