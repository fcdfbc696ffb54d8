"""Tables -> figures (PNG via Agg, and SVG), byte-identical for the same CSVs.

Reads cells.csv, per_step.csv and speedup.csv written by kvbench.analysis.aggregate, and
speedup_by_model.csv, speedup_by_length.csv and kv_variants.csv where the sweep varied them.  Cells
that did not run to the end (oom, unsupported, error) are drawn as marked points at the top
edge of their panel, never silently dropped.  A figure whose data is absent is skipped (and a
stale copy from an earlier run is removed) rather than drawn empty.
"""

from __future__ import annotations

import argparse
import io
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib import colors as mcolors
from matplotlib.axes import Axes
from matplotlib.cm import ScalarMappable
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import (FixedLocator, FuncFormatter, LogLocator, MaxNLocator,
                               NullLocator)

from kvbench.analysis.atomic import atomic_write_bytes
from kvbench.analysis.records import (CELL_KEYS, KV_MODE_ORDER, WRITEUP_002_LENGTH,
                                      WRITEUP_003_MODEL)

MIB = 2**20
FORMATS = ("png", "svg")
FIGURE_STEMS = ("decode_ms_per_token", "peak_memory", "prefill_decode_split", "speedup_heatmap",
                "per_token_latency", "floor_fraction", "speedup_vs_model", "speedup_vs_new_tokens",
                "kv_variants")

# Reproducible bytes: no timestamps or version strings in the files, a fixed salt for SVG ids,
# text as paths (no dependence on fonts installed where the SVG is viewed).
RC: dict[str, Any] = {"svg.hashsalt": "kvbench", "svg.fonttype": "path", "svg.id": None,
                      "savefig.dpi": 110, "figure.dpi": 110, "font.family": "DejaVu Sans",
                      "axes.titlesize": "medium", "figure.titlesize": "large"}
SAVE_METADATA = {"png": {"Software": None},
                 "svg": {"Date": None, "Creator": None}}

# How each non-ok status is marked (marker, colour, legend text).
STATUS_STYLE = {"oom": ("X", "#d62728", "out of memory (not measured)"),
                "unsupported": ("X", "#7f7f7f", "unsupported (not measured)"),
                "error": ("X", "#000000", "error (not measured)")}
OTHER_STATUS = ("X", "#9467bd", "not measured")

# Settings that are panel axes or line colours; every other cell setting that varies in a
# sweep (model, dtype, attention, new_tokens, ...) becomes a row of panels.
AXIS_COLUMNS = ("cell.kv_mode", "cell.batch", "cell.prompt_len")
FACET_CANDIDATES = tuple(f"cell.{k}" for k in CELL_KEYS if f"cell.{k}" not in AXIS_COLUMNS)


# ------------------------------------------------------------------------------ helpers

def _label(value: Any) -> str:
    """One spelling per value whichever CSV it came from (16 and 16.0 alike; NaN -> 'none')."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA:
        return "none"
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


def _natural(text: str) -> tuple:
    """Numbers in numeric order (16 before 128), then text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _modes(df: pd.DataFrame) -> list[str]:
    present = set(df["cell.kv_mode"].astype(str))
    return sorted(present, key=lambda m: (KV_MODE_ORDER.index(m) if m in KV_MODE_ORDER else 99, m))


def _coord_key(df: pd.DataFrame, exclude: Sequence[str] = ()) -> pd.Series:
    """A string per row naming its cell coordinates, to join tables read from different CSVs."""
    cols = [c for c in FACET_CANDIDATES + AXIS_COLUMNS if c in df.columns and c not in exclude]
    if not len(df):
        return pd.Series([], dtype=object)
    return df[cols].apply(lambda r: "|".join(_label(v) for v in r), axis=1)


