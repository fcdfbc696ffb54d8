"""The drawing conventions every figure shares: one kv-mode palette, one failed-cell marker,
one tick helper, panels faceted by seaborn from what the sweep varies, reproducible bytes."""

from __future__ import annotations

import math
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: seaborn's FacetGrid makes pyplot figures; no GUI backend here
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from kvbench.analysis import frame as fr  # noqa: E402
from kvbench.analysis import report as rp  # noqa: E402

# Reproducible bytes: no timestamps or versions in the files, a fixed salt for SVG ids, text as paths.
RC = {
    "svg.hashsalt": "kvbench",
    "svg.fonttype": "path",
    "svg.id": None,
    "savefig.dpi": 110,
    "figure.dpi": 110,
    "font.family": "DejaVu Sans",
    "axes.titlesize": "medium",
    "figure.titlesize": "large",
}
SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
PALETTE = dict(zip(fr.KV_MODE_ORDER, sns.color_palette("colorblind", len(fr.KV_MODE_ORDER))))  # the kv-mode colours
FAILED = {
    "oom": ("#d62728", "out of memory (not measured)"),
    "unsupported": ("#7f7f7f", "unsupported (not measured)"),
    "error": ("#000000", "error (not measured)"),
}
AXIS_LABELS = {
    "cell.prompt_len": "prompt length (tokens)",
    "cell.new_tokens": "new tokens generated",
    "cell.model": "model (by parameter count)",
    "cell.batch": "batch",
}


class Skip(Exception):
    """A figure left out of this sweep, and why (one line in the log)."""


def mark_failed(ax, xs, statuses, labels, y0: float = 0.95) -> None:
    """The one failed-cell marker: an X at the panel's top edge over its x, stacked downwards
    when several failed at one x, labelled (e.g. b2 for its batch)."""
    level: dict = {}
    for x, status, label in zip(xs, statuses, labels):
        y = y0 - 0.09 * level.get(x, 0)
        level[x] = level.get(x, 0) + 1
        color = FAILED.get(str(status), ("#9467bd", ""))[0]
        ax.scatter(
            [x],
            [y],
            transform=ax.get_xaxis_transform(),
            marker="X",
            s=70,
            color=color,
            zorder=6,
            clip_on=False,
            edgecolors="white",
            linewidths=0.5,
        )
        ax.annotate(
            label,
            (x, y),
            xycoords=ax.get_xaxis_transform(),
            xytext=(6, 0),
            textcoords="offset points",
            va="center",
            fontsize=7,
            color=color,
        )


def failed_handles(statuses) -> list[Line2D]:
    return [
        Line2D(
            [],
            [],
            marker="X",
            color=FAILED.get(s, ("#9467bd", ""))[0],
            linestyle="none",
            markersize=9,
            label=FAILED.get(s, ("", f"{s} (not measured)"))[1],
        )
        for s in sorted(set(map(str, statuses)))
    ]


def ticks(axis, lo: float, hi: float, log: bool, fmt: str = "{:g}") -> None:
    """The one tick helper: 1-2-5 steps on a log axis (every digit when it spans under a decade),
    plain numbers, no minor ticks."""
    if log and lo > 0:
        decades = math.log10(hi / lo) if hi > lo else 1.0
        mant = range(1, 10) if decades < 1.2 else (1, 2, 5) if decades < 4 else (1,)
        vals = [m * 10.0**e for e in range(math.floor(math.log10(lo)) - 1, math.ceil(math.log10(hi)) + 1) for m in mant]
        axis.set_major_locator(FixedLocator([v for v in vals if lo <= v <= hi] or [lo]))
    axis.set_major_formatter(FuncFormatter(lambda v, _: fmt.format(v)))
    axis.set_minor_locator(NullLocator())


def facet_label(df: pd.DataFrame, exclude: Sequence[str]) -> pd.Series:
    """A row of panels per combination of the settings that vary (other than the axes)."""
    keys = [k for k in rp.varying(df, [c.removeprefix("cell.") for c in exclude]) if k != "seed"]
    if not keys:
        return pd.Series("", index=df.index)
    return df[[f"cell.{k}" for k in keys]].apply(
        lambda r: ", ".join(f"{k}={'all' if k == 'n_kv_head' and pd.isna(v) else rp.lab(v)}" for k, v in zip(keys, r)),
        axis=1,
    )


def x_values(df: pd.DataFrame, x: str) -> tuple[pd.Series, list[float], list[str]]:
    """Numeric positions on the x axis: models by size at 0, 1, 2 ...; numbers as they are."""
    if x == "cell.model":
        cats = list(df[x].cat.categories)
        rows = df.drop_duplicates(x).set_index(x)
        return (
            df[x].cat.codes.astype(float),
            [float(i) for i in range(len(cats))],
            [
                f"{m}\n{rows.at[m, 'n_params'] / 1e6:.0f}M params"
                if m in rows.index and rows.at[m, "n_params"] > 0
                else m
                for m in cats
            ],
        )
    vals = sorted(set(df[x].astype(float)))
    return df[x].astype(float), vals, [rp.lab(v) for v in vals]


def _x_axis(ax, x: str, pos: list[float], labels: list[str]) -> None:
    if x != "cell.model":
        ax.set_xscale("log", base=2)
    ax.set_xticks(pos, labels, fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(pos), max(pos)
    ax.set_xlim(*((lo - 0.5, hi + 0.5) if x == "cell.model" else (lo / 1.4, hi * 1.4)))


def grid(data: pd.DataFrame, col: str, col_order, **kw) -> sns.FacetGrid:
    rows = list(dict.fromkeys(data["facet"]))
    return sns.FacetGrid(
        data, col=col, col_order=col_order, row="facet", row_order=rows, margin_titles=False, despine=False, **kw
    )


def _titles(g: sns.FacetGrid, fmt: str) -> None:
    for (row, col), ax in g.axes_dict.items() if g.row_names else ((("", k), a) for k, a in g.axes_dict.items()):
        ax.set_title(fmt.format(col) + (f"\n{row}" if row else ""))
