"""How the caches allocate, drawn: KV bytes reserved against bytes used, and the decode time each layout costs.

The table and the sentences are kvbench/analysis/alloc_table.py. `bytes_figure` draws reserved
(solid) against used (dotted) as the batch grows more ragged; `decode_figure` the decode time per
token of each mode. Each cache (paged at each block size its own) keeps one colour and marker in both.
`main` writes the table, both figures and the sentences from a folder of records.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.lines import Line2D

from kvbench.analysis import facets as fc
from kvbench.analysis.alloc_table import MODES, NoPaged, alloc_table, claims, markdown
from kvbench.analysis.table_figures import TableFigures, pyplot


def caches(t: pd.DataFrame) -> dict[str, str]:
    """Each cache's label and kv mode in drawing order: static, concat, then paged by block size. Both figures
    draw them in this order, so a cache keeps its colour and marker in both."""
    first = t.drop_duplicates("label")
    blocks = pd.to_numeric(first["label"].str.extract(r"-(\d+)$")[0]).fillna(0)
    order = first.assign(rank=first["kv_mode"].map(MODES.index), blocks=blocks).sort_values(["rank", "blocks"])
    return dict(zip(order["label"], order["kv_mode"]))


def legend(fig, looks: dict[str, dict], keys: Sequence[Line2D] = ()) -> None:
    """One legend right of the panels: an entry per cache, then what each line style means."""
    handles = [Line2D([], [], label=label, **look) for label, look in looks.items()]
    fig.legend(handles=[*handles, *keys], loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=8)


def bytes_figure(t: pd.DataFrame):
    """Reserved (solid) and used (dotted) KV MiB against the prompt spread, at the largest batch, a panel
    per shared prefix."""
    plt = pyplot()
    top, modes = t[t["batch"] == t["batch"].max()], caches(t)
    # used on top of every reserved line (the two coincide where a cache holds only what it uses), thinner
    looks, used = fc.styles(modes), fc.styles(modes, width=2.2, size=6.0, zorder=3.0)
    prefixes = sorted(top["shared_prefix"].unique())
    fig, axes = plt.subplots(1, len(prefixes), figsize=(4.6 * len(prefixes), 3.8), squeeze=False, sharey=True)
    for ax, prefix in zip(axes[0], prefixes):
        panel = top[top["shared_prefix"] == prefix]
        for label, look in looks.items():
            g = panel[panel["label"] == label].sort_values("prompt_spread")
            ax.plot(g["prompt_spread"], g["reserved"] / 2**20, label=label, **look)
            ax.plot(g["prompt_spread"], g["used"] / 2**20, **used[label] | {"linestyle": ":"})
        fc.x_at(ax, panel["prompt_spread"])
        ax.set_title(f"batch {int(top['batch'].max())}, shared prefix {int(prefix)}")
        ax.set_xlabel("prompt spread (shortest = (1 - spread) x longest)")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("KV MiB at the last step (solid reserved, dotted used)")
    fig.suptitle("KV bytes reserved vs used as the batch grows more ragged (counted from the caches)")
    fig.tight_layout()
    keys = [
        Line2D([], [], color="0.3", linestyle="-", label="solid: reserved"),
        Line2D([], [], color="0.3", linestyle=":", label="dotted: used (by the tokens held)"),
    ]
    legend(fig, looks, keys)
    return fig


def decode_figure(t: pd.DataFrame):
    """Decode ms/token against batch, one line per mode (and block size), a panel per spread."""
    plt = pyplot()
    spreads, looks = sorted(t["prompt_spread"].unique()), fc.styles(caches(t), dashed=True)
    fig, axes = plt.subplots(1, len(spreads), figsize=(4.6 * len(spreads), 3.8), squeeze=False, sharey=True)
    plain = t[t["shared_prefix"] == t["shared_prefix"].min()]
    for ax, spread in zip(axes[0], spreads):
        panel = plain[plain["prompt_spread"] == spread]
        for label, look in looks.items():
            g = panel[panel["label"] == label].sort_values("batch")
            ax.plot(g["batch"], g["decode_ms_per_token"], label=label, **look)
        fc.x_at(ax, panel["batch"])  # a spread only a batch of several has: one batch, one tick
        ax.set_title(f"prompt spread {spread:g}")
        ax.set_xlabel("batch")
        ax.grid(True, alpha=0.3)
    axes[0][0].set_ylabel("decode ms/token (median)")
    fig.suptitle("What paging costs per decode step (blocks read in place, or gathered for a ragged batch)")
    fig.tight_layout()
    legend(fig, looks)
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
