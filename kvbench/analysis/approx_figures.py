"""The price of the approximate caches, side by side: memory bought against accuracy lost.

`price_table` is one row per cached cell of a sweep that has an approximate cache (static-int8,
static-int4, static-fp8, sliding): the KV bytes it held (counted from the cache's tensors) and per
cached position, decode time, and the price its token check measured against the exact model on the
same context (token agreement, mean KL, first mismatch). `pareto_figure` puts bytes per position
against KL, one point per mode at each length; `length_figure` shows the bytes held and the KL as the
stream grows (flat for `sliding`, growing for the others). `claims` says, from the table, what each
mode buys relative to the exact `static` cache and what it costs.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench.analysis.facets import Skip, color
from kvbench.presets import APPROX_KV_MODES

EXACT = "static"
KEYS = ["cell.engine", "cell.model", "cell.dtype", "cell.batch", "cell.prompt_len"]
COLUMNS = {
    "cell.model": "model",
    "cell.dtype": "dtype",
    "cell.kv_mode": "kv_mode",
    "cell.new_tokens": "new_tokens",
    "cached_tokens": "cached_tokens",
    "memory.kv_cache_bytes_measured": "kv_bytes",
    "kv_bytes_per_token": "kv_bytes_per_token",
    "latency.decode_ms_per_token.median": "decode_ms_per_token",
    "check.agreement_rate": "agreement_rate",
    "check.kl_mean": "kl_mean",
    "check.first_mismatch_step": "first_mismatch_step",
    "check.reference_steps": "priced_steps",
}


def price_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok cached cell, in the sweep's grid order; raises Skip without an approximate cache."""
    modes = df["cell.kv_mode"].astype(str)
    if not modes.isin(APPROX_KV_MODES).any():
        raise Skip("no approximate kv mode (static-int8, static-int4, static-fp8, sliding) in this sweep")
    ok = df[(df["status"].astype(str) == "ok") & modes.isin([EXACT, "concat", *APPROX_KV_MODES])].copy()
    for column in COLUMNS:
        if column not in ok and column.startswith(("check.", "memory.", "latency.")):
            ok[column] = float("nan")  # a sweep run before the price was recorded
    ok["cached_tokens"] = ok["cell.batch"] * (ok["cell.prompt_len"] + ok["cell.new_tokens"] - 1)
    ok["kv_bytes_per_token"] = ok["memory.kv_cache_bytes_measured"] / ok["cached_tokens"]
    t = ok[list(COLUMNS)].rename(columns=COLUMNS)
    t["kv_mode"] = t["kv_mode"].astype(str)
    return t.sort_values(["model", "dtype", "new_tokens", "kv_mode"], kind="stable").reset_index(drop=True)


def price_or_none(df: pd.DataFrame) -> pd.DataFrame | None:
    """The table (kv_price.csv) where the sweep has an approximate cache, else None."""
    try:
        return price_table(df)
    except Skip:
        return None


# The figures of a sweep's frame, for kvbench figures (each raises Skip without an approximate cache).
FIGURES = {
    "kv_pareto": lambda df: pareto_figure(price_table(df)),
    "kv_memory_length": lambda df: length_figure(price_table(df)),
}


