"""Where each cache starts to pay, drawn: decode ms/token against the context, `static` the reference.

The table and the sentences are kvbench/analysis/speed_table.py. `speed_figure` draws, per batch and compile
setting, each mode's decode ms/token (left, static's dotted in black) and its ratio to static's (right, 1.0
dotted): a mode below 1.0 decodes faster than static at that context. `main` writes the table, the figure and
the sentences from a folder of records.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd
from matplotlib.lines import Line2D

from kvbench.analysis import facets as fc
from kvbench.analysis.speed_table import NoSpeed, claims, markdown, speed_table
from kvbench.analysis.table_figures import TableFigures, pyplot


def speed_figure(t: pd.DataFrame):
    """A row of two panels per (model, batch, compile): ms/token and ratio to static, against the context."""
    plt = pyplot()
    rows = list(t.groupby(["model", "batch", "compile"], sort=True).groups)
    looks = fc.styles(fc.in_order(t["kv_mode"]), dashed=True)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.6 * len(rows)), squeeze=False)
    for (model, batch, compiled), (ms, ratio) in zip(rows, axes):
        panel = t[(t["model"] == model) & (t["batch"] == batch) & (t["compile"] == compiled)]
        static = panel.drop_duplicates("context").sort_values("context")
        ms.plot(static["context"], static["static_ms"], color="0.1", linestyle=":", marker="o", markersize=4)
        for mode, look in looks.items():
            g = panel[panel["kv_mode"] == mode].sort_values("context")
            ms.plot(g["context"], g["decode_ms"], label=mode, **look)
            ratio.plot(g["context"], g["ratio"], label=mode, **look)
        ratio.axhline(1.0, color="0.1", linestyle=":", linewidth=1)
        how = "compiled" if compiled else "eager"
        for ax, what in ((ms, "decode ms/token (median)"), (ratio, "decode time / static's")):
            ax.set_xscale("log", base=2)
            fc.x_at(ax, panel["context"])
            ax.set_xlabel("context: keys a decode step reads (prompt + half the new tokens)")
            ax.set_ylabel(what)
            ax.set_title(f"{model}, batch {batch}, {how}")
            ax.grid(True, alpha=0.3)
        ms.set_ylim(bottom=0)
        ratio.set_ylim(0, max(1.2, float(panel["ratio"].max()) * 1.1))
    fig.suptitle("Where each cache starts to pay: decode time against static's as the context grows")
    fig.tight_layout()
    handles = [Line2D([], [], label=m, **look) for m, look in looks.items()]
    handles.append(Line2D([], [], color="0.1", linestyle=":", marker="o", markersize=4, label="static (reference)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.9), fontsize=8)
    return fig


SIDE = TableFigures("speed_figures", speed_table, NoSpeed, {"kv_speed": speed_figure}, markdown, claims)
FIGURES = SIDE.figures()


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvbench.analysis.speed_figures RECORDS_DIR OUT_DIR`: the table, the figure, the claims."""
    return SIDE.main(argv, "kv_speed")


if __name__ == "__main__":
    raise SystemExit(main())
