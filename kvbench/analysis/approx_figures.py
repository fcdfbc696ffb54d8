"""The price of the approximate caches, side by side: memory bought against accuracy lost.

The table (`price_table`) has one row per cached cell of a sweep with an approximate cache: KV bytes
held and per cached position, decode time, and the price measured against the exact model on the
same context (kvbench/analysis/approx_price.py). `pareto_figure` puts bytes per position against KL,
one point per mode (its colour and marker) at each length; `length_figure` shows the bytes held and
the KL as the stream grows (flat for `sliding`, growing for the others). `main` writes the table,
both figures and the sentences from a folder of records.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.lines import Line2D

from kvbench.analysis import facets as fc
from kvbench.analysis.approx_price import NoPrice, claims, markdown, price_table
from kvbench.analysis.facets import Skip
from kvbench.analysis.table_figures import TableFigures, pyplot


def pareto_figure(t: pd.DataFrame):
    """KV bytes per cached position (x, log) against mean KL (y, symlog): lower-left is cheaper and closer."""
    # Cells recorded without the price (or without a counted cache) have no point to place on log axes.
    t = t[(t["kv_bytes_per_token"] > 0) & t["kl_mean"].notna()]
    if t.empty:
        raise Skip("no cached cell in this sweep carries both its counted KV bytes and its KL")
    plt = pyplot()
    lengths = sorted(t["new_tokens"].unique())
    # each mode its own marker, in a legend: two modes' points can all but coincide, and names beside them collide
    looks = {m: look | {"linestyle": "none"} for m, look in fc.styles(fc.in_order(t["kv_mode"]), size=11).items()}
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], lengths):
        for mode, look in looks.items():
            g = t[(t["new_tokens"] == n) & (t["kv_mode"] == mode)]
            ax.plot(g["kv_bytes_per_token"], g["kl_mean"], label=mode, **look)
        ax.set_xscale("log")
        fc.x_at(ax, t.loc[t["new_tokens"] == n, "kv_bytes_per_token"], every=False)  # measured: one value, one tick
        ax.set_yscale("symlog", linthresh=1e-9)
        ax.set_title(f"{n} new tokens")
        ax.set_xlabel("KV bytes per cached position (counted)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean KL(exact || cache), nats")
    model = ", ".join(sorted(t["model"].unique()))
    fig.suptitle(f"Memory bought against accuracy lost ({model}; teacher-forced against the exact model)")
    fig.tight_layout()
    handles = [Line2D([], [], label=m, **look) for m, look in looks.items()]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=8)
    return fig


def length_figure(t: pd.DataFrame):
    """Bytes held and mean KL against the number of new tokens, one line per mode."""
    plt = pyplot()
    fig, (mem, acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    looks, labelled = fc.styles(fc.in_order(t["kv_mode"]), dashed=True), set()  # two modes' KL can coincide
    for (mode, *_), g in t.groupby(["kv_mode", "model", "dtype", "engine", "batch", "prompt_len"], sort=False):
        g, label = g.sort_values("new_tokens"), None if mode in labelled else mode
        labelled.add(mode)
        mem.plot(g["new_tokens"], g["kv_bytes"] / 2**20, label=label, **looks[mode])
        acc.plot(g["new_tokens"], g["kl_mean"], label=label, **looks[mode])
    mem.set_ylabel("KV cache held (MiB, counted)")
    acc.set_ylabel("mean KL(exact || cache), nats")
    acc.set_yscale("symlog", linthresh=1e-9)
    for ax in (mem, acc):
        fc.x_at(ax, t["new_tokens"])
        ax.set_xlabel("new tokens generated")
        ax.grid(True, alpha=0.3)
    mem.legend(handles=[Line2D([], [], label=m, **look) for m, look in looks.items()], fontsize=8)  # modes' order
    fig.suptitle("Memory and accuracy as the stream grows")
    fig.tight_layout()
    return fig


SIDE = TableFigures(
    "approx_figures",
    price_table,
    NoPrice,
    {"kv_pareto": pareto_figure, "kv_memory_length": length_figure},
    markdown,
    claims,
)
FIGURES = SIDE.figures()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvbench.analysis.approx_figures RECORDS_DIR OUT_DIR`: the table, both figures, the claims."""
    return SIDE.main(argv, "kv_price")


if __name__ == "__main__":
    raise SystemExit(main())
