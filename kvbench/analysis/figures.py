"""Tables -> figures (PNG and SVG, the same bytes for the same tables), each one seaborn call.

Every figure takes its x axis and panels from what the sweep varies (the prompt, the generation length, the model
by parameter count): a column of panels per kv mode (or metric), a row per combination of the other settings that
vary (the engine among them). A cell that did not finish (oom, unsupported, error) is one marker where it would be
(facets.mark), never a silent hole; a figure with nothing to compare is left out, with one line saying why. FIGURES
names them all; the conventions they share live in facets.

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
import pandas as pd
import seaborn as sns
from matplotlib.colors import LogNorm
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import LogLocator, MaxNLocator, NullLocator, StrMethodFormatter

from kvbench.analysis import aggregate as agg
from kvbench.analysis import approx_figures, claims, command, engine_figures, speed_figures
from kvbench.analysis import facets as fc
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.analysis.alloc_figures import FIGURES as ALLOC_FIGURES
from kvbench.analysis.facets import RC, Skip  # noqa: F401 (RC: tests use it from here)
from kvbench.core import record as kvrecord

D = "latency.decode_ms_per_token"
SPEEDUPS = {"total_speedup": "whole generation (total time)", "decode_speedup": "per decode token"}
WRITEUP_002, WRITEUP_003 = "KV-Cache Implementation Summary", "nanoGPT + KV Cache"  # their claims: data/claims.csv
MIN_MAX = "min–max over iterations"


def points(df: pd.DataFrame, x: str, **columns: pd.Series) -> pd.DataFrame:
    """A point per cell of the frame in its panel (a column per kv mode, a row per other setting),
    coloured by batch; a failed one labelled by its batch."""
    data = df.assign(**{k: v.astype(float) for k, v in columns.items()}, mark="b" + df["cell.batch"].astype(str))
    data = fc.panels(data, "cell.kv_mode", x, "cell.batch")
    return data.assign(hue=data["cell.batch"].astype(str) if x != "cell.batch" else "all")


def line_grid(data: pd.DataFrame, colors: dict, col: str = "cell.kv_mode") -> sns.FacetGrid:
    """seaborn's line figure: a line per hue through the finished points (each cell its own point)."""
    ok = data[data["ok"] & data["y"].notna()]
    return sns.relplot(
        ok, kind="line", x="x", y="y", hue="hue", palette=colors, col=col, row="facet", marker="o",
        estimator=None, sort=True, legend=False, facet_kws=fc.GRID, row_order=list(dict.fromkeys(data["facet"])),
        col_order=list(data[col].cat.categories) if data[col].dtype == "category" else list(dict.fromkeys(data[col])),
        **fc.size(data),
    )  # fmt: skip


def decode_figure(df: pd.DataFrame) -> plt.Figure:
    """The median decode ms per token along what the sweep varies, min-max over iterations as bars;
    along CPU threads also the analytic floor (dotted), which no count of threads can beat."""
    x = fc.along(df)
    floor = df["analytic.floor_ms_per_token"].where(df["cell.threads"].notna() & (x == "cell.threads"))
    data = points(df, x, y=df[f"{D}.median"], lo=df[f"{D}.min"], hi=df[f"{D}.max"], floor=floor)
    values, (colors, handles) = fc.ok_values(data, "y", "floor"), fc.by_batch(data)
    g = line_grid(data, colors)
    for (row, mode), ax in g.axes_dict.items():
        ok = data[data["ok"] & (data["facet"] == row) & (data["cell.kv_mode"] == mode)]
        for h, line in ok.sort_values("x").groupby("hue"):
            yerr = [(line["y"] - line["lo"]).clip(lower=0), (line["hi"] - line["y"]).clip(lower=0)]
            ax.errorbar(line["x"], line["y"], yerr=yerr, fmt="none", ecolor=colors[h], elinewidth=0.8, capsize=2)
            if line["floor"].notna().any():
                ax.plot(line["x"], line["floor"], color=colors[h], linestyle=":", linewidth=1.2)
    handles.append(Line2D([], [], color="0.3", marker="|", linestyle="none", markersize=10, label=MIN_MAX))
    if floor.notna().any():
        handles.append(Line2D([], [], color="0.3", linestyle=":", label="analytic floor (bytes / read bandwidth)"))
    return lines_done(g, data, x, values, "Decode latency per token", "decode ms / token (median)", handles)