def _facets(df: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(row label, rows) per combination of the non-axis settings that vary; one row if none."""
    varying = [c for c in FACET_CANDIDATES
               if c in df.columns and df[c].map(_label).nunique() > 1]
    if not varying:
        return [("", df)]
    keys = df[varying].apply(lambda r: tuple(_label(v) for v in r), axis=1)
    out = []
    for key in sorted(set(keys), key=lambda k: tuple(_natural(v) for v in k)):
        label = ", ".join(f"{c.removeprefix('cell.')}={v}" for c, v in zip(varying, key))
        out.append((label, df[keys == key]))
    return out


def _status_style(status: str) -> tuple[str, str, str]:
    return STATUS_STYLE.get(status, OTHER_STATUS)


def _status_handles(statuses: set[str]) -> list[Line2D]:
    handles = []
    for status in sorted(statuses):
        marker, color, text = _status_style(status)
        handles.append(Line2D([], [], marker=marker, color=color, linestyle="none",
                              markersize=9, label=text if status in STATUS_STYLE
                              else f"{status} ({text})"))
    return handles


def _mark_not_ok(ax: Axes, bad: pd.DataFrame, batch_colors: dict[str, Any]) -> None:
    """Non-ok cells as X at the panel's top edge over their prompt length, labelled b<batch>;
    stacked downwards when several batches failed at one prompt length."""
    stack: dict[str, int] = {}
    for _, row in bad.sort_values(["cell.prompt_len", "cell.batch"]).iterrows():
        x = row["cell.prompt_len"]
        level = stack.get(_label(x), 0)
        stack[_label(x)] = level + 1
        marker, color, _ = _status_style(str(row["status"]))
        y = 0.95 - 0.09 * level
        ax.scatter([x], [y], transform=ax.get_xaxis_transform(), marker=marker, s=70,
                   color=color, zorder=6, clip_on=False, edgecolors="white", linewidths=0.5)
        ax.annotate(f"b{_label(row['cell.batch'])}", (x, y), xycoords=ax.get_xaxis_transform(),
                    xytext=(6, 0), textcoords="offset points", va="center", fontsize=7,
                    color=batch_colors.get(_label(row["cell.batch"]), color))


def _no_cells(ax: Axes) -> None:
    """Say so, rather than leave a panel blank that could read as 'all zero'."""
    ax.text(0.5, 0.5, "no cells in this sweep", transform=ax.transAxes, ha="center",
            va="center", color="0.5", fontsize=9)


def _prompt_axis(ax: Axes, prompts: list[float]) -> None:
    """Log2 x axis ticked exactly at the measured prompt lengths."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(prompts)
    ax.set_xticklabels([_label(p) for p in prompts])
    ax.xaxis.set_minor_locator(NullLocator())
    if len(prompts) == 1:  # one point: give it some room
        ax.set_xlim(prompts[0] / 1.5, prompts[0] * 1.5)


def _log_y(ax: Axes) -> None:
    """Log y with plain numbers (not 2×10^0), ticked densely enough that a panel spanning less
    than a decade still has several labels."""
    ax.set_yscale("log")
    ax.relim()
    ax.autoscale_view()
    lo, hi = ax.get_ylim()
    decades = math.log10(hi / lo) if lo > 0 and hi > lo else 1.0
    subs = (tuple(float(i) for i in range(1, 10)) if decades < 1.2
            else (1.0, 2.0, 5.0) if decades < 4 else (1.0,))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    ax.yaxis.set_minor_locator(NullLocator())


def _grid(nrows: int, ncols: int, width: float = 4.2, height: float = 3.4,
          **kw: Any) -> tuple[Figure, np.ndarray]:
    # A bare Figure, not pyplot: no global figure registry, no GUI backend chosen behind the
    # caller's back; savefig renders PNG with Agg and SVG with the SVG backend.
    fig = Figure(figsize=(width * ncols + 1.6, height * nrows + 0.9), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False, **kw)


def _save(fig: Figure, out_dir: Path, stem: str) -> list[Path]:
    paths = []
    for fmt in FORMATS:
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, metadata=SAVE_METADATA[fmt])
        path = out_dir / f"{stem}.{fmt}"
        atomic_write_bytes(path, buf.getvalue())
        paths.append(path)
    return paths


def _batch_palette(df: pd.DataFrame) -> dict[str, Any]:
    batches = sorted({_label(b) for b in df["cell.batch"]}, key=_natural)
    # viridis ends in pale yellow: take one colour more and drop it, so the largest batch
    # stays visible on white
    colors = sns.color_palette("viridis", n_colors=len(batches) + 1)[:len(batches)]
    return dict(zip(batches, colors))


# ------------------------------------------------------------------------------ figures

