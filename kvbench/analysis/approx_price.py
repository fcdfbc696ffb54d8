"""The price of the approximate caches as a table and as sentences, from a sweep's frame.

`price_table` is one row per cached cell of a sweep that has an approximate cache (static-int8,
static-int4, static-fp8, sliding): the KV bytes it held (counted from the cache's tensors) and per
cached position, decode time, and the price its token check measured against the exact model on the
same context (token agreement, mean KL, first mismatch). `claims` says, from that table, what each
mode buys relative to the exact `static` cache and what it costs. No plotting here (the aggregate and
explain import it): the figures are kvbench/analysis/approx_figures.py.
"""

from __future__ import annotations

import pandas as pd

from kvbench.core.presets import APPROX_KV_MODES, kv_cache_bytes


class NoPrice(Exception):
    """Nothing to price in this sweep (no approximate cache), and why."""


EXACT = "static"
GROUP = ["model", "dtype", "engine", "batch", "prompt_len"]  # one comparison: every setting but mode and length
COLUMNS = {
    "cell.model": "model",
    "cell.dtype": "dtype",
    "cell.engine": "engine",
    "cell.batch": "batch",
    "cell.prompt_len": "prompt_len",
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
        raise NoPrice("no approximate kv mode (static-int8, static-int4, static-fp8, sliding) in this sweep")
    ok = df[(df["status"].astype(str) == "ok") & modes.isin([EXACT, "concat", *APPROX_KV_MODES])].copy()
    for column in COLUMNS:
        if column not in ok and column.startswith(("check.", "memory.", "latency.")):
            ok[column] = float("nan")  # a sweep run before the price was recorded
    ok["cached_tokens"] = ok["cell.batch"] * (ok["cell.prompt_len"] + ok["cell.new_tokens"] - 1)
    ok["kv_bytes_per_token"] = ok["memory.kv_cache_bytes_measured"] / ok["cached_tokens"]
    t = ok[list(COLUMNS)].rename(columns=COLUMNS)
    t["kv_mode"] = t["kv_mode"].astype(str)
    return t.sort_values([*GROUP, "new_tokens", "kv_mode"], kind="stable").reset_index(drop=True)


def price_or_none(df: pd.DataFrame) -> pd.DataFrame | None:
    """The table (kv_price.csv) where the sweep has an approximate cache, else None."""
    try:
        return price_table(df)
    except NoPrice:
        return None


def size(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB" if nbytes >= 2**20 else f"{nbytes / 2**10:.1f} KiB"


def claims(t: pd.DataFrame) -> list[str]:
    """One sentence per approximate mode at the longest length: memory saved against static, and the price."""
    out = []
    for (model, dtype, *_), g in t.groupby(GROUP, sort=False):
        n = g["new_tokens"].max()
        at = g[g["new_tokens"] == n].drop_duplicates("kv_mode").set_index("kv_mode")
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


# The modes whose bytes depend on the cell's own settings, or that the frame's vectorised formula lacks.
SETTING_MODES = ("static-int4", "static-fp8", "sliding")
SETTINGS = ("window", "sinks", "kv_group_size")


def formula_bytes(row: pd.Series) -> int:
    """presets.kv_cache_bytes for one row of the frame, with the cell's own cache settings."""
    opts = {k: int(row[f"cell.{k}"]) for k in SETTINGS if pd.notna(row.get(f"cell.{k}"))}
    dims = (row["n_layer"], row["cell.batch"], row["kv_heads"], row["tokens"], row["head_dim"], row["elem_bytes"])
    return kv_cache_bytes(*(int(d) for d in dims), str(row["cell.kv_mode"]), **opts)


def explained(df: pd.DataFrame) -> dict | None:
    """explanation.md's section: the table and one sentence per approximate mode (None: nothing priced)."""
    t = price_or_none(df)
    if t is None or t["kl_mean"].isna().all():  # records made before the price was recorded carry none
        return None
    t = t[t["kl_mean"].notna()]
    shown = t.round({"kv_bytes_per_token": 1, "decode_ms_per_token": 2, "agreement_rate": 4})
    shown["kl_mean"] = t["kl_mean"].map(lambda v: f"{v:.3g}")  # KL spans 1e-8 (rounding) to 1: significant digits
    return {"table": shown, "lines": claims(t)}
