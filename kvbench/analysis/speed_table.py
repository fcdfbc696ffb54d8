"""What each cache costs in decode time against `static` as the context grows, and where it starts to pay.

A compressed or windowed cache reads fewer bytes per step than `static`, but does more work per byte read
(dequantizing, unpacking, merging block runs). At a short context the weights dominate the step and the extra
work shows; as the context grows the cache's bytes dominate and reading fewer of them wins. The table has a row
per kvbench cell of a cached mode beside the `static` cell of the same shape (model, dtype, batch, prompt, new
tokens, compile): both decode times, their ratio, and the fraction of each mode's own floor (its own bytes:
analytic.fraction_of_floor). The break-even of a mode is the shortest context from which its decode time stays
at or below static's for every longer context measured.
"""

from __future__ import annotations

import pandas as pd

from kvbench.analysis import report as rp

KEYS = ["model", "dtype", "batch", "prompt_len", "new_tokens", "compile"]
D = "latency.decode_ms_per_token.median"
PLAIN = ("none", "concat", "static")  # the reference and the plain caches: what a cache kind is weighed against


class NoSpeed(ValueError):
    """The sweep has no cached mode measured beside `static` at two or more contexts."""


def speed_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per kvbench cell of a cache kind that reads fewer bytes or reads them its own way (compressed,
    windowed, paged) with a `static` partner of the same shape."""
    ok = df[df["ok"] & (df["cell.engine"].astype(str) == "kvbench")]
    cols = {f"cell.{k}": k for k in KEYS} | {"cell.kv_mode": "kv_mode", D: "decode_ms"}
    cols |= {"analytic.fraction_of_floor": "fraction_of_floor", "latency.kv_attention_path": "attention_path"}
    t = ok.reindex(columns=list(cols)).rename(columns=cols)
    t["kv_mode"] = t["kv_mode"].astype(str)
    t["compile"] = t["compile"].astype("boolean").fillna(False)
    static = t[t["kv_mode"] == "static"][[*KEYS, "decode_ms"]].rename(columns={"decode_ms": "static_ms"})
    t = t[~t["kv_mode"].isin(PLAIN)].merge(static, on=KEYS, how="inner")
    if t.empty or t["prompt_len"].nunique() < 2:
        raise NoSpeed("no cached mode measured beside static at two or more prompt lengths")
    t["context"] = t["prompt_len"].astype(int) + t["new_tokens"].astype(int) // 2  # mean keys a step reads
    t["ratio"] = t["decode_ms"].astype(float) / t["static_ms"].astype(float)
    return t.sort_values(["model", "compile", "batch", "kv_mode", "context"]).reset_index(drop=True)


def break_even(g: pd.DataFrame) -> int | None:
    """The shortest context from which `ratio` <= 1 at every longer context in g (None: not within g)."""
    g = g.sort_values("context")
    pays = (g["ratio"] <= 1.0).to_numpy()
    for i in range(len(g)):
        if pays[i:].all():
            return int(g["context"].iloc[i])
    return None


def claims(t: pd.DataFrame) -> list[str]:
    """One sentence per mode and setting: its ratio to static from the shortest to the longest context, and where
    it breaks even."""
    out = []
    for (model, compiled, batch, mode), g in t.groupby(["model", "compile", "batch", "kv_mode"], sort=False):
        g = g.sort_values("context")
        at = break_even(g)
        where = (
            f"at or below static from a context of {at}" if at is not None and at > g["context"].min()
            else "at or below static at every context measured" if at is not None
            else f"above static at every context up to {int(g['context'].max())}" if (g["ratio"] > 1).all()
            else f"above static at the longest context, {int(g['context'].max())}, at or below it only at shorter ones"
        )  # fmt: skip
        span = ", ".join(f"{r:.2f}x at {c}" for c, r in zip(g["context"], g["ratio"]))
        how = "compiled" if compiled else "eager"
        out.append(f"{model} batch {batch}, {how}: `{mode}` decodes {where} ({span})")
    return out


def markdown(t: pd.DataFrame) -> str:
    """Decode ms/token / static's, a row per mode and setting, a column per context."""
    w = t.assign(how=t["compile"].map({True: "compiled", False: "eager"}), cell=t["ratio"].map("{:.2f}".format))
    wide = w.pivot_table(index=["model", "how", "batch", "kv_mode"], columns="context", values="cell", aggfunc="first")
    wide.columns = [f"context {c}" for c in wide.columns]
    return rp.md(wide.reset_index())


def explained(df: pd.DataFrame) -> dict | None:
    """explanation.md's section on the caches' speed (None: the sweep has nothing to compare)."""
    try:
        t = speed_table(df)
    except NoSpeed:
        return None
    return {"table": markdown(t), "lines": claims(t)}
