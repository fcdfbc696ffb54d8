"""What the markdown reports share: the Jinja2 environment, number formats, and summary.md.

Sections are functions returning DataFrames and numbers; the templates in templates/ lay them
out, and every table is `DataFrame.to_markdown` of strings formatted here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

import jinja2
import pandas as pd

from kvbench.analysis import frame as fr

MB = 1e6
NOT_MEASURED = "not measured in this sweep"


def f(value) -> float | None:
    """A finite number or None (NaN, NA, missing and booleans all mean 'no number')."""
    if value is None or value is pd.NA or isinstance(value, (bool, str)):
        return None
    return float(value) if math.isfinite(float(value)) else None


def setting(value) -> str:
    """A setting as a cell names it; empty -> 'none'."""
    return "none" if pd.isna(value) else str(value)


def num(v: float | None) -> str:
    """3 significant digits for reading, no exponent for ordinary sizes."""
    if v is None:
        return "–"
    a = abs(v)
    return f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else f"{v:.3g}" if a else "0"


def _or_dash(fmt: Callable) -> Callable:
    return lambda v: "–" if f(v) is None else fmt(f(v))


x = _or_dash(lambda v: f"{v:.2f}×")
fixed = _or_dash(lambda v: f"{v:.3f}")
pct = _or_dash(lambda v: f"{100 * v:.0f} %")
nbytes = _or_dash(lambda n: f"{int(n):,} B")
mb = _or_dash(lambda n: f"{n / MB:.3g} MB")
mib = _or_dash(lambda n: f"{num(n / fr.MIB)} MiB")


def heads(v) -> str:
    """A cell's n_kv_head setting: empty means every head (plain multi-head attention); `sort_heads` puts them first."""
    return "all" if pd.isna(v) or v < 0 else str(v)


def sort_heads(s: pd.Series) -> pd.Series:
    return s.fillna(-1)


def spread(values: Sequence[float], fmt: Callable = x, noun: str = "pairs") -> str:
    """'m' for one value, else 'median m (min–max, n <noun>)'."""
    vals = sorted(float(v) for v in values if f(v) is not None)
    if len(vals) < 2:
        return fmt(vals[0]) if vals else "–"
    return f"median {fmt(statistics.median(vals))} ({fmt(vals[0])}–{fmt(vals[-1])}, {len(vals)} {noun})"


def trend(vals: Sequence[float | None]) -> str:
    """How the numbers (the missing left out) go: 'grows', 'falls', 'mixed', or '–' under two."""
    got = pd.Series([f(v) for v in vals], dtype=float).dropna()
    if len(got) < 2:
        return "–"
    return "grows" if got.is_monotonic_increasing else "falls" if got.is_monotonic_decreasing else "mixed"


def md(df: pd.DataFrame) -> str:
    """A markdown table of already formatted cells ('|' escaped)."""
    return df.astype(str).replace(r"\|", r"\\|", regex=True).to_markdown(index=False, disable_numparse=True)


_LAYOUT = {"keep_trailing_newline": True, "trim_blocks": True, "lstrip_blocks": True}
_ENV = jinja2.Environment(loader=jinja2.PackageLoader("kvbench.analysis"), undefined=jinja2.StrictUndefined, **_LAYOUT)
_ENV.filters["md"] = md


def render(template: str, **context) -> str:
    return _ENV.get_template(template).render(NOT_MEASURED=NOT_MEASURED, **context)


def values(df: pd.DataFrame, key: str) -> list[str]:
    """A setting's values in the sweep, in order (models by size)."""
    if key == "model":
        return [str(m) for m in df["cell.model"].cat.categories]
    return [str(v) for v in df[f"cell.{key}"].drop_duplicates().sort_values()]