def lines_done(g, data, x, values, title, ylabel, handles, col="cell.kv_mode", col_title="kv_mode = {}", **y):
    """What every line figure ends with: titles, ticks, failed markers, labels and legend."""
    fc.titles(g, col_title)
    fc.x_ticks(g, data, x)
    fc.y_scale(g, values, **y)
    fc.mark_failed(g, data, col)
    fc.finish(g, data, title, (fc.XLABELS[x.removeprefix("cell.")], ylabel), handles)
    return g.figure


def peak_memory_figure(df: pd.DataFrame) -> plt.Figure:
    """What a cache costs: the peak beyond the weights (solid), the cache's formula bytes (dashed)."""
    x = fc.along(df)
    beside = df["memory.kv_cache_bytes_formula"] / fr.MIB
    data = points(df, x, y=df["beyond_bytes"] / fr.MIB, beside=beside).assign(source=df["beyond_source"])
    values, (colors, handles) = fc.ok_values(data, "y", "beside"), fc.by_batch(data)
    g = line_grid(data, colors)
    g.map_dataframe(
        lambda data, **_: sns.lineplot(
            data[data["ok"]], x="x", y="beside", hue="hue", palette=colors, estimator=None, linestyle="--",
            linewidth=1, legend=False, ax=plt.gca(),
        )
    )  # fmt: skip
    handles.append(Line2D([], [], color="0.3", linestyle="--", label="KV cache by formula"))
    sources = ", ".join(sorted(set(data.loc[data["ok"], "source"].dropna().astype(str)))) or "n/a"
    title = "Peak memory beyond the weights (solid) and the KV cache by formula (dashed)"
    return lines_done(g, data, x, values, title, f"peak beyond the weights, MiB\n({sources})", handles)


def floor_figure(df: pd.DataFrame) -> plt.Figure:
    """The decode step against its analytic lower bound; 1.0 is the floor itself."""
    x = fc.along(df)
    data = points(df, x, y=df["analytic.fraction_of_floor"])
    values, (colors, handles) = fc.ok_values(data, "y"), fc.by_batch(data)
    g = line_grid(data, colors)
    g.refline(y=1.0, color="0.3", linestyle=":", linewidth=1)
    handles.append(Line2D([], [], color="0.3", linestyle=":", label="at the floor (1.0); above is suspect"))
    title = "Decode step vs its analytic lower bound (bytes over the read bandwidth, FLOPs over the peak rate)"
    ylabel = "analytic floor / measured\n(floor: bytes / measured read bandwidth)"
    return lines_done(g, data, x, pd.concat([values, pd.Series([1.0])]), title, ylabel, handles)


def failed_side(p: pd.DataFrame) -> pd.Series:
    """Of a cached cell and its `none` partner, the status of the one that did not finish."""
    return p["status"].astype(str).where(p["status"] != "ok", p["none_status"].astype(str))


def speedups(df: pd.DataFrame, axis: str) -> pd.DataFrame:
    """The axis table (speedup_by_model.csv, speedup_by_length.csv), a panel per metric, a line per
    kv mode; a failed pair labelled by its mode, and by its `none` partner's status when that side failed."""
    t = agg.axis_table(df, axis)
    if t is None:
        raise Skip(f"one {axis.replace('_', ' ')} only: nothing to compare along it")
    long = pd.concat([t.assign(metric=name, y=t[c].astype(float)) for c, name in SPEEDUPS.items()], ignore_index=True)
    side = failed_side(long)
    mark = long["kv_mode"].astype(str) + (" (none " + side + ")").where(long["status"] == "ok", "")
    long = fc.panels(long.assign(ok=long["y"].notna(), status=side, mark=mark), "metric", axis, "kv_mode")
    return long.assign(hue=long["kv_mode"].astype(str))


