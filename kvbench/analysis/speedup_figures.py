"""The figures drawn from the pair tables: speedup against model size and generation length
(beside write-ups 003's and 002's claims), the KV variants, and write-up 000's per-token chart."""

from __future__ import annotations

import matplotlib.pyplot as plt  # after facets' matplotlib.use('Agg') takes effect: no figure exists yet
import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator

from kvbench.analysis import aggregate as agg
from kvbench.analysis import claims
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.analysis.facets import (
    AXIS_LABELS,
    FAILED,
    PALETTE,
    Skip,
    _titles,
    _x_axis,
    failed_handles,
    grid,
    mark_failed,
    ticks,
    x_values,
)

WRITEUP_002, WRITEUP_003 = "KV-Cache Implementation Summary", "nanoGPT + KV Cache"  # their claims: data/claims.csv
OTHERS = ("engine", "model", "dtype", "attention", "n_kv_head", "batch", "prompt_len", "new_tokens")


def _facet(t: pd.DataFrame, exclude) -> pd.Series:
    keys = [k for k in OTHERS if k not in exclude and t[k].astype(object).map(str).nunique() > 1]
    return (
        t[keys].apply(
            lambda r: ", ".join(
                f"{k}={'all' if k == 'n_kv_head' and pd.isna(v) else rp.lab(v)}" for k, v in zip(keys, r)
            ),
            axis=1,
        )
        if keys
        else pd.Series("", index=t.index)
    )


def axis_speedup_figure(df: pd.DataFrame, axis: str) -> plt.Figure:
    """Speedup (none / cached) along model size or generation length: a column for the whole
    generation and one per decode token, a line per cached mode; the write-ups' claims in grey."""
    t = agg.axis_table(df, axis)
    if t is None or not len(t):
        raise Skip(f"one {axis.replace('_', ' ')} only: nothing to compare along it")
    x = f"cell.{axis}"
    t = t.assign(**{x: t[axis]})
    t["x"] = x_values(t, x)[0] if axis == "new_tokens" else t["model"].cat.codes.astype(float)
    pos, labels = x_values(df[df["cell.model"].isin(set(t["model"]))] if axis == "model" else t, x)[1:]
    if axis == "model":
        pos, labels = pos[: len(set(t["model"]))], labels[: len(set(t["model"]))]
    claimed = (
        {
            float(list(df["cell.model"].cat.categories).index(m)): (v, v)
            for m, (v, _) in claims.claimed(WRITEUP_003, "model").items()
            if m in set(t["model"].astype(str))
        }
        if axis == "model"
        else {float(n): lohi for n, lohi in claims.claimed(WRITEUP_002, "new_tokens").items() if float(n) in pos}
    )
    long = pd.concat(
        [
            t.assign(metric=name, v=t[col].astype(float))
            for col, name in (
                ("total_speedup", "whole generation (total time)"),
                ("decode_speedup", "per decode token"),
            )
        ]
    )
    long["facet"] = _facet(long, (axis,))
    g = grid(
        long,
        "metric",
        ["whole generation (total time)", "per decode token"],
        sharey=True,
        height=3.4,
        aspect=max(4.2, 1.1 * len(pos) + 1.5) / 3.4,
    )

    def panel(data, **_):
        ax = plt.gca()
        for mode, d in data[data["v"] > 0].sort_values("x").groupby("kv_mode", observed=True):
            ax.plot(d["x"], d["v"], marker="o", color=PALETTE.get(str(mode), "0.4"))
            for xv, v in zip(d["x"], d["v"]):
                ax.annotate(
                    f"{v:.2f}×",
                    (xv, v),
                    xytext=(5, 4),
                    textcoords="offset points",
                    fontsize=7,
                    color=PALETTE.get(str(mode), "0.4"),
                )
        bad = data[data["v"].isna()]
        mark_failed(
            ax,
            bad["x"],
            bad["status"].where(bad["status"] != "ok", bad["none_status"]),
            [
                f"{m}" if s != "ok" else f"{m} (none {n})"
                for m, s, n in zip(bad["kv_mode"], bad["status"], bad["none_status"])
            ],
        )
        if data["metric"].iloc[0].startswith("whole") and data["n_kv_head"].isna().all():
            for xv, (lo, hi) in claimed.items():  # the write-ups ran plain multi-head models
                ax.plot(
                    [xv, xv], [lo, hi], color="0.55", linewidth=5, alpha=0.6, solid_capstyle="butt", zorder=1
                ) if lo != hi else ax.scatter([xv], [lo], marker="D", s=36, color="0.55", zorder=5)
        ax.axhline(1.0, color="0.3", linestyle=":", linewidth=1)

    g.map_dataframe(panel)
    _titles(g, "{}")
    for ax in g.axes.flat:
        _x_axis(ax, x, pos, labels)
    g.set_axis_labels(AXIS_LABELS[x], "speedup = none / cached")
    vals = pd.concat([long["v"][long["v"] > 0], pd.Series([v for lohi in claimed.values() for v in lohi])])
    ax0 = g.axes.flat[0]
    ax0.set_yscale("log")
    lo, hi = min(float(vals.min()), 0.8), float(vals.max()) * (2.0 if long["v"].isna().any() else 1.3)
    ax0.set_ylim(lo, hi)
    ticks(ax0.yaxis, lo, hi, log=True, fmt="{:g}×")
    handles = [
        Line2D([], [], color=PALETTE.get(str(m), "0.4"), marker="o", label=f"{m} vs none")
        for m in t["kv_mode"].cat.categories
        if m != "none"
    ]
    handles.append(Line2D([], [], color="0.3", linestyle=":", label="1× (no speedup)"))
    if claimed:
        handles.append(
            Line2D(
                [],
                [],
                color="0.55",
                linewidth=5,
                alpha=0.6,
                label=(f"{WRITEUP_003}: T4 GPU (claimed)" if axis == "model" else f"{WRITEUP_002}: claimed range"),
            )
        )
    bad = long[long["v"].isna()]
    g.add_legend(
        legend_data={
            h.get_label(): h
            for h in handles + failed_handles(bad["status"].where(bad["status"] != "ok", bad["none_status"]))
        }
    )
    g.figure.suptitle(f"Speedup of the KV cache vs {'model size' if axis == 'model' else 'generation length'}", y=1.02)
    return g.figure


