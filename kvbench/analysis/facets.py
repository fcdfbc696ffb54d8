"""The drawing conventions every figure shares: reproducible bytes, one kv-mode palette, one
failed-cell marker, one tick helper, one x axis from what the sweep varies, and the one FacetGrid
(a column of panels per kv mode or metric, a row per combination of the other settings that vary)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence

import matplotlib

matplotlib.use("Agg")  # before pyplot: seaborn's FacetGrid makes pyplot figures; no GUI backend here
import matplotlib.pyplot as plt  # noqa: E402
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
MARKER = {"marker": "X", "s": 70, "zorder": 6, "clip_on": False, "edgecolors": "white", "linewidths": 0.5}
MARKER_LABEL = {"xytext": (6, 0), "textcoords": "offset points", "va": "center", "fontsize": 7}
AXIS_LABELS = {
    "prompt_len": "prompt length (tokens)",
    "new_tokens": "new tokens generated",
    "model": "model (by parameter count)",
    "batch": "batch",
}
# Panel rows name the settings that vary in this order (the engine first: the vs-peers sweeps).
FACET_KEYS = ("engine", "model", "dtype", "attention", "n_kv_head", "batch", "prompt_len", "new_tokens")
FACET_KEYS += tuple(k for k in fr.CELL_KEYS if k not in FACET_KEYS and k != "seed")


class Skip(Exception):
    """A figure left out of this sweep, and why (one line in the log)."""


def hue_colors(hue: str, values: Sequence[str]) -> dict:
    """The one palette: kv modes in their own colours, anything else (batches) along viridis
    (its pale end dropped)."""
    if hue.endswith("kv_mode"):
        return {v: PALETTE.get(v, "0.4") for v in values}
    return dict(zip(values, sns.color_palette("viridis", len(values) + 1)[: len(values)]))


def failed(status) -> tuple[str, str]:
    """A status's marker colour and legend label."""
    return FAILED.get(str(status), ("#9467bd", f"{status} (not measured)"))


def mark(ax, x: float, y: float, status, label: str = "", transform=None) -> None:
    """The one failed-cell marker: an X in the status's colour where the cell would be, labelled."""
    transform, color = transform or ax.transData, failed(status)[0]
    ax.scatter([x], [y], transform=transform, color=color, **MARKER)
    if label:
        ax.annotate(label, (x, y), xycoords=transform, color=color, **MARKER_LABEL)


def mark_edge(ax, xs, statuses, labels) -> None:
    """Failed cells at the panel's top edge over their x, stacked downwards when several fail at one x."""
    seen: Counter = Counter()
    for x, status, label in zip(xs, statuses, labels):
        mark(ax, x, 0.95 - 0.09 * seen[x], status, label, ax.get_xaxis_transform())
        seen[x] += 1


def failed_handles(statuses) -> list[Line2D]:
    """The legend entries of the statuses that failed, one per status."""
    return [
        Line2D([], [], marker="X", color=failed(s)[0], linestyle="none", markersize=9, label=failed(s)[1])
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


def facet_label(df: pd.DataFrame, exclude: Sequence[str], prefix: str = "cell.") -> pd.Series:
    """A row of panels per combination of the settings that vary (other than the axes), e.g.
    'engine=hf, n_kv_head=all'. `prefix`: "cell." on the frame, "" on a reading table."""
    keys = [
        k
        for k in FACET_KEYS
        if k not in exclude and f"{prefix}{k}" in df and df[f"{prefix}{k}"].nunique(dropna=False) > 1
    ]
    if not keys:
        return pd.Series("", index=df.index)
    cols = [f"{prefix}{k}" for k in keys]
    return df[cols].apply(
        lambda r: ", ".join(f"{k}={rp.heads(v) if k == 'n_kv_head' else rp.lab(v)}" for k, v in zip(keys, r)), axis=1
    )


def x_axis(data: pd.DataFrame, x: str) -> tuple[pd.Series, dict, list[str]]:
    """The sweep's x: models by size at 0, 1, 2 ... (labelled with their size), numbers on a log2
    axis. Returns each row's position, {value's label: position} and the tick labels."""
    if x.endswith("model"):
        models = data[x].cat.remove_unused_categories()
        size = data["n_params"].astype(float).groupby(models, observed=True).max().fillna(0)
        labels = [f"{m}\n{size[m] / 1e6:.0f}M params" if size[m] > 0 else m for m in models.cat.categories]
        return models.cat.codes.astype(float), {m: float(i) for i, m in enumerate(models.cat.categories)}, labels
    vals = sorted(set(data[x].astype(float)))
    return data[x].astype(float), {rp.lab(v): v for v in vals}, [rp.lab(v) for v in vals]


def set_x(ax, x: str, pos: Sequence[float], labels: list[str]) -> None:
    if not x.endswith("model"):
        ax.set_xscale("log", base=2)
    ax.set_xticks(pos, labels, fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    lo, hi = min(pos), max(pos)
    ax.set_xlim(*((lo - 0.5, hi + 0.5) if x.endswith("model") else (lo / 1.4, hi * 1.4)))


def facet_grid(
    data, col: str, panel: Callable, title: str, *, labels, col_title="{}", legend=(), size=(4.2, 3.4), **kw
):
    """The one FacetGrid: a column of panels per `col` value (a Categorical's order, else as they
    come), a row per `facet` label; `panel(ax, rows)` draws one. `labels`: the x and y axis labels,
    `col_title`: a panel's title ('{}' is the value), `legend`: handles (none: no legend)."""
    values = data[col].cat.remove_unused_categories().cat.categories if data[col].dtype == "category" else data[col]
    order, rows = list(dict.fromkeys(values)), list(dict.fromkeys(data["facet"]))
    width, height = size
    g = sns.FacetGrid(
        data,
        col=col,
        col_order=order,
        row="facet",
        row_order=rows,
        despine=False,
        height=height,
        aspect=width / height,
        **kw,
    )
    g.map_dataframe(lambda data, **_: panel(plt.gca(), data))
    for (row, value), ax in g.axes_dict.items():
        ax.set_title(col_title.format(value) + (f"\n{row}" if row else ""))
    g.set_axis_labels(*labels)
    if legend:
        g.add_legend(legend_data={h.get_label(): h for h in legend})
    g.figure.suptitle(title, y=1.02)
    return g