def speedup_figure(df: pd.DataFrame, axis: str, writeup: str, claim: str) -> plt.Figure:
    """none / cached along the model or the generation length, the write-up's claimed values in grey."""
    data = speedups(df, axis)
    colors = {m: fc.color(m) for m in dict.fromkeys(data.sort_values("kv_mode")["hue"])}
    where = dict(zip(data[axis].astype(str), data["x"]))
    claimed = {where[v]: lohi for v, lohi in claims.claimed(writeup, axis).items() if v in where}
    values = pd.concat([fc.ok_values(data, "y"), pd.Series([v for lohi in claimed.values() for v in lohi] + [1.0])])
    g = line_grid(data, colors, col="metric")
    g.refline(y=1.0, color="0.3", linestyle=":", linewidth=1)
    for (row, metric), ax in g.axes_dict.items():
        ok = data[data["ok"] & (data["facet"] == row) & (data["metric"] == metric)]
        for xv, v, h in zip(ok["x"], ok["y"], ok["hue"]):
            ax.annotate(f"{v:.2f}×", (xv, v), (5, 4), textcoords="offset points", fontsize=7, color=colors[h])
        # the write-ups state the whole generation's speedup, of plain multi-head models
        if metric == SPEEDUPS["total_speedup"] and data.loc[data["facet"] == row, "n_kv_head"].isna().all():
            for xv, (lo, hi) in claimed.items():
                if lo == hi:
                    ax.scatter([xv], [lo], marker="D", s=36, color="0.55", zorder=5)
                else:
                    ax.plot([xv, xv], [lo, hi], color="0.55", linewidth=5, alpha=0.6, solid_capstyle="butt", zorder=1)
    handles = [Line2D([], [], color=c, marker="o", label=f"{m} vs none") for m, c in colors.items()]
    handles.append(Line2D([], [], color="0.3", linestyle=":", label="1× (no speedup)"))
    if claimed:
        handles.append(Line2D([], [], color="0.55", linewidth=5, alpha=0.6, label=f"{writeup}: {claim}"))
    title = f"Speedup of the KV cache vs {'model size' if axis == 'model' else 'generation length'}"
    return lines_done(
        g, data, axis, values, title, "speedup = none / cached", handles, "metric", "{}", log=True, fmt="{x:g}×"
    )


def split_figure(df: pd.DataFrame) -> plt.Figure:
    """One stacked bar per cell: the prefill, then the decode steps of one generation."""
    varied = [k for k in ("batch", "prompt_len", "new_tokens") if df[f"cell.{k}"].nunique() > 1]
    keys = varied or ["batch", "prompt_len"]
    cols = [f"cell.{k}" for k in keys]
    data = df.assign(
        facet=fc.facet_label(df, ("kv_mode", *keys)),
        label=df[cols].apply(lambda r: " · ".join(f"{k[0]}{v}" for k, v in zip(keys, r)), axis=1),
        prefill=df["latency.prefill_ms.median"].astype(float),
        decode=df[f"{D}.median"].astype(float) * df["latency.decode_steps"].astype(float),
    )
    data["cell.kv_mode"] = data["cell.kv_mode"].cat.remove_unused_categories()
    names = list(dict.fromkeys(data.sort_values(cols)["label"]))  # a row of bars per cell, in settings' order
    data["y"] = data["label"].map(names.index)
    colors = sns.color_palette("colorblind", 2)

    def panel(data: pd.DataFrame, **_) -> None:
        ax, ok, bad = plt.gca(), data[data["ok"]], data[~data["ok"]]
        ax.barh(ok["y"], ok["prefill"], color=colors[0], height=0.7)
        ax.barh(ok["y"], ok["decode"], left=ok["prefill"], color=colors[1], height=0.7)
        for y, status in zip(bad["y"], bad["status"]):  # the marker where the bar would start
            fc.mark(ax, 0.03, y, status, transform=ax.get_yaxis_transform())
        ax.set_xlim(left=0)

    width, height = 4.2, 0.9 + 0.28 * len(names)
    g = sns.FacetGrid(
        data, col="cell.kv_mode", row="facet", sharex=False, height=height, aspect=width / height, **fc.GRID
    )
    g.map_dataframe(panel)
    fc.titles(g, "kv_mode = {}")
    for ax in g.axes.flat:
        ax.set_yticks(range(len(names)), names, fontsize=8)
        ax.set_ylim(len(names) - 0.5, -0.5)
    legend = [
        Patch(color=colors[0], label="prefill (time to first token)"),
        Patch(color=colors[1], label="decode (steps × median ms/step)"),
    ]
    title = "Prefill vs decode: where one generation's time goes"
    fc.finish(g, data, title, ("ms per generation (median)", "cell"), legend)
    return g.figure