def kv_variants_figure(df: pd.DataFrame) -> plt.Figure:
    """Bars per kv_mode x n_kv_head: KV-cache MiB, decode ms/token, max logit error vs none, at the
    (batch, prompt, new tokens) the most variants measured."""
    t = agg.kv_variants_table(df)
    if t is None:
        raise Skip("no static-int8 cell and no n_kv_head set")
    t = t.assign(
        facet=_facet(t, ("n_kv_head", "batch", "prompt_len", "new_tokens")),
        size=t["batch"] * (t["prompt_len"] + t["new_tokens"]),
        okc=t["status"] == "ok",
    )
    best = t.groupby(["facet", "batch", "prompt_len", "new_tokens"])["okc"].sum().reset_index()
    best = (
        best.assign(size=best["batch"] * (best["prompt_len"] + best["new_tokens"]))
        .sort_values(["facet", "okc", "size", "batch", "prompt_len", "new_tokens"])
        .drop_duplicates("facet", keep="last")
    )
    t = t.merge(best[["facet", "batch", "prompt_len", "new_tokens"]], on=["facet", "batch", "prompt_len", "new_tokens"])
    t["facet"] = [
        f"{f}{'; ' if f else ''}batch {b}, prompt {p}, new tokens {n}"
        for f, b, p, n in zip(t["facet"], t["batch"], t["prompt_len"], t["new_tokens"])
    ]
    t["label"] = t["kv_mode"].astype(str) + "\n" + t["n_kv_head"].map(rp.lab) + " kv heads"
    panels = {
        "KV cache, MiB (measured, else formula)": (
            t["kv_cache_bytes_measured"].astype(float).fillna(t["kv_cache_bytes_formula"].astype(float)) / fr.MIB,
            "{:.3g}",
        ),
        "decode ms / token (median)": (t["decode_ms_per_token"].astype(float), "{:.3g}"),
        "max |logit − none's logit|": (t["max_logit_diff"].astype(float), "{:.2g}"),
    }
    long = pd.concat([t.assign(metric=k, v=v, fmt=f) for k, (v, f) in panels.items()])
    n_bars = t.groupby("facet").size().max()
    g = grid(
        long, "metric", list(panels), sharey=False, sharex=False, height=3.6, aspect=max(4.2, 0.85 * n_bars + 1.2) / 3.6
    )

    def panel(data, **_):
        ax = plt.gca()
        data = data.reset_index(drop=True)
        for i, r in data.iterrows():
            if r["status"] != "ok":
                mark_failed(ax, [i], [r["status"]], [str(r["status"])], y0=0.06)
            elif pd.isna(r["v"]):
                ax.annotate(
                    "no cache"
                    if r["kv_mode"] == "none" and r["metric"].startswith("KV")
                    else "reference"
                    if r["kv_mode"] == "none"
                    else "n/a",
                    (i, 0.04),
                    xycoords=ax.get_xaxis_transform(),
                    ha="center",
                    fontsize=7,
                    color="0.4",
                )
            else:
                differs = r["metric"].startswith("max") and str(r["matches_reference"]) == "False"
                color = PALETTE.get(str(r["kv_mode"]), "0.4")
                ax.bar(
                    i,
                    r["v"],
                    color=color,
                    width=0.7,
                    hatch="//" if differs else None,
                    edgecolor="black" if differs else color,
                )
                ax.annotate(
                    r["fmt"].format(r["v"]),
                    (i, r["v"]),
                    xytext=(0, 2),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=7,
                )
        ax.set_xticks(range(len(data)), data["label"], fontsize=7)
        ax.set_xlim(-0.6, len(data) - 0.4)
        ax.set_ylim(bottom=0)
        ax.margins(y=0.15)

    g.map_dataframe(panel)
    _titles(g, "{}")
    handles = [Patch(color=PALETTE.get(str(m), "0.4"), label=str(m)) for m in t["kv_mode"].cat.categories]
    if (t["matches_reference"].astype(str) == "False").any():
        handles.append(
            Patch(facecolor="white", edgecolor="black", hatch="//", label="greedy tokens differ from none's")
        )
    g.add_legend(legend_data={h.get_label(): h for h in handles + failed_handles(t.loc[~t["okc"], "status"])})
    g.figure.suptitle("KV-cache variants: memory, decode speed and the logit error they cost", y=1.02)
    return g.figure