def _line_figure(cells: pd.DataFrame, y: str, ylabel: str, title: str, *, logy: bool = True,
                 yerr: tuple[str, str] | None = None, modes: list[str] | None = None,
                 hline: tuple[float, str] | None = None) -> Figure | None:
    """Panel per kv mode (columns) and per varying setting (rows); a line per batch over
    prompt length; non-ok cells marked at the top edge."""
    if y not in cells.columns:
        return None
    ok_mask = (cells["status"] == "ok") & cells[y].notna()
    modes = modes or _modes(cells)
    cells = cells[cells["cell.kv_mode"].isin(modes)]
    if not len(cells):
        return None  # (an all-oom sweep still gets its marks drawn)
    facets = _facets(cells)
    palette = _batch_palette(cells)
    prompts = sorted(set(cells["cell.prompt_len"].astype(float)))
    fig, axes = _grid(len(facets), len(modes), sharex=True, sharey=True)
    statuses: set[str] = set()
    for r, (facet_label, fdf) in enumerate(facets):
        for c, mode in enumerate(modes):
            ax = axes[r, c]
            sub = fdf[fdf["cell.kv_mode"] == mode]
            ok = sub[ok_mask[sub.index]].copy()
            ok["batch"] = ok["cell.batch"].map(_label)
            if len(ok):
                sns.lineplot(data=ok, x="cell.prompt_len", y=y, hue="batch",
                             hue_order=[b for b in palette if b in set(ok["batch"])],
                             palette=palette, marker="o", errorbar=None, legend=False, ax=ax)
                if yerr is not None:
                    for b, bdf in ok.groupby("batch", sort=True):
                        bdf = bdf.sort_values("cell.prompt_len")
                        lo = (bdf[y] - bdf[yerr[0]]).clip(lower=0)
                        hi = (bdf[yerr[1]] - bdf[y]).clip(lower=0)
                        ax.errorbar(bdf["cell.prompt_len"], bdf[y], yerr=[lo, hi], fmt="none",
                                    ecolor=palette[b], elinewidth=0.8, capsize=2)
            bad = sub[sub["status"] != "ok"]
            statuses.update(bad["status"].astype(str))
            _mark_not_ok(ax, bad, palette)
            if not len(sub):
                _no_cells(ax)
            if hline is not None:
                ax.axhline(hline[0], color="0.3", linestyle=":", linewidth=1)
            ax.set_title(f"kv_mode = {mode}" + (f"\n{facet_label}" if facet_label else ""))
            ax.set_xlabel("prompt length (tokens)" if r == len(facets) - 1 else "")
            ax.set_ylabel(ylabel if c == 0 else "")
    for ax in axes.flat:
        _prompt_axis(ax, prompts)
    if not ok_mask[cells.index].any():  # nothing measured: no scale to pretend
        axes[0, 0].set_yticks([])
        axes[0, 0].text(0.5, 0.5, "no cell finished (status ok)", transform=axes[0, 0].transAxes,
                        ha="center", va="center", color="0.5", fontsize=9)
    elif logy:
        _log_y(axes[0, 0])  # sharey: every panel follows
    handles = [Line2D([], [], color=col, marker="o", label=f"batch {b}")
               for b, col in palette.items()]
    if hline is not None:
        handles.append(Line2D([], [], color="0.3", linestyle=":", label=hline[1]))
    if yerr is not None:
        handles.append(Line2D([], [], color="0.3", marker="|", linestyle="none",
                              markersize=10, label="min–max over iterations"))
    handles += _status_handles(statuses)
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    fig.suptitle(title)
    return fig


def decode_figure(cells: pd.DataFrame) -> Figure | None:
    return _line_figure(
        cells, "latency.decode_ms_per_token.median", "decode ms / token (median, log)",
        "Decode latency per token vs prompt length",
        yerr=("latency.decode_ms_per_token.min", "latency.decode_ms_per_token.max"))


def memory_figure(cells: pd.DataFrame) -> Figure | None:
    """Torch peak allocated where reported (GPU), else process RSS peak (CPU); labelled so."""
    cells = cells.copy()
    nan = pd.Series(np.nan, index=cells.index)
    torch_peak = cells.get("memory.torch_peak_allocated_bytes", nan).astype(float)
    rss = cells.get("memory.rss_peak_bytes", nan).astype(float)
    torch_peak = torch_peak.where(torch_peak > 0)  # 0 = not tracked (CPU), as in aggregate
    cells["peak_memory_mib"] = torch_peak.fillna(rss.where(rss > 0)) / MIB
    ok = cells["status"] == "ok"
    sources = [name for name, used in (
        ("torch peak allocated", (ok & torch_peak.notna()).any()),
        ("process RSS peak", (ok & torch_peak.isna() & rss.notna()).any())) if used]
    return _line_figure(cells, "peak_memory_mib",
                        f"peak memory, MiB ({' / '.join(sources) or 'n/a'}; log)",
                        "Peak memory vs prompt length")


def floor_figure(cells: pd.DataFrame) -> Figure | None:
    return _line_figure(
        cells, "analytic.fraction_of_floor", "analytic floor / measured (log)",
        "Decode step vs its analytic lower bound",
        hline=(1.0, "at the floor (1.0); above is suspect"))


