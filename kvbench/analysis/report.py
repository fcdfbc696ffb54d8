"""What the markdown reports share: the Jinja2 environment, number formats, and summary.md.

Sections are functions returning DataFrames and numbers; the templates in templates/ lay them
out, and every table is `DataFrame.to_markdown` of strings formatted here.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
import pandas as pd

from kvbench.analysis import frame as fr

MB = 1e6
NOT_MEASURED = "not measured in this sweep"


def f(value) -> float | None:
    """A finite number or None (NaN, NA, missing and booleans all mean 'no number')."""
    if value is None or isinstance(value, bool) or value is pd.NA:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def lab(value) -> str:
    """One spelling per value (16 and 16.0 alike; empty -> 'none')."""
    v = f(value)
    if v is None and (value is None or value is pd.NA or isinstance(value, float)):
        return "none"
    return str(int(v)) if v is not None and not isinstance(value, str) and v.is_integer() else str(value)


def num(v: float | None) -> str:
    """3 significant digits for reading, no exponent for ordinary sizes."""
    if v is None:
        return "–"
    a = abs(v)
    return (
        f"{v:,.0f}" if a >= 100 else f"{v:.1f}" if a >= 10 else f"{v:.2f}" if a >= 1 else "0" if a == 0 else f"{v:.3g}"
    )


def x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def nbytes(n: float | None) -> str:
    return "–" if n is None else f"{int(n):,} B"


def mb(n: float | None) -> str:
    return "–" if n is None else f"{n / MB:.3g} MB"


def mib(n: float | None) -> str:
    return "–" if n is None else f"{num(n / fr.MIB)} MiB"


def fixed(v, spec: str = ".3f") -> str:
    return "–" if f(v) is None else format(f(v), spec)


def spread(values: Sequence[float], fmt: Callable = x, noun: str = "pairs") -> str:
    """'m' for one value, else 'median m (min–max, n <noun>)'."""
    vals = sorted(float(v) for v in values if f(v) is not None)
    if len(vals) < 2:
        return fmt(vals[0]) if vals else "–"
    return f"median {fmt(statistics.median(vals))} ({fmt(vals[0])}–{fmt(vals[-1])}, {len(vals)} {noun})"


def trend(vals: Sequence[float | None]) -> str:
    got = [v for v in vals if f(v) is not None]
    if len(got) < 2:
        return "–"
    return (
        "grows"
        if all(b >= a for a, b in zip(got, got[1:]))
        else "falls"
        if all(b <= a for a, b in zip(got, got[1:]))
        else "mixed"
    )


def md(df: pd.DataFrame) -> str:
    """A markdown table of already formatted cells ('|' escaped)."""
    return df.astype(str).replace(r"\|", r"\\|", regex=True).to_markdown(index=False, disable_numparse=True)


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
    undefined=jinja2.StrictUndefined,
)
_ENV.filters.update(md=md, x=x, num=num, nbytes=nbytes, mb=mb, mib=mib, pct=pct)


def render(template: str, **context) -> str:
    return _ENV.get_template(template).render(NOT_MEASURED=NOT_MEASURED, **context)


def natural(text: str) -> tuple:
    """Numbers in numeric order (16 before 128), then text."""
    v = f(text) if not isinstance(text, bool) else None
    return (0, v, "") if v is not None else (1, 0.0, str(text))


def values(df: pd.DataFrame, key: str) -> list[str]:
    """A setting's values in the sweep: models by size, the rest in natural order."""
    if key == "model":
        return [str(m) for m in df["cell.model"].cat.categories]
    return sorted({lab(v) for v in df[f"cell.{key}"]}, key=natural)


def varying(df: pd.DataFrame, exclude: Sequence[str] = ()) -> list[str]:
    """Cell keys whose value differs between records (a record named by those reads shortest)."""
    return [k for k in fr.CELL_KEYS if k not in exclude and df[f"cell.{k}"].astype(object).map(str).nunique() > 1]


def where(row: pd.Series, keys: Sequence[str]) -> str:
    return ", ".join(f"{k}={lab(row[f'cell.{k}'])}" for k in keys)


def devices(df: pd.DataFrame) -> list[str]:
    """The accelerator's name; on a CPU run the CPU's."""
    name = fr_col(df, "environment.device_name").where(lambda s: s.astype(object).map(str) != "cpu")
    cpu = "CPU: " + fr_col(df, "environment.cpu").astype(object).where(lambda s: s.notna(), None).map(str)
    cpu = cpu.where(fr_col(df, "environment.cpu").notna(), df["cell.device"].astype(object).map(str))
    return sorted(set(name.fillna(cpu).map(str)))


def fr_col(df: pd.DataFrame, col: str) -> pd.Series:
    return df[col] if col in df.columns else pd.Series(None, index=df.index, dtype=object)


def status_counts(df: pd.DataFrame) -> str:
    counts = df["status"].value_counts(sort=False)
    return ", ".join(f"{s} {n}" for s, n in counts.items() if n) or "none"