def heatmap_figure(df: pd.DataFrame) -> plt.Figure:
    """none ms / cached ms over batch x prompt length per cached mode; colour on a log scale centred on 1."""
    sp = fr.pairs(df)
    if not len(sp):
        raise Skip("no cached cell has a `none` cell beside it")
    if sp["cell.batch"].nunique() < 2 and sp["cell.prompt_len"].nunique() < 2:
        raise Skip("one batch and one prompt length: see speedup_vs_model / speedup_vs_new_tokens")
    metrics = {"decode_speedup": "decode", "total_speedup": "whole generation"}
    long = pd.concat([sp.assign(metric=name, v=sp[c].astype(float)) for c, name in metrics.items()], ignore_index=True)
    others = fc.facet_label(long, ("kv_mode", "batch", "prompt_len"))
    long = long.assign(facet=long["metric"] + others.map(lambda s: f", {s}" if s else ""), status=failed_side(long))
    long["cell.kv_mode"] = long["cell.kv_mode"].cat.remove_unused_categories()
    vals = long["v"][long["v"] > 0]
    span = max(float(vals.max()), 1 / float(vals.min()), 2.0) if len(vals) else 2.0
    norm, cmap = LogNorm(1 / span, span), matplotlib.colormaps["RdBu"]
    style = {"cmap": cmap, "norm": norm, "cbar": False, "fmt": "", "annot_kws": {"fontsize": 8}, "linewidths": 0.5}
    batches, prompts = sorted(set(sp["cell.batch"])), sorted(set(sp["cell.prompt_len"]))

    def panel(data: pd.DataFrame, **_) -> None:
        ax = plt.gca()
        wide = data.pivot_table(index="cell.batch", columns="cell.prompt_len", values="v", aggfunc="first")
        wide = wide.reindex(index=batches, columns=prompts)
        sns.heatmap(wide, ax=ax, annot=wide.map(lambda v: f"{v:.2f}×"), linecolor="white", **style)
        ax.grid(False)
        bad = data[data["v"].isna()]
        for b, p, status in zip(bad["cell.batch"], bad["cell.prompt_len"], bad["status"]):
            fc.mark(ax, prompts.index(p) + 0.5, batches.index(b) + 0.5, status)
        ax.tick_params(axis="y", rotation=0)

    width, height = max(4.2, 0.75 * len(prompts) + 1.4), max(2.4, 0.45 * len(batches) + 1.3)
    shape = {"height": height, "aspect": width / height, "sharex": False, "sharey": False}
    g = sns.FacetGrid(long, col="cell.kv_mode", row="facet", **shape, **fc.GRID)
    g.map_dataframe(panel)
    fc.titles(g, "{} vs none")
    g.set_axis_labels(fc.XLABELS["prompt_len"], "batch")
    g.figure.suptitle("Speedup of each KV cache over none", y=1.02)
    g.figure.subplots_adjust(hspace=0.6, top=0.88, right=0.85)
    bar = g.figure.colorbar(
        plt.cm.ScalarMappable(norm, cmap), ax=g.axes, shrink=0.8, label="speedup = none ms / mode ms"
    )
    bar.ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    bar.ax.yaxis.set_major_formatter(StrMethodFormatter("{x:g}×"))
    bar.ax.yaxis.set_minor_locator(NullLocator())
    bad = long.loc[long["v"].isna(), "status"]
    if len(bad):  # below the panels: the colour bar holds the right side
        handles = fc.failed_handles(bad)
        g.figure.legend(handles=handles, loc="lower center", frameon=False, ncols=3, bbox_to_anchor=(0.5, -0.05))
    return g.figure


