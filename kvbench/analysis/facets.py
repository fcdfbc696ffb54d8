"""The drawing conventions every figure shares: reproducible bytes, one kv-mode palette, one failed-cell
marker, one tick helper, the one FacetGrid (a column of panels per kv mode or metric, a row per combination
of the other settings that vary), and `lines`, which draws a line figure from its row of figures.LINES."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib
import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from kvbench.analysis import claims
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp

matplotlib.use("Agg")  # seaborn's FacetGrid makes pyplot figures (none exists yet); no GUI backend here

# Reproducible bytes: no timestamps or versions in the files, a fixed salt for SVG ids, text as paths.
RC = {"svg.hashsalt": "kvbench", "svg.fonttype": "path", "svg.id": None, "savefig.dpi": 110, "figure.dpi": 110}
RC |= {"font.family": "DejaVu Sans", "axes.titlesize": "medium", "figure.titlesize": "large"}
SAVE_METADATA = {"png": {"Software": None}, "svg": {"Date": None, "Creator": None}}
PALETTE = dict(zip(fr.KV_MODE_ORDER, sns.color_palette("colorblind", len(fr.KV_MODE_ORDER))))  # the kv-mode colours
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
    keys = [k for k in FACET_KEYS if k not in exclude and prefix + k in df and df[prefix + k].nunique(dropna=False) > 1]
    parts = {k: f"{k}=" + df[prefix + k].astype(object).map(rp.heads if k == "n_kv_head" else rp.lab) for k in keys}
    return pd.DataFrame(parts, index=df.index).agg(", ".join, axis=1)


def facet_grid(data, panel, title, labels, size, col="cell.kv_mode", col_title="kv_mode = {}", legend=None, **kw):
    """The one FacetGrid: a column of panels per `col` value, a row per `facet` label (in their order);
    `panel(ax, rows)` draws one. `labels`: the x and y axis labels, `size`: a panel's inches, `col_title`:
    a panel's title ('{}' is the value), `legend`: handles, then the failed statuses' (None: no legend)."""
    if data[col].dtype == "category":  # seaborn orders by the categories: the unused ones would get panels
        data = data.assign(**{col: data[col].cat.remove_unused_categories()})
    g = sns.FacetGrid(data, col=col, row="facet", despine=False, height=size[1], aspect=size[0] / size[1], **kw)
    g.map_dataframe(lambda data, **_: panel(plt.gca(), data))
    for (row, value), ax in g.axes_dict.items():
        ax.set_title(col_title.format(value) + (f"\n{row}" if row else ""))
    g.set_axis_labels(*labels)
    legend = None if legend is None else [*legend, *failed_handles(data.loc[~data["ok"], "status"])]
    if legend:
        g.add_legend(legend_data={h.get_label(): h for h in legend})
    g.figure.suptitle(title, y=1.02)
    return g


@dataclass(frozen=True)
class Lines:
    """A line figure: `y` along x, a column of panels per `col` value, a row per combination of
    the other settings that vary, a line per `hue` value."""

    data: Callable[[pd.DataFrame], pd.DataFrame]  # the rows: y, ok, status and mark (a failed point's label)
    title: str
    ylabel: str  # '{}' names the measurements' sources (a `source` column)
    x: str | None = None  # None: what the sweep varies (frame.x_axis)
    col: str = "cell.kv_mode"
    col_title: str = "kv_mode = {}"
    hue: str = "cell.batch"
    hue_label: str = "batch {}"
    err: bool = False  # min-max bars from the lo and hi columns
    beside: str | None = None  # legend label of a second series (`beside`), dashed in the line's colour
    hline: tuple[float, str] | None = None  # a reference line, kept in view, and its legend label
    log: bool | None = None  # None: a log axis where the values span over 20×
    fmt: str = "{:g}"  # y tick labels
    annotate: str | None = None  # each point's value written beside it, in this format
    claims: tuple[str, str] | None = None  # (write-up, legend label): its claimed values in grey


def lines(spec: Lines, df: pd.DataFrame) -> plt.Figure:
    x = spec.x or fr.x_axis(df)
    if x is None:
        raise Skip("one cell per kv mode: nothing varies to draw a line along")
    data = spec.data(df)
    if x.endswith("model"):  # models by size at 0, 1, 2 ..., labelled with their size
        models = data[x].cat.remove_unused_categories()
        params = data["n_params"].astype(float).groupby(models, observed=True).max().fillna(0)
        ticklabels = [f"{m}\n{params[m] / 1e6:.0f}M params" if params[m] > 0 else m for m in models.cat.categories]
        data["x"], where = models.cat.codes.astype(float), {m: float(i) for i, m in enumerate(models.cat.categories)}
        xlim = (-0.5, len(where) - 0.5)
    else:  # numbers as they are, on a log2 axis
        xs = sorted(set(data[x].astype(float)))
        data["x"], where = data[x].astype(float), {rp.lab(v): v for v in xs}
        ticklabels, xlim = list(where), (xs[0] / 1.4, xs[-1] * 1.4)
    prefix = "cell." if x.startswith("cell.") else ""  # the frame, or a reading table
    data["facet"] = facet_label(data, [c.removeprefix("cell.") for c in (spec.col, spec.hue, x)], prefix)
    data["hue"] = data[spec.hue].astype(object).map(rp.lab) if x != spec.hue else "all"
    hues = sorted(set(data["hue"]), key=rp.natural)
    viridis = sns.color_palette("viridis", len(hues) + 1)  # for batches; its pale end left out
    colors = {h: color(h) for h in hues} if spec.hue.endswith("kv_mode") else dict(zip(hues, viridis))
    stated = claims.claimed(spec.claims[0], x) if spec.claims else {}
    claimed = {where[v]: lohi for v, lohi in stated.items() if v in where}
    first_col = data[spec.col].iloc[0]  # the claims go in the first column of panels (the whole generation)

    def panel(ax, d: pd.DataFrame) -> None:
        for h, line in d[d["ok"] & d["y"].notna()].sort_values("x").groupby("hue", sort=False):
            c = colors[h]
            ax.plot(line["x"], line["y"], marker="o", color=c)
            if spec.beside:
                ax.plot(line["x"], line["beside"], linestyle="--", color=c, linewidth=1)
            if spec.err:
                yerr = [(line["y"] - line["lo"]).clip(lower=0), (line["hi"] - line["y"]).clip(lower=0)]
                ax.errorbar(line["x"], line["y"], yerr=yerr, fmt="none", ecolor=c, elinewidth=0.8, capsize=2)
            for xv, v in zip(line["x"], line["y"]) if spec.annotate else ():
                ax.annotate(spec.annotate.format(v), (xv, v), (5, 4), textcoords="offset points", fontsize=7, color=c)
        bad = d[~d["ok"]]  # at the panel's top edge, stacked downwards where several fail at one x
        for xv, n, status, label in zip(bad["x"], bad.groupby("x").cumcount(), bad["status"], bad["mark"]):
            mark(ax, xv, 0.95 - 0.09 * n, status, label, ax.get_xaxis_transform())
        # the write-ups state the whole generation's speedup, of plain multi-head models
        if claimed and d[spec.col].iloc[0] == first_col and d["n_kv_head"].isna().all():
            for xv, (lo, hi) in claimed.items():
                if lo == hi:
                    ax.scatter([xv], [lo], marker="D", s=36, color="0.55", zorder=5)
                else:
                    ax.plot([xv, xv], [lo, hi], color="0.55", linewidth=5, alpha=0.6, solid_capstyle="butt", zorder=1)
        if spec.hline:
            ax.axhline(spec.hline[0], color="0.3", linestyle=":", linewidth=1)

    ok = data[data["ok"]]
    vals = pd.concat([ok["y"], ok.get("beside"), pd.Series([v for lohi in claimed.values() for v in lohi])]).dropna()
    if not len(vals):
        raise Skip("no cell finished (status ok)")
    lo, hi = float(vals.min()), float(vals.max())
    if spec.hline:
        lo, hi = min(lo, spec.hline[0]), max(hi, spec.hline[0])
    log = lo > 0 and (spec.log if spec.log is not None else hi / lo > 20)  # a small range reads better linear
    handles = [Line2D([], [], color=c, marker="o", label=spec.hue_label.format(h)) for h, c in colors.items()]
    handles = handles if x != spec.hue else []
    others = (  # the legend's other entries (label, style), where drawn
        (spec.beside, dict(color="0.3", linestyle="--")),
        (spec.hline and spec.hline[1], dict(color="0.3", linestyle=":")),
        (spec.err and "min–max over iterations", dict(color="0.3", marker="|", linestyle="none", markersize=10)),
        (claimed and spec.claims[1], dict(color="0.55", linewidth=5, alpha=0.6)),
    )
    handles += [Line2D([], [], label=label, **style) for label, style in others if label]
    sources = ", ".join(sorted(set(ok["source"].dropna().astype(str)))) if "source" in ok else ""
    labels = (XLABELS[x.removeprefix("cell.")], spec.ylabel.format(sources or "n/a"))
    size = (max(4.2, 1.1 * len(where) + 1.5), 3.4)
    g = facet_grid(data, panel, spec.title, labels, size, spec.col, spec.col_title, handles)
    for ax in g.axes.flat:
        if not x.endswith("model"):
            ax.set_xscale("log", base=2)
        ax.set_xticks(list(where.values()), ticklabels, fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(*xlim)
    ax0 = g.axes.flat[0]  # the y axis is shared
    if log:
        ax0.set_yscale("log")
    ax0.set_ylim(*((lo / 1.3, hi * 1.6) if log else (min(0, lo * 1.1), hi * 1.15 + 1e-12)))
    ticks(ax0.yaxis, *ax0.get_ylim(), log=log, fmt=spec.fmt)
    return g.figure