def split_figure(cells: pd.DataFrame) -> Figure | None:
    """One horizontal stacked bar per cell: prefill ms then decode ms of one generation."""
    need = ("latency.prefill_ms.median", "latency.decode_ms_per_token.median",
            "latency.decode_steps")
    if any(c not in cells.columns for c in need) or not len(cells):
        return None
    modes = _modes(cells)
    facets = _facets(cells)
    labels = sorted({(_label(b), _label(p)) for b, p in zip(cells["cell.batch"],
                                                            cells["cell.prompt_len"])},
                    key=lambda bp: (_natural(bp[0]), _natural(bp[1])))
    ypos = {bp: i for i, bp in enumerate(labels)}
    colors = sns.color_palette("colorblind", 2)
    fig, axes = _grid(len(facets), len(modes), height=0.9 + 0.28 * len(labels), sharey=True)
    statuses: set[str] = set()
    for r, (facet_label, fdf) in enumerate(facets):
        for c, mode in enumerate(modes):
            ax = axes[r, c]
            sub = fdf[fdf["cell.kv_mode"] == mode]
            if not len(sub):
                _no_cells(ax)
            for _, row in sub.iterrows():
                y = ypos[(_label(row["cell.batch"]), _label(row["cell.prompt_len"]))]
                prefill = row["latency.prefill_ms.median"]
                decode = row["latency.decode_ms_per_token.median"] * row["latency.decode_steps"]
                if row["status"] == "ok" and pd.notna(prefill) and pd.notna(decode):
                    ax.barh(y, prefill, color=colors[0], height=0.7)
                    ax.barh(y, decode, left=prefill, color=colors[1], height=0.7)
                else:
                    status = str(row["status"])
                    statuses.add(status)
                    marker, color, _ = _status_style(status)
                    ax.scatter([0.03], [y], transform=ax.get_yaxis_transform(), marker=marker,
                               s=60, color=color, zorder=6, clip_on=False)
                    ax.annotate(status, (0.03, y), xycoords=ax.get_yaxis_transform(),
                                xytext=(8, 0), textcoords="offset points", va="center",
                                fontsize=7, color=color)
            ax.set_title(f"kv_mode = {mode}" + (f"\n{facet_label}" if facet_label else ""))
            ax.set_xlabel("ms per generation (median)")
            ax.set_xlim(left=0)
    for ax in axes.flat:
        ax.set_yticks(range(len(labels)))
        ax.set_yticklabels([f"b{b} · p{p}" for b, p in labels], fontsize=8)
        ax.set_ylim(len(labels) - 0.5, -0.5)  # first cell at the top
    for ax in axes[:, 0]:
        ax.set_ylabel("cell (batch · prompt length)")
    handles = [Patch(color=colors[0], label="prefill (time to first token)"),
               Patch(color=colors[1], label="decode (steps × median ms/step)")]
    handles += _status_handles(statuses)
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    fig.suptitle("Prefill vs decode: where one generation's time goes")
    return fig


def _speedup_ticks(lo: float, hi: float) -> list[float]:
    base = [1, 2, 5]
    ticks = [m * 10.0**e for e in range(-3, 5) for m in base]
    return [t for t in ticks if lo <= t <= hi] or [1.0]


def speedup_figure(speedup: pd.DataFrame) -> Figure | None:
    """Heatmap batch × prompt length per cached mode (columns); rows: decode and total speedup
    per varying setting. Colour on a log scale centred on 1 (blue faster, red slower)."""
    if speedup is None or not len(speedup):
        return None
    metrics = [("decode_speedup", "decode"), ("total_speedup", "whole generation")]
    values = pd.concat([speedup[m] for m, _ in metrics]).astype(float).dropna()
    values = values[values > 0]
    span = max(float(values.max()), 1.0 / float(values.min()), 2.0) if len(values) else 2.0
    norm = mcolors.LogNorm(vmin=1.0 / span, vmax=span)
    cmap = matplotlib.colormaps["RdBu"]
    modes = _modes(speedup)
    facets = _facets(speedup)
    batches = sorted({_label(b) for b in speedup["cell.batch"]}, key=_natural)
    prompts = sorted({_label(p) for p in speedup["cell.prompt_len"]}, key=_natural)
    fig, axes = _grid(len(facets) * len(metrics), len(modes),
                      width=max(4.2, 0.75 * len(prompts) + 1.4),
                      height=max(2.4, 0.45 * len(batches) + 1.3))
    statuses: set[str] = set()
    for f, (facet_label, fdf) in enumerate(facets):
        for m, (metric, metric_label) in enumerate(metrics):
            for c, mode in enumerate(modes):
                ax = axes[f * len(metrics) + m, c]
                sub = fdf[fdf["cell.kv_mode"] == mode]
                grid = np.full((len(batches), len(prompts)), np.nan)
                notes: dict[tuple[int, int], tuple[str, str]] = {}
                for _, row in sub.iterrows():
                    i = batches.index(_label(row["cell.batch"]))
                    j = prompts.index(_label(row["cell.prompt_len"]))
                    value = row[metric]
                    if pd.notna(value) and value > 0:
                        grid[i, j] = float(value)
                    elif row["status"] != "ok":
                        notes[(i, j)] = (str(row["status"]), str(row["status"]))
                    elif row["none_status"] != "ok":
                        notes[(i, j)] = (str(row["none_status"]), f"none\n{row['none_status']}")
                if not len(sub):
                    _no_cells(ax)
                frame = pd.DataFrame(grid, index=batches, columns=prompts)
                sns.heatmap(frame, ax=ax, cmap=cmap, norm=norm, vmin=norm.vmin, vmax=norm.vmax,
                            cbar=False, annot=False,
                            linewidths=0.5, linecolor="white", square=False)
                ax.grid(False)  # the style's grid would show through empty (not-ok) cells
                for (i, j), v in np.ndenumerate(grid):
                    if not np.isnan(v):
                        r, g, b, _ = cmap(norm(v))
                        dark = 0.299 * r + 0.587 * g + 0.114 * b < 0.5
                        ax.text(j + 0.5, i + 0.5, f"{v:.2f}×", ha="center", va="center",
                                fontsize=8, color="white" if dark else "black")
                for (i, j), (status, text) in sorted(notes.items()):
                    statuses.add(status)
                    marker, color, _ = _status_style(status)
                    ax.scatter([j + 0.5], [i + 0.35], marker=marker, s=60, color=color, zorder=6)
                    ax.text(j + 0.5, i + 0.72, text.replace("\n", " "), ha="center",
                            va="center", fontsize=6.5, color=color)
                title = f"{mode} vs none: {metric_label}"
                ax.set_title(title + (f"\n{facet_label}" if facet_label else ""))
                ax.set_xlabel("prompt length (tokens)")
                ax.set_ylabel("batch" if c == 0 else "")
                ax.tick_params(axis="y", rotation=0)
    sm = ScalarMappable(norm=norm, cmap=cmap)
    cbar = fig.colorbar(sm, ax=axes, shrink=0.8, label="speedup = none ms / mode ms")
    ticks = _speedup_ticks(1.0 / span, span)
    cbar.set_ticks(ticks)
    cbar.ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
    cbar.ax.yaxis.set_minor_locator(NullLocator())
    if statuses:
        fig.legend(handles=_status_handles(statuses), loc="outside lower center",
                   frameon=False, ncols=len(statuses))
    fig.suptitle("Speedup of each KV cache over none")
    return fig


