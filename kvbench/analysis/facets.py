"""What every figure shares: reproducible bytes, one kv-mode palette, the one failed-cell marker,
the panels' rows (a row per combination of the settings that vary besides the axes), and the x axis
a line figure is drawn along (the prompt, the generation length, or the model by parameter count)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullLocator, StrMethodFormatter

from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.core.presets import KV_MODES

matplotlib.use("Agg")  # seaborn's FacetGrid makes pyplot figures (none exists yet); no GUI backend here

# Reproducible bytes: no timestamps or versions in the files, a fixed salt for SVG ids, text as paths.
RC = {"svg.hashsalt": "kvbench", "svg.fonttype": "path", "svg.id": None, "savefig.dpi": 110, "figure.dpi": 110}
RC |= {"font.family": "DejaVu Sans", "axes.titlesize": "medium", "figure.titlesize": "large"}
SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
# The kv-mode colours: colorblind's ten without its grey, which is the colour of a mode it does not know.
PALETTE = dict(zip(KV_MODES, [c for i, c in enumerate(sns.color_palette("colorblind", 10)) if i != 7]))
FAILED = {"oom": ("#d62728", "out of memory"), "unsupported": ("#7f7f7f", "unsupported"), "error": ("#000000", "error")}
MARKER = {"marker": "X", "s": 70, "zorder": 6, "clip_on": False, "edgecolors": "white", "linewidths": 0.5}
MARKER_LABEL = {"xytext": (6, 0), "textcoords": "offset points", "va": "center", "fontsize": 7}
XLABELS = {
    "prompt_len": "prompt length (tokens)",
    "new_tokens": "new tokens generated",
    "model": "model (by parameter count)",
    "batch": "batch",
    "threads": "CPU threads",
}
# Panel rows name the settings that vary in this order (the engine first: the vs-peers sweeps).
FACET_KEYS = ("engine", "model", "dtype", "attention", "n_kv_head", "batch", "prompt_len", "new_tokens")
FACET_KEYS += tuple(k for k in fr.CELL_KEYS if k not in FACET_KEYS and k != "seed")
GRID = {"despine": False}  # every FacetGrid keeps its frame


class Skip(Exception):
    """A figure left out of this sweep, and why (one line in the log)."""


def color(mode) -> str | tuple:  # the one palette (grey: a mode it does not know)
    return PALETTE.get(str(mode), "0.4")


def failed(status) -> tuple[str, str]:  # the marker's colour and legend label
    c, what = FAILED.get(str(status), ("#9467bd", status))
    return c, f"{what} (not measured)"


def mark(ax, x: float, y: float, status, label: str = "", transform=None) -> None:
    """The one failed-cell marker: an X in the status's colour where the cell would be, labelled."""
    transform, c = transform or ax.transData, failed(status)[0]
    ax.scatter([x], [y], transform=transform, color=c, **MARKER)
    if label:
        ax.annotate(label, (x, y), xycoords=transform, color=c, **MARKER_LABEL)


def failed_handles(statuses) -> list[Line2D]:  # one legend entry per status
    return [
        Line2D([], [], marker="X", color=failed(s)[0], linestyle="none", markersize=9, label=failed(s)[1])
        for s in sorted(set(map(str, statuses)))
    ]


def facet_label(df: pd.DataFrame, exclude: Sequence[str], prefix: str = "cell.") -> pd.Series:
    """A row of panels per combination of the settings that vary (other than the axes), e.g.
    'engine=hf, n_kv_head=all'. `prefix`: "cell." on the frame, "" on a reading table."""
    keys = [k for k in FACET_KEYS if k not in exclude and prefix + k in df and df[prefix + k].nunique(dropna=False) > 1]
    parts = {k: f"{k}=" + df[prefix + k].astype(object).map(rp.heads if k == "n_kv_head" else rp.setting) for k in keys}
    return pd.DataFrame(parts, index=df.index).agg(", ".join, axis=1)


def panels(data: pd.DataFrame, col: str, x: str, hue: str) -> pd.DataFrame:
    """data with `facet` (its row of panels) and `x` (where a point sits: the value, or the model's
    place in size order), the column's unused categories dropped (seaborn would draw them)."""
    out = data.assign(facet=facet_label(data, [c.removeprefix("cell.") for c in (col, hue, x)], prefix(x)))
    if out[col].dtype == "category":
        out[col] = out[col].cat.remove_unused_categories()
    models = out[x].cat.remove_unused_categories() if x.endswith("model") else None
    return out.assign(x=out[x].astype(float) if models is None else models.cat.codes.astype(float))