def variants_figure(df: pd.DataFrame) -> plt.Figure:
    """Bars per kv_mode x n_kv_head (kv_variants.csv): KV-cache MiB, decode ms/token, max logit
    error vs none, at the (batch, prompt, new tokens) the most variants measured."""
    t = agg.kv_variants_table(df)
    if t is None:
        raise Skip("no static-int8 cell and no n_kv_head set")
    at = ["batch", "prompt_len", "new_tokens"]
    t = t.assign(facet=fc.facet_label(t, ("kv_mode", "n_kv_head", *at), prefix=""), ok=t["status"] == "ok")
    # per row of panels, the settings with the most finished variants (then the largest cache)
    counts = t.groupby(["facet", *at], as_index=False)["ok"].sum().eval("size = batch * (prompt_len + new_tokens)")
    best = counts.sort_values(["facet", "ok", "size", *at]).drop_duplicates("facet", keep="last")
    t = t.merge(best[["facet", *at]], on=["facet", *at])
    setting = t[at].apply(lambda r: "batch {}, prompt {}, new tokens {}".format(*r), axis=1)
    t["facet"] = (t["facet"] + "; ").where(t["facet"] != "", "") + setting
    t["label"] = t["kv_mode"].astype(str) + "\n" + t["n_kv_head"].astype(str) + " kv heads"
    t["differs"] = t["matches_reference"].astype(str) == "False"  # greedy tokens differ from none's
    held = t["kv_cache_bytes_measured"].astype(float).fillna(t["kv_cache_bytes_formula"].astype(float))
    metrics = {
        "KV cache, MiB (measured, else formula)": (held / fr.MIB, "{:.3g}"),
        "decode ms / token (median)": (t["decode_ms_per_token"], "{:.3g}"),
        "max |logit − none's logit|": (t["max_logit_diff"], "{:.2g}"),
    }
    long = pd.concat([t.assign(metric=k, v=v.astype(float), fmt=f) for k, (v, f) in metrics.items()])
    width, height = max(4.2, 0.85 * t.groupby("facet").size().max() + 1.2), 3.6
    shape = {"height": height, "aspect": width / height, "sharex": False, "sharey": False}
    g = sns.FacetGrid(long, col="metric", row="facet", **shape, **fc.GRID)
    g.map_dataframe(variant_bars)
    fc.titles(g, "{}")
    legend = [Patch(color=fc.color(m), label=str(m)) for m in t["kv_mode"].cat.categories]
    if t["differs"].any():
        legend.append(Patch(facecolor="white", edgecolor="black", hatch="//", label="greedy tokens differ from none's"))
    fc.finish(g, long, "KV-cache variants: memory, decode speed and the logit error they cost", ("", ""), legend)
    return g.figure


