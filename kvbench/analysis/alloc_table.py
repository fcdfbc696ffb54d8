"""How the caches allocate, as a table and as sentences: KV bytes reserved against bytes used, and time.

`alloc_table` is one row per ok cell of a sweep with a `paged` cache: the bytes the cache reserved
and the bytes real tokens used at the last step (both counted from the live cache), the waste
between them, decode and prefill time, for `static`, `concat` and `paged` at each block size, as
the batch grows and its prompts spread (kvbench/caches/ragged.py) or share a prefix. `claims` says per grid
point what paging saves and costs; `summary` says it for the sweep (what paging saves as the batch
grows ragged, what the gather costs per decode step, the prefill a shared prefix saves, where
`static` is still the better choice); `explained` is explanation.md's section. No matplotlib here
(explain imports it); the figures are kvbench/analysis/alloc_figures.py.
"""

from __future__ import annotations

import pandas as pd

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
    "latency.decode_ms_per_token.min": "decode_min_ms",
    "latency.decode_ms_per_token.max": "decode_max_ms",
    "latency.decode_ms_per_token.n": "timed_iterations",
    "latency.prefill_ms.median": "prefill_ms",
    # a paged cell with a shared prefix: its prefill and a static cache's, measured in turns in that cell
    "latency.prefill_ms_paged_same_batch.median": "prefill_paged_same_ms",
    "latency.prefill_ms_static_same_batch.median": "prefill_static_same_ms",
    "latency.prefill_ms_saved_vs_static": "prefill_saved_ms",
    "check.matches_reference": "matches_reference",
}
KEYS = ["model", "dtype", "batch", "prompt_len", "prompt_spread", "shared_prefix"]
# Below this share of its bytes wasted, static's reservation costs little memory.
LITTLE_WASTE = 0.10


class NoPaged(ValueError):
    """No paged cell that recorded its bytes: nothing to compare."""


def alloc_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per ok static/concat/paged cell that recorded its bytes; raises NoPaged without a paged cell."""
    modes = df["cell.kv_mode"].astype(str)
    if not modes.eq("paged").any() or "memory.kv_bytes_reserved" not in df:
        raise NoPaged("no paged cell with KV bytes reserved and used in this sweep")
    ok = df[(df["status"].astype(str) == "ok") & modes.isin(MODES) & df["memory.kv_bytes_reserved"].notna()].copy()
    for column in ("cell.prompt_spread", "cell.shared_prefix", "cell.block_tokens"):
        ok[column] = ok[column].fillna(0) if column in ok else 0  # a rectangular batch's record names neither
    blocks = ok["cell.block_tokens"].astype(int).astype(str)
    ok["label"] = ok["cell.kv_mode"].astype(str).where(ok["cell.kv_mode"].astype(str) != "paged", "paged-" + blocks)
    ok["waste"] = 1.0 - ok["memory.kv_bytes_used"].astype(float) / ok["memory.kv_bytes_reserved"].astype(float)
    t = ok.reindex(columns=list(COLUMNS)).rename(columns=COLUMNS)  # a sweep from before a field: its column empty
    t["kv_mode"] = t["kv_mode"].astype(str)
    for column in ("reserved", "used", "batch", "prompt_len", "shared_prefix"):
        t[column] = t[column].astype(float)
    t["prompt_spread"] = t["prompt_spread"].astype(float)
    return t.sort_values([*KEYS, "label"], kind="stable").reset_index(drop=True)


def mib(nbytes: float) -> str:
    return f"{nbytes / 2**20:.2f} MiB"


def at(batch, spread, prefix) -> str:
    return f"batch {int(batch)}, spread {spread:g}, shared prefix {int(prefix)}"


def claims(t: pd.DataFrame) -> list[str]:
    """Per grid point with static and paged: the bytes paging saves, the gather's cost, the prefill saved."""
    out = []
    for key, g in t.groupby(KEYS, sort=False):
        rows = g.set_index("label")
        if "static" not in rows.index:
            continue
        base = rows.loc["static"]
        model, _, batch, _, spread, prefix = key
        for label in [x for x in rows.index if x.startswith("paged")]:
            row = rows.loc[label]
            cost = row["decode_ms_per_token"] - base["decode_ms_per_token"]
            text = (
                f"{model} {at(batch, spread, prefix)}: `{label}` reserves "
                f"{mib(row['reserved'])} against static's {mib(base['reserved'])} "
                f"(waste {100 * row['waste']:.0f}% vs {100 * base['waste']:.0f}%); decode "
                f"{row['decode_ms_per_token']:.1f} ms/token vs {base['decode_ms_per_token']:.1f} "
                f"({cost:+.1f} ms/token for reading the blocks)"
            )
            if prefix and pd.notna(row["prefill_saved_ms"]):
                text += (
                    f"; prefill {row['prefill_paged_same_ms']:.1f} ms vs static's "
                    f"{row['prefill_static_same_ms']:.1f} on the same batch in the same cell "
                    f"({row['prefill_saved_ms']:+.1f} ms saved, prefix prefilled once)"
                )
            if cost > 0 and base["waste"] < LITTLE_WASTE:
                text += "; static wastes little here and decodes faster: the better choice"
            out.append(text + ".")
    return out