def per_token_figure(per_step: pd.DataFrame, cells: pd.DataFrame | None) -> Figure | None:
    """Write-up 000's chart: latency of each decode step, KV-cache MiB on a second y axis,
    for one cell per mode at shared coordinates (the most modes, smallest batch, shortest
    prompt)."""
    if per_step is None or not len(per_step):
        return None
    per_step = per_step.copy()
    per_step["coords"] = _coord_key(per_step, exclude=("cell.kv_mode",))
    candidates = []
    for coords, cdf in per_step.groupby("coords", sort=True):
        first = cdf.iloc[0]
        # the shortest prompt: there the cache grows by the largest fraction of its size
        candidates.append((-cdf["cell.kv_mode"].nunique(), float(first["cell.batch"]),
                           float(first["cell.prompt_len"]), coords))
    chosen = min(candidates)[3]
    sel = per_step[per_step["coords"] == chosen]
    first = sel.iloc[0]
    modes = _modes(sel)
    palette = dict(zip(KV_MODE_ORDER, sns.color_palette("colorblind", len(KV_MODE_ORDER))))
    fig = Figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.subplots()
    ax2 = ax.twinx()
    handles: list[Any] = []
    for mode in modes:
        mdf = sel[sel["cell.kv_mode"] == mode].sort_values("step")
        color = palette.get(mode, "0.4")
        ax.plot(mdf["step"], mdf["decode_ms"], color=color, marker="o", markersize=3,
                label=f"{mode}: decode ms")
        handles.append(Line2D([], [], color=color, marker="o", markersize=3,
                              label=f"{mode}: decode ms / step"))
        if "kv_cache_mib" in mdf.columns and mdf["kv_cache_mib"].notna().any():
            ax2.plot(mdf["step"], mdf["kv_cache_mib"], color=color, linestyle="--")
            handles.append(Line2D([], [], color=color, linestyle="--",
                                  label=f"{mode}: KV cache MiB (right)"))
    statuses: set[str] = set()
    if cells is not None and len(cells):
        ckey = _coord_key(cells, exclude=("cell.kv_mode",))
        bad = cells[(ckey == chosen) & (cells["status"] != "ok")]
        for _, row in bad.iterrows():
            marker, color, _ = _status_style(str(row["status"]))
            handles.append(Line2D([], [], marker=marker, color=color, linestyle="none",
                                  label=f"{row['cell.kv_mode']}: {row['status']} (no data)"))
            statuses.add(str(row["status"]))
    ax.set_xlabel("decode step (the cache then holds prompt + step tokens)")
    ax.set_ylabel("decode ms / step (median over iterations)")
    ax2.set_ylabel("KV cache, MiB (formula, whole batch)")
    ax.set_ylim(bottom=0)
    ax2.set_ylim(bottom=0)
    ax2.grid(False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3),
               fontsize=8, frameon=False)
    where = ", ".join(f"{c.removeprefix('cell.')} {_label(first[c])}" for c in (
        "cell.model", "cell.dtype", "cell.attention", "cell.batch", "cell.prompt_len",
        "cell.new_tokens") if c in sel.columns)
    ax.set_title(f"Per-token decode latency and KV-cache size\n{where}")
    return fig


# ------------------------------------------------------------------ speedup by model / length

def _kv_palette() -> dict[str, Any]:
    return dict(zip(KV_MODE_ORDER, sns.color_palette("colorblind", len(KV_MODE_ORDER))))


# The other settings of a speedup_by_* row; those that vary become rows of panels.
_AXIS_FACETS = ("model", "dtype", "attention", "n_kv_head", "batch", "prompt_len", "new_tokens")


