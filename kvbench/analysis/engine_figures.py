"""The engines side by side on the same weights: decode ms/token and the fraction of the analytic floor it reaches,
along what the sweep varies (the batch in vs-peers), a line per engine setup (the engine, its cache, compiled or
eager), so who leads where reads off one picture. Drawn only where a sweep runs more than one engine; a setup that
did not finish a cell is the one failed-cell marker at that x."""

from __future__ import annotations

import pandas as pd
import seaborn as sns
from matplotlib.lines import Line2D
from matplotlib.ticker import LogLocator, NullLocator, StrMethodFormatter

from kvbench.analysis import facets as fc

D = "latency.decode_ms_per_token.median"
FRACTION = "fraction of the analytic floor (1.0: the floor)"
METRICS = {"decode ms / token (median)": D, FRACTION: "analytic.fraction_of_floor"}
ENGINE_ORDER = ("kvbench", "llamacpp", "ct2", "hf")  # ours first, then the peers


def setup(df: pd.DataFrame) -> pd.Series:
    """'kvbench static, compiled', 'llamacpp static', 'hf concat': what one line of the figure measured."""
    compiled = df["cell.compile"].astype("boolean").fillna(False).map({True: ", compiled", False: ""})
    return df["cell.engine"].astype(str) + " " + df["cell.kv_mode"].astype(str) + compiled.astype(str)


def setup_styles(data: pd.DataFrame) -> dict[str, dict]:
    """Each setup its own colour (colorblind's ten without grey) and marker, ours first; later ones drawn narrower on
    top so setups that coincide both show."""
    rank = {e: i for i, e in enumerate(ENGINE_ORDER)}
    order = data.drop_duplicates("setup").sort_values(
        "cell.engine", kind="stable", key=lambda s: s.astype(str).map(lambda e: rank.get(e, len(rank)))
    )["setup"]
    colours = [c for i, c in enumerate(sns.color_palette("colorblind", 10)) if i != 7]
    out, n = {}, len(order)
    for i, label in enumerate(order):
        scale = 1 - 0.5 * i / max(n - 1, 1)
        c = colours[i % len(colours)]
        out[label] = {
            "color": c, "marker": fc.MARKERS[i % len(fc.MARKERS)], "linewidth": 3.0 * scale,
            "markersize": 9.0 * scale, "zorder": 2 + i / n, "markeredgecolor": fc.darker(c, 0.4), "label": label,
        }  # fmt: skip
    return out


def long_frame(df: pd.DataFrame, x: str) -> pd.DataFrame:
    """One row per cell and metric: its setup, its panel row, its x and value."""
    base = df.assign(setup=setup(df), mark=setup(df))
    base = base.assign(facet=fc.facet_label(base, ["engine", "kv_mode", "compile", x.removeprefix("cell.")]))
    parts = [base.assign(metric=name, y=base[col].astype(float)) for name, col in METRICS.items() if col in base]
    data = pd.concat(parts, ignore_index=True)
    data["metric"] = pd.Categorical(data["metric"], [m for m in METRICS if m in set(data["metric"])])
    return data.assign(x=data[x].astype(float))


def draw_panel(ax, panel: pd.DataFrame, styles: dict, metric: str) -> None:
    """One panel: a line per setup; the fraction on a 0..1 axis with the floor dotted, ms/token on a log axis where
    the cacheless lines sit 20x above the rest."""
    for label, style in styles.items():
        line = panel[panel["setup"] == label].sort_values("x")
        if len(line):
            ax.plot(line["x"], line["y"], **style)
    top = float(panel["y"].max()) if len(panel) else 1.0
    if metric == FRACTION:
        ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1)
        ax.set_ylim(0, max(1.05, top * 1.1))
    elif len(panel) and top / panel["y"].min() > 8:
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}"))
        ax.yaxis.set_minor_locator(NullLocator())
    else:
        ax.set_ylim(0, top * 1.15)


def engines_figure(df: pd.DataFrame):
    """Decode ms/token (left) and its fraction of the floor (right) per engine setup along the sweep's axis."""
    if df["cell.engine"].nunique() < 2:
        raise fc.Skip("one engine: nothing to set side by side")
    x = fc.along(df)
    if x.endswith("model"):
        raise fc.Skip("engines are compared along a numeric axis (batch, prompt); this sweep varies the model")
    data = long_frame(df, x)
    ok = data[data["ok"] & data["y"].notna()]
    if ok.empty:
        raise fc.Skip("no cell finished (status ok)")
    styles = setup_styles(data)
    rows = list(dict.fromkeys(data["facet"]))
    g = sns.FacetGrid(data, col="metric", row="facet", sharey=False, height=3.6, aspect=1.25, row_order=rows, **fc.GRID)
    for (row, metric), ax in g.axes_dict.items():
        draw_panel(ax, ok[(ok["facet"] == row) & (ok["metric"] == metric)], styles, str(metric))
        ax.set_xscale("log", base=2)
        fc.x_at(ax, data["x"])
        ax.set_title(str(metric) + (f"\n{row}" if row else ""))
    fc.mark_failed(g, data, "metric")
    handles = [Line2D([], [], **{k: v for k, v in s.items() if k != "zorder"}) for s in styles.values()]
    handles.append(Line2D([], [], color="0.3", linestyle=":", label="the analytic floor (bytes / read bandwidth)"))
    title = "The engines side by side on the same weights"
    fc.finish(g, data, title, (fc.XLABELS[x.removeprefix("cell.")], ""), handles)
    for ax in g.axes.flat:  # each panel says what it shows (finish set one shared label)
        ax.set_ylabel(ax.get_title().split("\n")[0].split(" (")[0])
    return g.figure


FIGURES = {"engines_decode": engines_figure}
