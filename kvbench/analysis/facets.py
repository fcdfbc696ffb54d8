"""The drawing conventions every figure shares: reproducible bytes, one kv-mode palette, one
failed-cell marker, one tick helper, one x axis from what the sweep varies, the one FacetGrid
(a column of panels per kv mode or metric, a row per combination of the other settings that vary),
and `lines`, which draws a line figure from its row of the spec table (figures.LINES)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # before pyplot: seaborn's FacetGrid makes pyplot figures; no GUI backend here
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from kvbench.analysis import claims  # noqa: E402
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
    data["x"], where, labels = x_axis(data, x)
    prefix = "cell." if x.startswith("cell.") else ""  # the frame, or a reading table
    data["facet"] = facet_label(data, [c.removeprefix("cell.") for c in (spec.col, spec.hue, x)], prefix)
    data["hue"] = data[spec.hue].astype(object).map(rp.lab) if x != spec.hue else "all"
    colors = hue_colors(spec.hue, sorted(set(data["hue"]), key=rp.natural))
    claimed = {}
    if spec.claims:
        claimed = {where[v]: lohi for v, lohi in claims.claimed(spec.claims[0], x).items() if v in where}
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
                ax.annotate(
                    spec.annotate.format(v), (xv, v), xytext=(5, 4), textcoords="offset points", fontsize=7, color=c
                )
        bad = d[~d["ok"]]
        mark_edge(ax, bad["x"], bad["status"], bad["mark"])
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
    if spec.beside:
        handles.append(Line2D([], [], color="0.3", linestyle="--", label=spec.beside))
    if spec.hline:
        handles.append(Line2D([], [], color="0.3", linestyle=":", label=spec.hline[1]))
    if spec.err:
        handles.append(
            Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=10, label="min–max over iterations")
        )
    if claimed:
        handles.append(Line2D([], [], color="0.55", linewidth=5, alpha=0.6, label=spec.claims[1]))
    sources = ", ".join(sorted(set(ok["source"].dropna().astype(str)))) if "source" in ok else ""
    axis_labels = (AXIS_LABELS[x.removeprefix("cell.")], spec.ylabel.format(sources or "n/a"))
    legend = handles + failed_handles(data.loc[~data["ok"], "status"])
    size = (max(4.2, 1.1 * len(where) + 1.5), 3.4)
    g = facet_grid(
        data, spec.col, panel, spec.title, labels=axis_labels, col_title=spec.col_title, legend=legend, size=size
    )
    for ax in g.axes.flat:
        set_x(ax, x, list(where.values()), labels)
    ax0 = g.axes.flat[0]  # the y axis is shared
    if log:
        ax0.set_yscale("log")
    ax0.set_ylim(*((lo / 1.3, hi * 1.6) if log else (min(0, lo * 1.1), hi * 1.15 + 1e-12)))
    ticks(ax0.yaxis, *ax0.get_ylim(), log=log, fmt=spec.fmt)
    return g.figure