def _plain_facets(df: pd.DataFrame, columns: Sequence[str]) -> list[tuple[str, pd.DataFrame]]:
    """Like _facets, for tables with plain column names."""
    varying = [c for c in columns if c in df.columns and df[c].map(_label).nunique() > 1]
    if not varying:
        return [("", df)]
    # an empty n_kv_head is the plain model: all K/V heads
    spell = {c: (lambda v: "all" if _label(v) == "none" else _label(v)) if c == "n_kv_head"
             else _label for c in varying}
    keys = df[varying].apply(lambda r: tuple(spell[c](v) for c, v in zip(varying, r)), axis=1)
    out = []
    for key in sorted(set(keys), key=lambda k: tuple((0, 0.0, "") if v == "all" else _natural(v)
                                                     for v in k)):
        out.append((", ".join(f"{c}={v}" for c, v in zip(varying, key)), df[keys == key]))
    return out


def _models_by_size(df: pd.DataFrame) -> list[str]:
    """Model names by parameter count (the largest reported), undescribed ones last by name."""
    params = df.groupby(df["model"].astype(str))["n_params"].max()
    return sorted(params.index, key=lambda m: (0, float(params[m]), m) if pd.notna(params[m])
                  else (1, 0.0, m))


def _model_tick(df: pd.DataFrame, model: str) -> str:
    rows = df[df["model"].astype(str) == model]
    params, layers = rows["n_params"].max(), rows["n_layer"].max()
    parts = [model]
    if pd.notna(params):
        parts.append(f"{float(params) / 1e6:.0f}M params")
    if pd.notna(layers):
        parts.append(f"{int(layers)} layers")
    return "\n".join(parts)


def _axis_speedup_figure(table: pd.DataFrame | None, axis: str) -> Figure | None:
    """Speedup (none / cached) vs model size or generation length: a column for the whole
    generation and one per decode token, a line per cached mode, a row per combination of the
    other settings that vary. The write-ups' claims are drawn in grey beside the measurements."""
    if table is None or not len(table) or axis not in table.columns \
            or table[axis].map(_label).nunique() < 2:
        return None
    table = table.copy()
    if axis == "model":
        order = _models_by_size(table)
        xpos = {m: float(i) for i, m in enumerate(order)}
        table["x"] = table["model"].astype(str).map(xpos)
        xticks = [xpos[m] for m in order]
        xlabels = [_model_tick(table, m) for m in order]
        claims = {xpos[m]: (v, v) for m, v in WRITEUP_003_MODEL.items() if m in xpos}
        claim_label = "write-up 003: T4 GPU, whole generation (claimed)"
        xlabel = "model (ordered by parameter count)"
    else:
        table["x"] = table[axis].astype(float)
        xticks = sorted(set(table["x"]))
        xlabels = [_label(x) for x in xticks]
        claims = {float(n): lohi for n, lohi in WRITEUP_002_LENGTH.items() if float(n) in xticks}
        claim_label = "write-up 002: claimed range (no hardware stated)"
        xlabel = "new tokens generated (log)"
    metrics = [("total_speedup", "whole generation (total time)"),
               ("decode_speedup", "per decode token")]
    facets = _plain_facets(table, [c for c in _AXIS_FACETS if c != axis])
    modes = _modes(table.rename(columns={"kv_mode": "cell.kv_mode"}))
    palette = _kv_palette()
    fig, axes = _grid(len(facets), len(metrics), width=max(4.2, 1.1 * len(xticks) + 1.5),
                      sharey=True)
    statuses: set[str] = set()
    drew_claims = False
    values: list[float] = []
    for r, (facet_label, fdf) in enumerate(facets):
        for c, (metric, metric_label) in enumerate(metrics):
            ax = axes[r, c]
            for mode in modes:
                sub = fdf[fdf["kv_mode"].astype(str) == mode].sort_values("x")
                ok = sub[sub[metric].notna() & (sub[metric].astype(float) > 0)]
                color = palette.get(mode, "0.4")
                if len(ok):
                    ax.plot(ok["x"], ok[metric].astype(float), color=color, marker="o")
                    for x, v in zip(ok["x"], ok[metric].astype(float)):
                        values.append(float(v))
                        ax.annotate(f"{v:.2f}×", (x, v), xytext=(5, 4),
                                    textcoords="offset points", fontsize=7, color=color)
                for level, (_, row) in enumerate(sub[sub[metric].isna()].iterrows()):
                    status = str(row["status"]) if row["status"] != "ok" \
                        else str(row["none_status"])
                    statuses.add(status)
                    marker, scolor, _ = _status_style(status)
                    y = 0.95 - 0.09 * level
                    ax.scatter([row["x"]], [y], transform=ax.get_xaxis_transform(),
                               marker=marker, s=60, color=scolor, zorder=6, clip_on=False)
                    text = mode if row["status"] != "ok" else f"{mode} (none {status})"
                    ax.annotate(text, (row["x"], y), xycoords=ax.get_xaxis_transform(),
                                xytext=(6, 0), textcoords="offset points", va="center",
                                fontsize=7, color=color)
            plain = "n_kv_head" not in fdf.columns or fdf["n_kv_head"].isna().all()
            if c == 0 and claims and plain:  # the write-ups ran plain multi-head models
                drew_claims = True
                for x, (lo, hi) in sorted(claims.items()):
                    values += [lo, hi]
                    if lo == hi:
                        ax.scatter([x], [lo], marker="D", s=36, color="0.55", zorder=5)
                    else:
                        ax.plot([x, x], [lo, hi], color="0.55", linewidth=5, alpha=0.6,
                                solid_capstyle="butt", zorder=1)
            ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1)
            ax.set_title(metric_label + (f"\n{facet_label}" if facet_label else ""))
            ax.set_xlabel(xlabel if r == len(facets) - 1 else "")
            ax.set_ylabel("speedup = none / cached (log)" if c == 0 else "")
    for ax in axes.flat:
        if axis != "model":
            ax.set_xscale("log")
        ax.set_xticks(xticks)
        ax.set_xticklabels(xlabels, fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        if axis == "model":
            ax.set_xlim(-0.5, len(xticks) - 0.5)
        else:
            ax.set_xlim(min(xticks) / 1.4, max(xticks) * 1.4)
    if values:
        ax0 = axes[0, 0]
        ax0.set_yscale("log")
        ax0.relim()
        ax0.autoscale_view()
        lo, hi = ax0.get_ylim()
        # keep the 1x line in view, and room at the top for the labels and not-ok marks
        lo, hi = min(lo, 0.8), hi * (2.0 if statuses else 1.3)
        ax0.set_ylim(lo, hi)
        ticks = [m * 10.0**e for e in range(-3, 5) for m in (1, 1.5, 2, 3, 5, 7)]
        ticks = [t for t in ticks if lo <= t <= hi]
        if len(ticks) > 8:
            ticks = _speedup_ticks(lo, hi)
        ax0.yaxis.set_major_locator(FixedLocator(ticks))
        ax0.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}×"))
        ax0.yaxis.set_minor_locator(NullLocator())
    handles: list[Any] = [Line2D([], [], color=palette.get(m, "0.4"), marker="o",
                                 label=f"{m} vs none") for m in modes]
    handles.append(Line2D([], [], color="0.3", linestyle=":", label="1× (no speedup)"))
    if drew_claims:
        handles.append(Line2D([], [], color="0.55", marker="D" if axis == "model" else None,
                              linestyle="none" if axis == "model" else "-",
                              linewidth=5, alpha=0.6 if axis != "model" else 1.0,
                              label=claim_label))
    handles += _status_handles(statuses)
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    fig.suptitle("Speedup of the KV cache vs model size" if axis == "model" else
                 "Speedup of the KV cache vs generation length")
    return fig