def summary_markdown(df: pd.DataFrame, sweep: str | None) -> str:
    """A page a person reads first: what ran, what failed, the headline numbers."""
    keys = varying(df, ("kv_mode", "batch", "prompt_len")) + ["batch", "prompt_len"]
    dec, tps = "latency.decode_ms_per_token.median", "latency.decode_tokens_per_s"
    latency = []
    for mode, g in df.groupby("cell.kv_mode", observed=True):
        ok = g[g["ok"] & g[dec].notna()]
        if not len(ok):
            latency.append([mode, 0] + ["–"] * 5)
            continue
        fast, slow = ok.loc[ok[dec].astype(float).idxmin()], ok.loc[ok[dec].astype(float).idxmax()]
        latency.append(
            [
                mode,
                len(ok),
                fixed(fast[dec]),
                where(fast, keys),
                fixed(slow[dec]),
                where(slow, keys),
                fixed(ok[tps].astype(float).max(), ".1f"),
            ]
        )
    latency = pd.DataFrame(
        latency,
        columns=[
            "kv_mode",
            "ok cells",
            "fastest ms/token",
            "at",
            "slowest ms/token",
            "at ",
            "best tokens/s (batch total)",
        ],
    )
    from kvbench.analysis.aggregate import speedup_table  # the same pairs as speedup.csv

    sp = speedup_table(df).dropna(subset=["decode_speedup"])
    speedups, best = [], None
    for mode, g in sp.groupby("cell.kv_mode", observed=True):
        top = g.loc[g["decode_speedup"].idxmax()]
        speedups.append(
            [
                mode,
                len(g),
                x(top["decode_speedup"]),
                where(top, keys),
                x(g["decode_speedup"].median()),
                x(g["total_speedup"].max()),
            ]
        )
    if len(sp):
        top = sp.loc[sp["decode_speedup"].idxmax()]
        best = {
            "speedup": x(top["decode_speedup"]),
            "mode": top["cell.kv_mode"],
            "at": where(top, keys),
            "ms": fixed(top["decode_ms"]),
            "none_ms": fixed(top["none_decode_ms"]),
        }
    speedups = pd.DataFrame(
        speedups,
        columns=["kv_mode", "pairs", "best decode speedup", "at", "median decode speedup", "best total speedup"],
    )
    mismatch = df[fr_col(df, "check.matches_reference").astype(str) == "False"]
    bad = df[~df["ok"]].sort_values("status", kind="stable")
    failed = pd.DataFrame(
        {
            "status": bad["status"],
            "kv_mode": bad["cell.kv_mode"],
            "cell": [where(r, keys) for _, r in bad.iterrows()],
            "message": [" ".join(str(e or "").split())[:160] for e in fr_col(bad, "error").fillna("")],
        }
    )
    return render(
        "summary.md.j2",
        sweep=sweep,
        n=len(df),
        statuses=status_counts(df),
        devices=devices(df),
        settings={k: values(df, k) for k in ("model", "dtype", "attention", "new_tokens")},
        latency=latency,
        speedups=speedups,
        best=best,
        failed=failed,
        mismatches=[
            f"{r['cell.kv_mode']}: {where(r, keys)} (first mismatch step {lab(r.get('check.first_mismatch_step'))})"
            for _, r in mismatch.iterrows()
        ],
    )


def axis_table(t: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, str]:
    """Rows: kv mode x the other settings that vary; columns: the axis; cells total / per token
    speedup; then one line counting the rows whose whole-generation speedup grows along it."""
    t = t.assign(n_kv_head=t["n_kv_head"].astype(float).fillna(-1))  # -1: all heads (plain multi-head)
    others = [
        c
        for c in ("model", "dtype", "attention", "n_kv_head", "batch", "prompt_len", "new_tokens")
        if c != axis and t[c].nunique() > 1
    ]
    t = t.assign(
        cell=[
            x(a) + " / " + x(b) if f(a) or f(b) else f"not measured ({s if s != 'ok' else 'none ' + str(n)})"
            for a, b, s, n in zip(t["total_speedup"], t["decode_speedup"], t["status"], t["none_status"])
        ]
    )
    wide = t.pivot_table(
        index=["kv_mode", *others], columns=axis, values="cell", aggfunc="first", observed=True, sort=True
    )
    totals = t.pivot_table(
        index=["kv_mode", *others],
        columns=axis,
        values="total_speedup",
        aggfunc="first",
        observed=True,
        dropna=False,
        sort=True,
    ).reindex(index=wide.index, columns=wide.columns)
    trends = [trend(list(row)) for row in totals.itertuples(index=False)]
    wide = wide.fillna("–").reset_index()
    wide.columns = [f"{axis} = {lab(c)}" if c in totals.columns else c for c in wide.columns]
    if "n_kv_head" in wide.columns:
        wide["n_kv_head"] = wide["n_kv_head"].map(lambda v: "all" if v == -1 else lab(v))
    wide["total speedup"] = trends
    counted = [tr for tr in trends if tr != "–"]
    counts = ", ".join(f"{n} in {counted.count(n)}" for n in ("grows", "falls", "mixed") if counted.count(n))
    return wide.map(lab), (
        f"Measured: of the {len(counted)} rows with two or more finished pairs, the "
        f"whole-generation speedup along {axis} {counts}."
        if counted
        else "Measured: no row has two finished pairs to compare."
    )
