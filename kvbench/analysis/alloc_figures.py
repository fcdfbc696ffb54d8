"""How the caches allocate, drawn: KV bytes reserved against bytes used, and the decode time each layout costs.

The table and the sentences are kvbench/analysis/alloc_table.py. `bytes_figure` draws reserved
(solid) against used (dotted) as the batch grows more ragged; `decode_figure` the decode time per
token of each mode. `main` writes the table, both figures and the sentences from a folder of records.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench.analysis import command
from kvbench.analysis.alloc_table import NoPaged, alloc_table, claims, markdown
from kvbench.analysis.facets import Skip, color


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bytes_figure(t: pd.DataFrame):
    """Reserved (solid) and used (dashed) KV MiB against the prompt spread, at the largest batch, a panel
    per shared prefix."""
    plt = _plt()
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
    plt = _plt()
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


def _drawn(draw):
    """A figure of the frame; Skip (kvbench figures' one-line reason) where there is no paged cell."""

    def figure(df: pd.DataFrame):
        try:
            return draw(alloc_table(df))
        except NoPaged as why:
            raise Skip(str(why)) from None

    return figure


FIGURES = {"kv_alloc_bytes": _drawn(bytes_figure), "kv_alloc_decode": _drawn(decode_figure)}


def write(records: Path, out: Path) -> str:
    """kv_alloc.csv, kv_alloc.md (the table and a sentence per grid point) and both figures in `out`."""
    from kvbench.analysis import frame as fr

    t = alloc_table(fr.from_records(sorted(records.rglob("*.json"))))
    out.mkdir(parents=True, exist_ok=True)
    t.to_csv(out / "kv_alloc.csv", index=False)
    for name, fig in (("kv_alloc_bytes", bytes_figure(t)), ("kv_alloc_decode", decode_figure(t))):
        fig.savefig(out / f"{name}.png", bbox_inches="tight")
    (out / "kv_alloc.md").write_text(markdown(t) + "\n\n" + "\n".join(f"- {c}" for c in claims(t)) + "\n")
    return f"alloc_figures: {len(t)} cells -> {out}"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvbench.analysis.alloc_figures RECORDS_DIR OUT_DIR`: the table, both figures, the claims."""
    p = argparse.ArgumentParser(prog="alloc_figures", description=main.__doc__)
    p.add_argument("records", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    return command.run("alloc_figures", lambda: write(args.records, args.out))


if __name__ == "__main__":
    raise SystemExit(main())