def variant_bars(data: pd.DataFrame, **_) -> None:
    """One panel of variants_figure: a bar per variant with its value on top; a failed one marked,
    a missing number said why (none has no cache and is the logits' reference)."""
    ax, d = plt.gca(), data.reset_index(drop=True)
    top = ax.get_xaxis_transform()
    drawn = d[d["ok"] & d["v"].notna()]
    hatched = drawn["differs"] & drawn["metric"].str.startswith("max")
    colors = drawn["kv_mode"].map(fc.color).tolist()
    bars = ax.bar(
        drawn.index, drawn["v"], width=0.7, color=colors, hatch=["//" if h else None for h in hatched],
        edgecolor=["black" if h else c for h, c in zip(hatched, colors)],
    )  # fmt: skip
    ax.bar_label(bars, [f.format(v) for f, v in zip(drawn["fmt"], drawn["v"])], padding=2, fontsize=7)
    for i, r in d[~d.index.isin(drawn.index)].iterrows():
        if not r["ok"]:
            fc.mark(ax, i, 0.06, r["status"], str(r["status"]), top)
        else:
            note = "n/a" if r["kv_mode"] != "none" else "no cache" if r["metric"].startswith("KV") else "reference"
            ax.annotate(note, (i, 0.04), xycoords=top, ha="center", fontsize=7, color="0.4")
    ax.set_xticks(range(len(d)), d["label"], fontsize=7)
    ax.set_xlim(-0.6, len(d) - 0.4)
    ax.set_ylim(bottom=0)
    ax.margins(y=0.15)