def prefix(x: str) -> str:  # "cell." on the frame, "" on a reading table
    return "cell." if x.startswith("cell.") else ""


def titles(g: sns.FacetGrid, col_title: str) -> None:
    """Each panel: its column's value in `col_title`, then its row's settings where they vary."""
    for (row, value), ax in g.axes_dict.items():
        ax.set_title(col_title.format(value) + (f"\n{row}" if row else ""))


def x_ticks(g: sns.FacetGrid, data: pd.DataFrame, x: str) -> None:
    """Models by size at 0, 1, 2 ... labelled with their size; numbers as they are on a log2 axis."""
    if x.endswith("model"):
        models = data[x].cat.remove_unused_categories()
        params = data["n_params"].astype(float).groupby(models, observed=True).max().fillna(0)
        where = {f"{m}\n{params[m] / 1e6:.0f}M params" if params[m] > 0 else m: i for i, m in enumerate(params.index)}
        lim = (-0.5, len(where) - 0.5)
    else:
        where = {str(v): float(v) for v in data[x].drop_duplicates().sort_values()}
        lim = (min(where.values()) / 1.4, max(where.values()) * 1.4)
    for ax in g.axes.flat:
        if not x.endswith("model"):
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(where.values()), list(where), fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(*lim)


def y_scale(g: sns.FacetGrid, values: pd.Series, log: bool | None = None, fmt: str = "{x:g}") -> None:
    """The shared y axis: logarithmic where the values span over 20× (or `log` says), 1-2-5 ticks, no minor ones."""
    lo, hi = float(values.min()), float(values.max())
    log = lo > 0 and (log if log is not None else hi / lo > 20)  # a small range reads better linear
    ax = g.axes.flat[0]
    if log:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    ax.set_ylim(*((lo / 1.3, hi * 1.6) if log else (min(0, lo * 1.1), hi * 1.15 + 1e-12)))
    ax.yaxis.set_major_formatter(StrMethodFormatter(fmt))
    ax.yaxis.set_minor_locator(NullLocator())


def mark_failed(g: sns.FacetGrid, data: pd.DataFrame, col: str, label: str = "mark") -> None:
    """Each failed point at its panel's top edge, stacked downwards where several fail at one x."""
    for (row, value), ax in g.axes_dict.items():
        bad = data[~data["ok"] & (data["facet"] == row) & (data[col] == value)]
        for xv, n, status, text in zip(bad["x"], bad.groupby("x").cumcount(), bad["status"], bad[label]):
            mark(ax, xv, 0.95 - 0.09 * n, status, text, ax.get_xaxis_transform())


def finish(g: sns.FacetGrid, data: pd.DataFrame, title: str, labels: tuple[str, str], handles: list) -> None:
    """Axis labels, one legend (the lines', then a marker per failed status), the title."""
    g.set_axis_labels(*labels)
    legend = [*handles, *failed_handles(data.loc[~data["ok"], "status"])]
    if legend:
        g.add_legend(legend_data={h.get_label(): h for h in legend})
    g.figure.suptitle(title, y=1.02)


def along(df: pd.DataFrame) -> str:
    """The x of a line figure: what the sweep varies (frame.x_axis); Skip where nothing does."""
    x = fr.x_axis(df)
    if x is None:
        raise Skip("one cell per kv mode: nothing varies to draw a line along")
    return x


def by_batch(data: pd.DataFrame) -> tuple[dict, list[Line2D]]:
    """The batches' colours (viridis, its pale end left out) and their legend entries."""
    levels = list(dict.fromkeys(data.sort_values("cell.batch")["hue"]))
    colors = dict(zip(levels, sns.color_palette("viridis", len(levels) + 1)))
    handles = [Line2D([], [], color=c, marker="o", label=f"batch {h}") for h, c in colors.items()]
    return colors, handles if levels != ["all"] else []


def size(data: pd.DataFrame) -> dict:  # a panel's inches: wider with more points along x
    return {"height": 3.4, "aspect": max(4.2, 1.1 * data["x"].nunique() + 1.5) / 3.4}


def ok_values(data: pd.DataFrame, *columns: str) -> pd.Series:
    """The finished points' values (what the y axis must show); Skip where there is none."""
    ok = data[data["ok"]]
    values = pd.concat([ok[c] for c in columns if c in ok]).dropna()
    if not len(values):
        raise Skip("no cell finished (status ok)")
    return values
