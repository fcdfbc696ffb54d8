"""What every figure shares: reproducible bytes, one kv-mode palette (and a style per variant of a mode), the one
failed-cell marker, the panels' rows (a row per combination of the settings that vary besides the axes), and the x
axis a line figure is drawn along (the prompt, the generation length, or the model by parameter count), a tick at
each value a setting takes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib
import pandas as pd
import seaborn as sns
from matplotlib.colors import to_rgb
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
# A variant's own marker, in drawing order ("X" is the failed cell's).
MARKERS = ("o", "s", "^", "D", "v", "P", "h", "*")
DASHES = ("-", (0, (5, 2)), (0, (3, 1.5, 1, 1.5)), (0, (1.5, 1.5)), (0, (6, 1.5, 1, 1.5, 1, 1.5)))
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


def in_order(modes) -> dict[str, str]:  # each kv mode once, in KV_MODES' order: styles' argument
    known = sorted(set(map(str, modes)), key=lambda m: (KV_MODES.index(m) if m in KV_MODES else len(KV_MODES), m))
    return dict(zip(known, known))


def darker(c, by: float) -> tuple:  # the colour `by` of the way to black
    return tuple((1 - by) * v for v in to_rgb(c))


def styles(
    modes: Mapping[str, str], width: float = 3.2, size: float = 10.0, dashed: bool = False, zorder: float = 2.0
) -> dict[str, dict]:
    """ax.plot's keywords for each variant (`modes`: label -> its kv mode, in drawing order). The first variant of a
    mode is in the mode's colour, the next ones (paged-64 beside paged-16) in darker shades of it; each has its own
    marker (and, `dashed`, its own dashes). The first drawn is the widest with the largest markers, each later one
    narrower and smaller on top, so lines that coincide (concat exactly on static) both show: the one beneath as a
    rim around the one above (and in its dashes' gaps)."""
    out, n = {}, len(modes)
    for i, (label, mode) in enumerate(modes.items()):
        kin = [other for other, m in modes.items() if m == mode]
        k = kin.index(label)
        scale = 1 - 0.5 * i / max(n - 1, 1)  # 1 for the first drawn, half that for the last
        c = color(mode) if k == 0 else darker(color(mode), 0.45 * k / (len(kin) - 1))
        out[label] = {
            "color": c, "marker": MARKERS[i % len(MARKERS)], "linestyle": DASHES[i % len(DASHES)] if dashed else "-",
            "linewidth": width * scale, "markersize": size * scale, "zorder": zorder + i / n,
            "markeredgecolor": darker(c, 0.4), "markeredgewidth": 0.8,  # a pale marker (paged's yellow) on white
        }  # fmt: skip
    return out


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
    if not x.endswith("model"):
        for ax in g.axes.flat:
            ax.set_xscale("log", base=2)
            x_at(ax, data[x])
        return
    models = data[x].cat.remove_unused_categories()
    params = data["n_params"].astype(float).groupby(models, observed=True).max().fillna(0)
    where = {f"{m}\n{params[m] / 1e6:.0f}M params" if params[m] > 0 else m: i for i, m in enumerate(params.index)}
    for ax in g.axes.flat:
        ax.set_xticks(list(where.values()), list(where), fontsize=8)
        ax.xaxis.set_minor_locator(NullLocator())
        ax.set_xlim(-0.5, len(where) - 0.5)


def number(v: float) -> str:  # a setting's value as the sweep names it: 8, not 8.0; 0.5 as it is
    return f"{v:.0f}" if float(v).is_integer() else f"{v:g}"


def x_at(ax, values, every: bool = True) -> None:
    """A numeric x axis: a tick at each value the setting takes (batch, spread, length), labelled as the value.
    A panel whose points all sit at one x shows them above that one tick, mid-panel, as on a category: left to
    matplotlib, a single batch 8 sits on an axis of decimals from 7.6 to 8.4. `every`: False along a measured x
    (bytes per position), whose ticks matplotlib places, unless one value is all there is."""
    at = sorted({float(v) for v in values if pd.notna(v)})
    if not at or not every and len(at) > 1:
        return
    ax.set_xticks(at, [number(v) for v in at], fontsize=8)
    ax.xaxis.set_minor_locator(NullLocator())
    if ax.get_xscale() == "log":
        ax.set_xlim(at[0] / 1.4, at[-1] * 1.4)
    elif len(at) == 1:
        ax.set_xlim(at[0] - 1, at[0] + 1)


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
    if levels == ["all"]:  # along the batch itself: one line per panel, the cells measured
        return colors, [Line2D([], [], color=colors["all"], marker="o", label="measured (each cell a point)")]
    return colors, [Line2D([], [], color=c, marker="o", label=f"batch {h}") for h, c in colors.items()]


def size(data: pd.DataFrame) -> dict:  # a panel's inches: wider with more points along x
    return {"height": 3.4, "aspect": max(4.2, 1.1 * data["x"].nunique() + 1.5) / 3.4}


def ok_values(data: pd.DataFrame, *columns: str) -> pd.Series:
    """The finished points' values (what the y axis must show); Skip where there is none."""
    ok = data[data["ok"]]
    values = pd.concat([ok[c] for c in columns if c in ok]).dropna()
    if not len(values):
        raise Skip("no cell finished (status ok)")
    return values