def speedup_vs_model_figure(table: pd.DataFrame | None) -> Figure | None:
    return _axis_speedup_figure(table, "model")


def speedup_vs_new_tokens_figure(table: pd.DataFrame | None) -> Figure | None:
    return _axis_speedup_figure(table, "new_tokens")


def _variant_coords(fdf: pd.DataFrame) -> tuple[str, pd.DataFrame]:
    """One (batch, prompt, new tokens) per panel row: the one the most variants measured, then
    the largest batch x context (where the cache matters most)."""
    best: tuple | None = None
    for key, cdf in fdf.groupby(["batch", "prompt_len", "new_tokens"], sort=True):
        b, p, n = (float(k) for k in key)
        score = ((cdf["status"] == "ok").sum(), b * (p + n), b, p, n)
        if best is None or score > best[0]:
            best = (score, key, cdf)
    assert best is not None
    b, p, n = (_label(k) for k in best[1])
    return f"batch {b}, prompt {p}, new tokens {n}", best[2]


def kv_variants_figure(table: pd.DataFrame | None) -> Figure | None:
    """Bars per kv_mode x n_kv_head: KV-cache MiB, decode ms/token, max logit error vs none."""
    if table is None or not len(table):
        return None
    facets = _plain_facets(table, ("model", "dtype", "attention"))
    chosen = [(label, *_variant_coords(fdf)) for label, fdf in facets]
    n_bars = max(len(cdf) for _, _, cdf in chosen)
    panels = [("kv_cache_mib", "KV cache, MiB (measured, else formula)", "{:.3g}"),
              ("decode_ms_per_token", "decode ms / token (median)", "{:.3g}"),
              ("max_logit_diff", "max |logit − none's logit|", "{:.2g}")]
    palette = _kv_palette()
    fig, axes = _grid(len(chosen), len(panels), width=max(4.2, 0.85 * n_bars + 1.2),
                      height=3.6)
    statuses: set[str] = set()
    mismatch = False
    for r, (facet_label, coords, cdf) in enumerate(chosen):
        cdf = cdf.reset_index(drop=True)
        labels = [f"{m}\n{_label(h)} kv heads" for m, h in zip(cdf["kv_mode"], cdf["n_kv_head"])]
        measured = cdf["kv_cache_bytes_measured"].astype(float)
        mib = measured.where(measured.notna(),
                             cdf["kv_cache_bytes_formula"].astype(float)) / MIB
        data = {"kv_cache_mib": mib,
                "decode_ms_per_token": cdf["decode_ms_per_token"].astype(float),
                "max_logit_diff": cdf["max_logit_diff"].astype(float)}
        for c, (key, ylabel, fmt) in enumerate(panels):
            ax = axes[r, c]
            vals = data[key]
            for i, row in cdf.iterrows():
                color = palette.get(str(row["kv_mode"]), "0.4")
                v = vals[i]
                if row["status"] != "ok":
                    status = str(row["status"])
                    statuses.add(status)
                    marker, scolor, _ = _status_style(status)
                    ax.scatter([i], [0.06], transform=ax.get_xaxis_transform(), marker=marker,
                               s=60, color=scolor, zorder=6, clip_on=False)
                    ax.annotate(status, (i, 0.14), xycoords=ax.get_xaxis_transform(),
                                ha="center", fontsize=7, color=scolor)
                elif pd.isna(v):
                    note = ("n/a" if row["kv_mode"] != "none" else "no cache"
                            if key == "kv_cache_mib" else "reference")
                    ax.annotate(note, (i, 0.04), xycoords=ax.get_xaxis_transform(),
                                ha="center", fontsize=7, color="0.4")
                else:
                    differs = key == "max_logit_diff" and _label(row["matches_reference"]) \
                        == "False"
                    mismatch |= differs
                    ax.bar(i, v, color=color, width=0.7, hatch="//" if differs else None,
                           edgecolor="black" if differs else color)
                    ax.annotate(fmt.format(v), (i, v), xytext=(0, 2),
                                textcoords="offset points", ha="center", va="bottom",
                                fontsize=7)
            ax.set_xticks(range(len(labels)))
            ax.set_xticklabels(labels, fontsize=7)
            ax.set_xlim(-0.6, len(labels) - 0.4)
            ax.set_ylim(bottom=0)
            ax.margins(y=0.15)
            ax.set_ylabel(ylabel, fontsize=8)
            head = facet_label + ("; " if facet_label else "") + coords
            ax.set_title(ylabel.split(",")[0].split(" (")[0] + f"\n{head}", fontsize=8)
    handles: list[Any] = [Patch(color=palette.get(m, "0.4"), label=m)
                          for m in _modes(table.rename(columns={"kv_mode": "cell.kv_mode"}))]
    if mismatch:
        handles.append(Patch(facecolor="white", edgecolor="black", hatch="//",
                             label="greedy tokens differ from none's"))
    handles += _status_handles(statuses)
    fig.legend(handles=handles, loc="outside right center", frameon=False)
    fig.suptitle("KV-cache variants: memory, decode speed and the logit error they cost")
    return fig