def waste_table(t: pd.DataFrame) -> pd.DataFrame:
    """At each model's largest batch: a row per cache, a column per (spread, shared prefix), each
    'reserved / used MiB (waste %)' at the last step."""
    top = t[t["batch"] == t.groupby(["model", "dtype"])["batch"].transform("max")]
    points = top[["prompt_spread", "shared_prefix"]].drop_duplicates().sort_values(["prompt_spread", "shared_prefix"])
    names = {(s, p): f"spread {s:g}, prefix {int(p)}" for s, p in points.itertuples(index=False)}
    triples = zip(top["reserved"], top["used"], top["waste"])
    cells = [f"{r / 2**20:.2f} / {u / 2**20:.2f} ({100 * w:.0f}%)" for r, u, w in triples]
    top = top.assign(cell=cells, point=[names[p] for p in zip(top["prompt_spread"], top["shared_prefix"])])
    w = top.pivot_table(index=["model", "dtype", "batch", "label"], values="cell", columns="point", aggfunc="first")
    w = w.reindex(columns=list(names.values())).fillna("–").reset_index()
    w["batch"] = w["batch"].astype(int)
    return w.rename(columns={"label": "cache"})


def gap(t: pd.DataFrame, column: str) -> pd.DataFrame:
    """Each paged row beside the static row of its grid point: `<column>` and static's `<column>_static`."""
    static = t[t["label"] == "static"][[*KEYS, column, "waste"]]
    return t[t["kv_mode"] == "paged"].merge(static, on=KEYS, suffixes=("", "_static"))


def saves(t: pd.DataFrame) -> list[str]:
    """At each model's largest batch and widest spread, per shared prefix: static's reservation and
    waste against the paged block size that reserves least; then static's waste as the spread grows."""
    out = []
    for (model, dtype), g in t.groupby(["model", "dtype"], sort=False):
        top = g[g["batch"] == g["batch"].max()]
        ragged = top[top["prompt_spread"] == top["prompt_spread"].max()]
        for prefix, p in ragged.groupby("shared_prefix", sort=True):
            static, paged = p[p["label"] == "static"], p[p["kv_mode"] == "paged"]
            if static.empty or paged.empty:
                continue
            s, best = static.iloc[0], paged.loc[paged["reserved"].idxmin()]
            spread = s["prompt_spread"]
            out.append(
                f"{model} {dtype} {at(s['batch'], spread, prefix)}: static reserves {mib(s['reserved'])} for "
                f"{mib(s['used'])} of real tokens (waste {100 * s['waste']:.0f}%); `{best['label']}` reserves "
                f"{mib(best['reserved'])} (waste {100 * best['waste']:.0f}%), "
                f"{mib(s['reserved'] - best['reserved'])} less ({100 * (1 - best['reserved'] / s['reserved']):.0f}% "
                f"of static's reservation)."
            )
        plain = top[top["shared_prefix"] == top["shared_prefix"].min()].sort_values("prompt_spread")
        by_label = {label: list(r["waste"]) for label, r in plain.groupby("label", sort=True)}
        if plain["prompt_spread"].nunique() > 1 and "static" in by_label:
            spreads = " → ".join(f"{s:g}" for s in plain["prompt_spread"].unique())
            trend = "; ".join(f"{label} {' → '.join(f'{100 * w:.0f}%' for w in ws)}" for label, ws in by_label.items())
            batch = int(top["batch"].max())
            out.append(f"{model} {dtype} batch {batch}, waste as the spread grows ({spreads}): {trend}.")
    return out


