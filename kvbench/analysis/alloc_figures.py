"""How the caches allocate, drawn: KV bytes reserved against bytes used, and the decode time each layout costs.

The table and the sentences are kvbench/analysis/alloc_table.py. `bytes_figure` draws reserved
(solid) against used (dotted) as the batch grows more ragged; `decode_figure` the decode time per
token of each mode. `main` writes the table, both figures and the sentences from a folder of records.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from kvbench.analysis.alloc_table import NoPaged, alloc_table, claims, markdown
from kvbench.analysis.facets import color
from kvbench.analysis.table_figures import TableFigures, pyplot


def bytes_figure(t: pd.DataFrame):
    """Reserved (solid) and used (dashed) KV MiB against the prompt spread, at the largest batch, a panel
    per shared prefix."""
    plt = pyplot()
    top = t[t["batch"] == t["batch"].max()]
    prefixes = sorted(top["shared_prefix"].unique())
    fig, axes = plt.subplots(1, len(prefixes), figsize=(4.6 * len(prefixes), 3.8), squeeze=False, sharey=True)
    for ax, prefix in zip(axes[0], prefixes):
        for label, g in top[top["shared_prefix"] == prefix].groupby("label", sort=False):
            g = g.sort_values("prompt_spread")
            c = color(g["kv_mode"].iloc[0])
            style = "-" if label != "paged-64" else "-."
            ax.plot(g["prompt_spread"], g["reserved"] / 2**20, style, marker="o", color=c, label=f"{label} reserved")
            ax.plot(g["prompt_spread"], g["used"] / 2**20, ":", marker="x", color=c, alpha=0.7)
        ax.set_title(f"batch {int(top['batch'].max())}, shared prefix {int(prefix)}")
        ax.set_xlabel("prompt spread (shortest = (1 - spread) x longest)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("KV MiB at the last step (solid reserved, dotted used)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle("KV bytes reserved vs used as the batch grows more ragged (counted from the caches)")
    fig.tight_layout()
    return fig


def decode_figure(t: pd.DataFrame):
    """Decode ms/token against batch, one line per mode (and block size), a panel per spread."""
    plt = pyplot()
    spreads = sorted(t["prompt_spread"].unique())
    fig, axes = plt.subplots(1, len(spreads), figsize=(4.6 * len(spreads), 3.8), squeeze=False, sharey=True)
    plain = t[t["shared_prefix"] == t["shared_prefix"].min()]
    for ax, spread in zip(axes[0], spreads):
        for label, g in plain[plain["prompt_spread"] == spread].groupby("label", sort=False):
            g = g.sort_values("batch")
            ax.plot(g["batch"], g["decode_ms_per_token"], marker="o", color=color(g["kv_mode"].iloc[0]), label=label)
        ax.set_title(f"prompt spread {spread:g}")
        ax.set_xlabel("batch")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("decode ms/token (median)")
    axes[0][0].legend(fontsize=8)
    fig.suptitle("What the block gather costs per decode step")
    fig.tight_layout()
    return fig


SIDE = TableFigures(
    "alloc_figures",
    alloc_table,
    NoPaged,
    {"kv_alloc_bytes": bytes_figure, "kv_alloc_decode": decode_figure},
    markdown,
    claims,
)
FIGURES = SIDE.figures()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvbench.analysis.alloc_figures RECORDS_DIR OUT_DIR`: the table, both figures, the claims."""
    return SIDE.main(argv, "kv_alloc")


if __name__ == "__main__":
    raise SystemExit(main())