def per_token_figure(df: pd.DataFrame, steps: pd.DataFrame | None) -> plt.Figure:
    """Write-up 000's chart: decode ms at every step, the KV cache's MiB on a second axis, for one
    cell per mode at shared settings (the most modes, smallest batch, shortest prompt)."""
    if steps is None or not len(steps):
        raise Skip("no finished cell recorded per-step latencies")
    key = df.set_index("record")["key"]
    steps = steps.assign(key=steps["record"].map(key))
    first = steps.drop_duplicates("record").assign(n=lambda s: s.groupby("key")["cell.kv_mode"].transform("nunique"))
    chosen = first.sort_values(["n", "cell.batch", "cell.prompt_len", "key"], ascending=[False, True, True, True]).iloc[
        0
    ]
    sel = steps[steps["key"] == chosen["key"]]
    fig = plt.figure(figsize=(8.5, 5.2), layout="constrained")
    ax = fig.subplots()
    ax2 = ax.twinx()
    handles = []
    for mode in [m for m in fr.KV_MODE_ORDER if m in set(sel["cell.kv_mode"])] + sorted(
        set(sel["cell.kv_mode"]) - set(fr.KV_MODE_ORDER)
    ):
        d, color = sel[sel["cell.kv_mode"] == mode].sort_values("step"), PALETTE.get(mode, "0.4")
        ax.plot(d["step"], d["decode_ms"], color=color, marker="o", markersize=3)
        handles.append(Line2D([], [], color=color, marker="o", markersize=3, label=f"{mode}: decode ms / step"))
        if d["kv_cache_mib"].notna().any():
            ax2.plot(d["step"], d["kv_cache_mib"], color=color, linestyle="--")
            handles.append(Line2D([], [], color=color, linestyle="--", label=f"{mode}: KV cache MiB (right)"))
    bad = df[(df["key"] == chosen["key"]) & ~df["ok"]]
    handles += [
        Line2D(
            [],
            [],
            marker="X",
            color=FAILED.get(str(s), ("#9467bd", ""))[0],
            linestyle="none",
            label=f"{m}: {s} (no data)",
        )
        for m, s in zip(bad["cell.kv_mode"], bad["status"])
    ]
    ax.set(
        xlabel="decode step (the cache then holds prompt + step tokens)",
        ylabel="decode ms / step (median over iterations)",
        ylim=(0, None),
    )
    ax2.set(ylabel="KV cache, MiB (formula, whole batch)", ylim=(0, None))
    ax2.grid(False)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=8, frameon=False)
    where = ", ".join(
        f"{k} {rp.lab(chosen[f'cell.{k}'])}"
        for k in ("model", "dtype", "attention", "batch", "prompt_len", "new_tokens")
    )
    ax.set_title(f"Per-token decode latency and KV-cache size\n{where}")
    return fig
