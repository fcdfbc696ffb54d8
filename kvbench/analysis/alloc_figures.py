"""How the caches allocate: KV bytes reserved against bytes used, and the decode time each layout costs.

`alloc_table` is one row per ok cell of a sweep with a `paged` cache: the bytes the cache reserved
and the bytes real tokens used at the last step (both counted from the live cache), the waste
between them, decode and prefill time, for `static`, `concat` and `paged` at each block size, as
the batch grows and its prompts spread (kvbench/ragged.py) or share a prefix. `bytes_figure` draws
reserved (solid) against used (dashed) as the batch grows more ragged; `decode_figure` the decode
time per token of each mode; `claims` says from the table what paging saves, what the gather costs
per step, and where `static` is still the better choice.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench.analysis.facets import Skip, color

MODES = ("static", "concat", "paged")
COLUMNS = {
    "cell.model": "model",
    "cell.dtype": "dtype",
    "label": "label",
    "cell.kv_mode": "kv_mode",
    "cell.batch": "batch",
    "cell.prompt_len": "prompt_len",
    "cell.prompt_spread": "prompt_spread",
    "cell.shared_prefix": "shared_prefix",
    "memory.kv_bytes_reserved": "reserved",
    "memory.kv_bytes_used": "used",
    "waste": "waste",
    "latency.decode_ms_per_token.median": "decode_ms_per_token",
    "latency.prefill_ms.median": "prefill_ms",
    "check.matches_reference": "matches_reference",
}
KEYS = ["model", "dtype", "batch", "prompt_len", "prompt_spread", "shared_prefix"]


def alloc_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok static/concat/paged cell that recorded its bytes; raises Skip without a paged cell."""
    modes = df["cell.kv_mode"].astype(str)
    if not modes.eq("paged").any() or "memory.kv_bytes_reserved" not in df:
        raise Skip("no paged cell with KV bytes reserved and used in this sweep")
    ok = df[(df["status"].astype(str) == "ok") & modes.isin(MODES) & df["memory.kv_bytes_reserved"].notna()].copy()
    for column in ("cell.prompt_spread", "cell.shared_prefix", "cell.block_tokens"):
        ok[column] = ok[column].fillna(0) if column in ok else 0  # a rectangular batch's record names neither
    blocks = ok["cell.block_tokens"].astype(int).astype(str)
    ok["label"] = ok["cell.kv_mode"].astype(str).where(ok["cell.kv_mode"].astype(str) != "paged", "paged-" + blocks)
    ok["waste"] = 1.0 - ok["memory.kv_bytes_used"] / ok["memory.kv_bytes_reserved"]
    t = ok[list(COLUMNS)].rename(columns=COLUMNS)
    t["kv_mode"] = t["kv_mode"].astype(str)
    return t.sort_values([*KEYS, "label"], kind="stable").reset_index(drop=True)


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


FIGURES = {
    "kv_alloc_bytes": lambda df: bytes_figure(alloc_table(df)),
    "kv_alloc_decode": lambda df: decode_figure(alloc_table(df)),
}


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def claims(t: pd.DataFrame) -> list[str]:
    """Per grid point with static and paged: the bytes paging saves, the gather's cost, the prefill saved."""
    out = []
    for key, g in t.groupby(KEYS, sort=False):
        at = g.set_index("label")
        if "static" not in at.index:
            continue
        base = at.loc["static"]
        model, _, batch, _, spread, prefix = key
        for label in [x for x in at.index if x.startswith("paged")]:
            row = at.loc[label]
            cost = row["decode_ms_per_token"] - base["decode_ms_per_token"]
            text = (
                f"{model} batch {batch}, spread {spread:g}, shared prefix {int(prefix)}: `{label}` reserves "
                f"{mib(row['reserved'])} against static's {mib(base['reserved'])} "
                f"(waste {100 * row['waste']:.0f}% vs {100 * base['waste']:.0f}%); decode "
                f"{row['decode_ms_per_token']:.1f} ms/token vs {base['decode_ms_per_token']:.1f} "
                f"({cost:+.1f} ms/token with the block gather)"
            )
            if prefix:
                text += f"; prefill {row['prefill_ms']:.0f} ms vs {base['prefill_ms']:.0f} (prefix prefilled once)"
            if cost > 0 and base["waste"] < 0.1:
                text += "; static wastes little here and decodes faster: the better choice"
            out.append(text + ".")
    return out


def markdown(t: pd.DataFrame) -> str:
    cols = ["label", "batch", "prompt_spread", "shared_prefix", "reserved", "used", "waste"]
    cols += ["decode_ms_per_token", "prefill_ms", "matches_reference"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in t[cols].iterrows():
        rows.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvbench.analysis.alloc_figures RECORDS_DIR OUT_DIR`: the table, both figures, the claims."""
    from kvbench.analysis import frame as fr

    p = argparse.ArgumentParser(prog="alloc_figures", description=main.__doc__)
    p.add_argument("records", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    try:
        t = alloc_table(fr.from_records(sorted(args.records.rglob("*.json"))))
    except Skip as why:
        print(f"alloc_figures: nothing to draw: {why}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    t.to_csv(args.out / "kv_alloc.csv", index=False)
    for name, fig in (("kv_alloc_bytes", bytes_figure(t)), ("kv_alloc_decode", decode_figure(t))):
        fig.savefig(args.out / f"{name}.png", bbox_inches="tight")
    (args.out / "kv_alloc.md").write_text(markdown(t) + "\n\n" + "\n".join(f"- {c}" for c in claims(t)) + "\n")
    print(f"alloc_figures: {len(t)} cells -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