def per_token_figure(df: pd.DataFrame, steps: pd.DataFrame | None) -> plt.Figure:
    """Write-up 000's chart: decode ms at every step, the KV cache's MiB on a second axis, for one
    cell per mode at shared settings (the most modes, then the smallest batch and shortest prompt)."""
    if steps is None or not len(steps):
        raise Skip("no finished cell recorded per-step latencies")
    setting = df.groupby(fr.SAME, observed=True, dropna=False).ngroup()  # cells equal but in the kv mode
    steps = steps.assign(setting=steps["record"].map(dict(zip(df["record"], setting))))
    first = steps.drop_duplicates("record")
    first = first.assign(fewer=-first.groupby("setting")["cell.kv_mode"].transform("nunique"))  # the most modes first
    chosen = first.sort_values(["fewer", "cell.batch", "cell.prompt_len", "setting"]).iloc[0]
    sel = steps[steps["setting"] == chosen["setting"]]
    fig, ax = plt.subplots(figsize=(8.5, 5.2), layout="constrained")
    ax2 = ax.twinx()
    modes = [m for m in df["cell.kv_mode"].cat.categories if m in set(sel["cell.kv_mode"])]
    looks = fc.styles(dict(zip(modes, modes)), width=2.4, size=6.0)
    every = max(1, sel["step"].nunique() // 12)  # a marker every so many steps: thousands would blot out the line
    for m in modes:
        d = sel[sel["cell.kv_mode"] == m].sort_values("step")
        ax.plot(d["step"], d["decode_ms"], label=m, markevery=every, **looks[m])
        if d["kv_cache_mib"].notna().any():  # the cache's bytes of two modes coincide: layered as the lines are
            ax2.plot(d["step"], d["kv_cache_mib"], markevery=every, **looks[m] | {"linestyle": "--"})
    # an entry per mode (its colour and marker on both axes), then what each line style means
    handles = [Line2D([], [], label=m, **looks[m]) for m in modes]
    handles.append(Line2D([], [], color="0.3", label="solid: decode ms / step (left)"))
    if sel["kv_cache_mib"].notna().any():
        handles.append(Line2D([], [], color="0.3", linestyle="--", label="dashed: KV cache MiB (right)"))
    bad = df[(setting == chosen["setting"]) & ~df["ok"]]
    handles += [
        Line2D([], [], marker="X", color=fc.failed(s)[0], linestyle="none", label=f"{m}: {s} (no data)")
        for m, s in zip(bad["cell.kv_mode"], bad["status"])
    ]
    ax.set_xlabel("decode step (the cache then holds prompt + step tokens)")
    ax.set(ylabel="decode ms / step (median over iterations)", ylim=(0, None))
    ax2.set(ylabel="KV cache, MiB (formula, whole batch)", ylim=(0, None))
    ax2.grid(False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fc.x_at(ax, sel["step"], every=False)  # a single decode step: that one tick
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8, frameon=False)
    keys = ("model", "dtype", "attention", "batch", "prompt_len", "new_tokens")
    where = ", ".join(f"{k} {rp.setting(chosen[f'cell.{k}'])}" for k in keys)
    ax.set_title(f"Per-token decode latency and KV-cache size\n{where}")
    return fig


FIGURES: dict[str, Callable[..., plt.Figure]] = {
    "decode_ms_per_token": decode_figure,
    "peak_memory": peak_memory_figure,
    "prefill_decode_split": split_figure,
    "speedup_heatmap": heatmap_figure,
    "per_token_latency": per_token_figure,  # the only one drawn from per_step.csv
    "floor_fraction": floor_figure,
    "speedup_vs_model": lambda df: speedup_figure(df, "model", WRITEUP_003, "T4 GPU (claimed)"),
    "speedup_vs_new_tokens": lambda df: speedup_figure(df, "new_tokens", WRITEUP_002, "claimed range"),
    "kv_variants": variants_figure,
    **ALLOC_FIGURES,  # paged vs static vs concat: kv_alloc_bytes, kv_alloc_decode
    **approx_figures.FIGURES,  # the approximate caches' price: kv_pareto, kv_memory_length
    **engine_figures.FIGURES,  # the engines side by side (vs-peers): engines_decode
    **speed_figures.FIGURES,  # each cache's decode time against static's along the context: kv_speed
}
FIGURE_STEMS = tuple(FIGURES)


def draw(stem: str, df: pd.DataFrame, steps: pd.DataFrame | None = None) -> plt.Figure:
    """One figure of the frame; raises Skip when the sweep gives it nothing to compare."""
    return FIGURES[stem](df, steps) if stem == "per_token_latency" else FIGURES[stem](df)


def render(
    tables_dir: Path, out_dir: Path, only: Sequence[str] | None = None, log: Callable | None = None
) -> list[Path]:
    """Draw every figure the sweep supports (PNG and SVG each); say in one line (`log`, else stderr) why any
    other is left out, and remove an older copy of it. `only`: just these stems."""
    log = log or (lambda line: print(line, file=sys.stderr))
    unknown = sorted(set(only or ()) - set(FIGURE_STEMS))
    if unknown:
        raise ValueError(f"unknown figure(s) {', '.join(unknown)}; known: {', '.join(FIGURE_STEMS)}")
    tables_dir, out_dir = Path(tables_dir), Path(out_dir)
    df = fr.read_cells(tables_dir / "cells.csv")
    steps_csv = tables_dir / "per_step.csv"
    steps = fr.read_table(steps_csv) if steps_csv.is_file() and steps_csv.stat().st_size else None
    out_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), matplotlib.rc_context(RC):
        for stem in [s for s in FIGURE_STEMS if only is None or s in only]:
            try:
                fig = draw(stem, df, steps)
            except Skip as why:
                log(f"figures: {stem} left out of this sweep: {why}")
                for fmt in ("png", "svg"):  # a figure left out must not survive from an older run
                    (out_dir / f"{stem}.{fmt}").unlink(missing_ok=True)
                continue
            for fmt in ("png", "svg"):
                buf = io.BytesIO()
                fig.savefig(buf, format=fmt, metadata=fc.SAVE_METADATA[fmt], bbox_inches="tight")
                kvrecord.write_atomic_bytes(out_dir / f"{stem}.{fmt}", buf.getvalue())
                written.append(out_dir / f"{stem}.{fmt}")
            plt.close(fig)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench figures", description="A sweep's tables -> figures (PNG + SVG).")
    parser.add_argument("--tables", required=True, type=Path, help="the sweep's tables directory (cells.csv, ...)")
    parser.add_argument("--out", required=True, type=Path, help="figures directory to write")
    parser.add_argument("--only", nargs="+", metavar="FIGURE", default=None, help=f"of {', '.join(FIGURE_STEMS)}")
    args = parser.parse_args(argv)

    def action() -> str:
        return f"figures: {len(render(args.tables, args.out, args.only))} files -> {args.out}"

    return command.run("figures", action)


if __name__ == "__main__":
    raise SystemExit(main())