def size(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def pareto_figure(t: pd.DataFrame):
    """KV bytes per cached position (x, log) against mean KL (y, symlog): lower-left is cheaper and closer."""
    plt = _plt()
    lengths = sorted(t["new_tokens"].unique())
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.2 * len(lengths), 3.6), squeeze=False, sharey=True)
    for ax, n in zip(axes[0], lengths):
        for mode, g in t[t["new_tokens"] == n].groupby("kv_mode", sort=False):
            ax.scatter(g["kv_bytes_per_token"], g["kl_mean"], color=color(mode), label=mode, s=45, zorder=3)
            for _, row in g.iterrows():
                at = (row["kv_bytes_per_token"], row["kl_mean"])
                ax.annotate(mode, at, xytext=(5, 3), textcoords="offset points", fontsize=7)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=1e-6)
        ax.set_title(f"{n} new tokens")
        ax.set_xlabel("KV bytes per cached position (counted)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("mean KL(exact || cache), nats")
    model = ", ".join(sorted(t["model"].unique()))
    fig.suptitle(f"Memory bought against accuracy lost ({model}; teacher-forced against the exact model)")
    fig.tight_layout()
    return fig


def length_figure(t: pd.DataFrame):
    """Bytes held and mean KL against the number of new tokens, one line per mode."""
    plt = _plt()
    fig, (mem, acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for mode, g in t.groupby("kv_mode", sort=False):
        g = g.sort_values("new_tokens")
        mem.plot(g["new_tokens"], g["kv_bytes"] / 2**20, marker="o", color=color(mode), label=mode)
        acc.plot(g["new_tokens"], g["kl_mean"], marker="o", color=color(mode), label=mode)
    mem.set_ylabel("KV cache held (MiB, counted)")
    acc.set_ylabel("mean KL(exact || cache), nats")
    acc.set_yscale("symlog", linthresh=1e-6)
    for ax in (mem, acc):
        ax.set_xlabel("new tokens generated")
        ax.grid(True, alpha=0.3)
    mem.legend(fontsize=8)
    fig.suptitle("Memory and accuracy as the stream grows")
    fig.tight_layout()
    return fig


def claims(t: pd.DataFrame) -> list[str]:
    """One sentence per approximate mode at the longest length: memory saved against static, and the price."""
    out = []
    for (model, dtype), g in t.groupby(["model", "dtype"], sort=False):
        n = g["new_tokens"].max()
        at = g[g["new_tokens"] == n].set_index("kv_mode")
        if EXACT not in at.index:
            continue
        for mode in [m for m in APPROX_KV_MODES if m in at.index]:
            out.append(sentence(model, dtype, n, mode, at.loc[mode], at.loc[EXACT]))
    return out


def sentence(model: str, dtype: str, n: int, mode: str, row: pd.Series, base: pd.Series) -> str:
    first = row["first_mismatch_step"]
    return (
        f"{model} {dtype}, {n} new tokens: `{mode}` holds {size(row['kv_bytes'])} of KV against "
        f"static's {size(base['kv_bytes'])} ({base['kv_bytes'] / row['kv_bytes']:.1f}x less) for a "
        f"mean KL of {row['kl_mean']:.2g} nats (static: {base['kl_mean']:.1g}), "
        f"{100 * row['agreement_rate']:.1f}% of tokens agreeing with the exact model"
        + ("" if pd.isna(first) else f", the first disagreeing at step {int(first)}")
        + f"; decode {row['decode_ms_per_token']:.1f} ms/token (static {base['decode_ms_per_token']:.1f})."
    )


def markdown(t: pd.DataFrame) -> str:
    cols = ["model", "kv_mode", "new_tokens", "kv_bytes", "kv_bytes_per_token", "decode_ms_per_token"]
    cols += ["agreement_rate", "kl_mean", "first_mismatch_step"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in t[cols].iterrows():
        rows.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m kvbench.analysis.approx_figures RECORDS_DIR OUT_DIR`: the table, both figures, the claims."""
    from kvbench.analysis import frame as fr

    p = argparse.ArgumentParser(prog="approx_figures", description=main.__doc__)
    p.add_argument("records", type=Path)
    p.add_argument("out", type=Path)
    args = p.parse_args(argv)
    try:
        t = price_table(fr.from_records(sorted(args.records.rglob("*.json"))))
    except Skip as why:
        print(f"approx_figures: nothing to draw: {why}", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    t.to_csv(args.out / "kv_price.csv", index=False)
    for name, fig in (("kv_pareto", pareto_figure(t)), ("kv_memory_length", length_figure(t))):
        fig.savefig(args.out / f"{name}.png", bbox_inches="tight")
    (args.out / "kv_price.md").write_text(markdown(t) + "\n\n" + "\n".join(f"- {c}" for c in claims(t)) + "\n")
    print(f"approx_figures: {len(t)} cells -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