def gather_cost(t: pd.DataFrame) -> list[str]:
    """Per paged block size: its decode ms/token minus static's at the same grid point, over the grid."""
    g = gap(t, "decode_ms_per_token")
    out = []
    for label, rows in g.groupby("label", sort=True):
        d = rows["decode_ms_per_token"] - rows["decode_ms_per_token_static"]
        r = rows["decode_ms_per_token"] / rows["decode_ms_per_token_static"]
        out.append(
            f"`{label}`: {d.median():+.2f} ms/token against static (median over {len(d)} grid points, "
            f"{d.min():+.2f} to {d.max():+.2f}), {r.median():.2f}× static's decode time; "
            f"slower at {int((d > 0).sum())} of {len(d)} points."
        )
    repeated = t[t["timed_iterations"].astype(float) > 1]  # one iteration has no spread to show
    spread = (repeated["decode_max_ms"] / repeated["decode_min_ms"]).dropna()
    if len(spread) and out:
        out.append(
            f"How far one cell's own timed iterations differ (decode ms/token, slowest / fastest): median "
            f"{spread.median():.2f}×, up to {spread.max():.2f}× over {len(spread)} cells; a gap between caches "
            f"within that is not resolved by this sweep."
        )
    return out


def prefill_saved(t: pd.DataFrame) -> list[str] | None:
    """Per paged cell with a shared prefix that measured it: its prefill against static's of the same
    batch in the same cell. None where no paged cell had a shared prefix; [] where none measured it."""
    shared = t[(t["kv_mode"] == "paged") & (t["shared_prefix"] > 0)]
    if shared.empty:
        return None
    out = []
    for _, r in shared.dropna(subset=["prefill_saved_ms"]).iterrows():
        share = r["prefill_saved_ms"] / r["prefill_static_same_ms"]
        out.append(
            f"`{r['label']}` {at(r['batch'], r['prompt_spread'], r['shared_prefix'])}: prefill "
            f"{r['prefill_paged_same_ms']:.1f} ms against static's {r['prefill_static_same_ms']:.1f} ms, "
            f"{r['prefill_saved_ms']:+.1f} ms ({100 * share:+.0f}%) saved."
        )
    return out


def static_better(t: pd.DataFrame) -> dict:
    """Grid points where static decodes faster than every paged block size, split by whether its
    reservation wastes little (under LITTLE_WASTE: static is the better choice) or much (a trade: memory
    for time); and the points where a paged cache decodes faster."""
    g = gap(t, "decode_ms_per_token")
    fastest = g.groupby(KEYS, sort=True).agg(
        paged=("decode_ms_per_token", "min"),
        static=("decode_ms_per_token_static", "first"),
        waste=("waste_static", "first"),
    )
    faster = fastest[fastest["static"] < fastest["paged"]]
    little = faster[faster["waste"] < LITTLE_WASTE]

    def where(rows: pd.DataFrame) -> list[str]:
        return [
            f"{at(b, s, p)} (static wastes {100 * r['waste']:.0f}%, "
            f"decodes {r['paged'] - r['static']:.2f} ms/token faster)"
            for (_, _, b, _, s, p), r in rows.iterrows()
        ]

    return {
        "better": where(little),
        "trade": where(faster.drop(little.index)),
        "paged_faster": int((fastest["paged"] <= fastest["static"]).sum()),
        "points": len(fastest),
        "little": f"{LITTLE_WASTE:.0%}",
    }


def markdown(t: pd.DataFrame) -> str:
    cols = ["label", "batch", "prompt_spread", "shared_prefix", "reserved", "used", "waste"]
    cols += ["decode_ms_per_token", "prefill_ms", "prefill_saved_ms", "matches_reference"]
    rows = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in t[cols].iterrows():
        rows.append("| " + " | ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(rows)


def explained(df: pd.DataFrame) -> dict | None:
    """explanation.md's section on allocation (None: no paged cell in the sweep)."""
    try:
        t = alloc_table(df)
    except NoPaged:
        return None
    exact = t["matches_reference"].astype(str)
    return {
        "waste": waste_table(t),
        "saves": saves(t),
        "gather": gather_cost(t),
        "prefill": prefill_saved(t),
        "static": static_better(t),
        "lines": claims(t),
        "exact": f"{int((exact == 'True').sum())} of {len(t)}",
    }