# ------------------------------------------------------------------------------ entry points

def _read(path: Path) -> pd.DataFrame | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    df = pd.read_csv(path)
    return df if len(df.columns) else None


def render(tables_dir: Path, out_dir: Path, only: Sequence[str] | None = None) -> list[Path]:
    """Draw every figure the tables support; return the files written (PNG and SVG each).

    ``only``: draw just these figure stems (the others are neither drawn nor removed).
    """
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    cells = _read(tables_dir / "cells.csv")
    if cells is None:
        raise FileNotFoundError(f"{tables_dir / 'cells.csv'}: no cells table to draw")
    unknown = sorted(set(only or ()) - set(FIGURE_STEMS))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; known: "
                         f"{', '.join(FIGURE_STEMS)}")
    table = lambda name: _read(tables_dir / name)  # noqa: E731 (read when its figure is drawn)
    out_dir.mkdir(parents=True, exist_ok=True)
    builders: dict[str, Callable[[], Figure | None]] = {
        "decode_ms_per_token": lambda: decode_figure(cells),
        "peak_memory": lambda: memory_figure(cells),
        "prefill_decode_split": lambda: split_figure(cells),
        "speedup_heatmap": lambda: speedup_figure(table("speedup.csv")),
        "per_token_latency": lambda: per_token_figure(table("per_step.csv"), cells),
        "floor_fraction": lambda: floor_figure(cells),
        "speedup_vs_model": lambda: speedup_vs_model_figure(table("speedup_by_model.csv")),
        "speedup_vs_new_tokens":
            lambda: speedup_vs_new_tokens_figure(table("speedup_by_length.csv")),
        "kv_variants": lambda: kv_variants_figure(table("kv_variants.csv")),
    }
    written: list[Path] = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), \
            matplotlib.rc_context(RC):
        for stem, build in builders.items():
            if only is not None and stem not in only:
                continue
            fig = build()
            if fig is None:
                for fmt in FORMATS:  # a skipped figure must not survive from an older run
                    (out_dir / f"{stem}.{fmt}").unlink(missing_ok=True)
                continue
            written += _save(fig, out_dir, stem)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvbench figures",
        description="Draw the sweep's figures (PNG + SVG) from the aggregate tables.")
    parser.add_argument("--tables", required=True, type=Path,
                        help="directory with cells.csv, per_step.csv, speedup.csv")
    parser.add_argument("--out", required=True, type=Path, help="figures directory to write")
    parser.add_argument("--only", nargs="+", metavar="FIGURE", default=None,
                        help=f"draw just these figures (of {', '.join(FIGURE_STEMS)})")
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