def varying(df: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """Cell keys whose value differs between records (a record named by those reads shortest)."""
    return [k for k in fr.CELL_KEYS if k not in exclude and df[f"cell.{k}"].astype(object).map(str).nunique() > 1]


def where(row: pd.Series, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={setting(row[f'cell.{k}'])}" for k in keys)


def devices(df: pd.DataFrame) -> list[str]:
    """The accelerator's name; on a CPU run the CPU's (else the device setting)."""
    env = df.reindex(columns=["environment.device_name", "environment.cpu"]).astype(object)
    name = env["environment.device_name"].where(lambda s: s.astype(str) != "cpu")
    cpu = ("CPU: " + env["environment.cpu"].astype(str)).where(env["environment.cpu"].notna(), df["cell.device"])
    return sorted(set(name.fillna(cpu).map(str)))


def status_counts(df: pd.DataFrame) -> str:
    return ", ".join(f"{s} {n}" for s, n in df["status"].value_counts(sort=False).items() if n) or "none"


def summary(df: pd.DataFrame, sweep: str | None) -> dict:
    """summary.md, the page a person reads first: what ran, the decode latency and speedup per kv mode, what failed."""
    keys = varying(df, ("kv_mode", "batch", "prompt_len")) + ["batch", "prompt_len"]
    dec = "latency.decode_ms_per_token.median"
    ok = df[df["ok"] & df[dec].notna()].assign(ms=lambda d: d[dec].astype(float))
    latency = pd.DataFrame(
        latency_row(mode, ok[ok["cell.kv_mode"] == mode], keys) for mode in df["cell.kv_mode"].cat.categories
    )
    sp = fr.pairs(df).dropna(subset=["decode_speedup"])
    speedups = pd.DataFrame(
        {
            "kv_mode": mode,
            "pairs": len(g),
            "best decode speedup": x(top["decode_speedup"]),
            "at": where(top, keys),
            "median decode speedup": x(g["decode_speedup"].median()),
            "best total speedup": x(g["total_speedup"].max()),
        }
        for mode, g in sp.groupby("cell.kv_mode", observed=True)
        for top in [g.loc[g["decode_speedup"].idxmax()]]
    )
    best = sp.loc[sp["decode_speedup"].idxmax()] if len(sp) else None
    bad = df[~df["ok"]].sort_values("status", kind="stable")
    failed = bad[["status"]].assign(
        kv_mode=bad["cell.kv_mode"],
        cell=[where(r, keys) for _, r in bad.iterrows()],
        message=bad["error"].fillna("").map(lambda e: " ".join(str(e).split())[:160]),
    )
    mismatch = df[df["check.matches_reference"].astype(str) == "False"]
    return {
        "sweep": sweep,
        "n": len(df),
        "statuses": status_counts(df),
        "devices": devices(df),
        "settings": {k: values(df, k) for k in ("model", "dtype", "attention", "new_tokens")},
        "latency": latency,
        "speedups": speedups,
        "best": None
        if best is None
        else {"mode": best["cell.kv_mode"], "at": where(best, keys), "speedup": x(best["decode_speedup"])}
        | {"ms": fixed(best["decode_ms"]), "none_ms": fixed(best["none_decode_ms"])},
        "failed": failed,
        "mismatches": [
            f"{r['cell.kv_mode']}: {where(r, keys)} (first mismatch step {setting(r.get('check.first_mismatch_step'))})"
            for _, r in mismatch.iterrows()
        ],
    }


def latency_row(mode: str, g: pd.DataFrame, keys: list[str]) -> dict:
    """summary.md's row of one kv mode: its fastest and slowest finished cell, its best throughput."""
    fast, slow = (g.loc[g["ms"].idxmin()], g.loc[g["ms"].idxmax()]) if len(g) else ({}, {})
    return {
        "kv_mode": mode,
        "ok cells": len(g),
        "fastest ms/token": fixed(fast.get("ms")),
        "at": where(fast, keys) if len(g) else "–",
        "slowest ms/token": fixed(slow.get("ms")),
        "at ": where(slow, keys) if len(g) else "–",  # a second "at": to_markdown needs distinct names
        "best tokens/s (batch total)": f"{g['latency.decode_tokens_per_s'].astype(float).max():.1f}" if len(g) else "–",
    }
