"""Tables -> explanation.md: what the KV cache did in one sweep, in words, with its numbers.

Write-up 004's point made a rule: a speedup needs a measured baseline. The document is built from
the sweep's cells.csv alone, through the same frame and pairs as the aggregate (so the two cannot
disagree); every number is read from it or computed by a formula written beside it, and a claim the
sweep did not measure says so. Section functions return DataFrames and numbers; the template
templates/explanation.md.j2 lays them out.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench.analysis import aggregate as agg
from kvbench.analysis import alloc_table, approx_price, claims, command, speed_table
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.core import record as kvrecord
from kvbench.core.presets import DTYPE_BYTES, INT8_SCALE_BYTES

TABLES = ("cells.csv", "speedup.csv", "speedup_by_model.csv", "speedup_by_length.csv", "kv_variants.csv")
PEAK_NAMES = {"torch_peak_allocated": "torch peak allocated", "rss_peak": "process RSS peak"}


def by_engine(t: pd.DataFrame, df: pd.DataFrame) -> pd.DataFrame:
    """t's engine column only where the sweep ran several engines."""
    return t if df["cell.engine"].nunique() > 1 else t.drop(columns="engine")


def grouped(t: pd.DataFrame, df: pd.DataFrame, extra: list[str], shown: list[str], columns: dict) -> pd.DataFrame:
    """A row per engine, model, K/V heads ("all" first), kv mode and `extra`: the named aggregations
    in `columns` (each formats its result) after the keys in `shown`'s order."""
    keys = ["cell.engine", "cell.model", "n_kv_head", "cell.kv_mode", *extra]
    out = t.assign(n_kv_head=rp.sort_heads(t["cell.n_kv_head"])).groupby(keys, observed=True).agg(**columns)
    out = out.reset_index().rename(columns=lambda c: c.removeprefix("cell."))
    out["n_kv_head"] = out["n_kv_head"].map(rp.heads)
    return by_engine(out[[*shown, *columns]], df)


def formula_text(r: pd.Series) -> str:
    """The KV-cache product written out for one cell (its value comes from kv_cache_bytes)."""
    hd = r["head_dim"]
    if r["cell.kv_mode"] == "paged":  # the blocks its sequences took (frame.paged_bytes), not batch × tokens
        block = fr.paged_block(r)
        blocks = int(r["kv_formula"]) // (block * 2 * int(r["n_layer"] * r["kv_heads"] * hd * r["elem_bytes"]))
        return f"{blocks} blocks × {block} × 2 × {r['n_layer']} × {r['kv_heads']} × {hd} × {r['elem_bytes']}"
    last = f"({hd} + {INT8_SCALE_BYTES})" if r["cell.kv_mode"] == "static-int8" else f"{hd} × {r['elem_bytes']}"
    return " × ".join(["2", *(str(r[k]) for k in ("n_layer", "cell.batch", "kv_heads", "tokens")), last])


def desc(df: pd.DataFrame, model: str) -> str:
    """A model as the header names it: its family where its records say it, its size and depth."""
    rows = df[df["cell.model"] == model]
    params, layers = rp.f(rows["n_params"].max()), rows["n_layer"].max()
    parts = [str(family) for family in rows["family"].dropna().unique()]
    parts += [f"{params / 1e6:.0f}M params"] if params else []
    parts += [f"{layers} layers"] if rp.f(layers) else []
    return f"{model} ({', '.join(parts)})" if parts else model


def header(df: pd.DataFrame, present: list[str]) -> dict:
    settings = {"models": [desc(df, m) for m in rp.values(df, "model")], "engines": rp.values(df, "engine")}
    settings["kv modes"] = [str(m) for m in df["cell.kv_mode"].cat.categories]
    settings |= {k: rp.values(df, k) for k in ("dtype", "attention", "batch", "prompt_len", "new_tokens")}
    settings["K/V heads"] = [str(v) for v in df["kv_heads"].dropna().drop_duplicates().sort_values()]
    h = {"present": present, "n": len(df), "statuses": rp.status_counts(df), "devices": rp.devices(df)}
    return h | {"settings": settings}


def cache_size(df: pd.DataFrame) -> dict:
    """Section 1: the formula checked on every cached cell; the largest cache of each model, dtype,
    kv mode and K/V head count; and where the cache would outgrow the weights."""
    cached = df[df["ok"] & (df["cell.kv_mode"] != "none")]
    if not len(cached):
        return {"n": 0}
    formula, measured = cached["memory.kv_cache_bytes_formula"], cached["memory.kv_cache_bytes_measured"]
    differ = cached[measured.notna() & (measured != formula)]
    size = cached["cell.batch"].astype(float) * cached["tokens"]
    groups = [cached[g] for g in ("cell.engine", "cell.model", "cell.dtype", "kv_heads", "cell.kv_mode")]
    big = cached.loc[size.groupby(groups, observed=True, sort=True).idxmax().values]
    weights = big["memory.weights_bytes"].astype(float)
    per_token = big["kv_formula"] / size[big.index]  # the formula is linear in batch and tokens
    cross = weights / per_token
    ids = {c.removeprefix("cell."): big[c] for c in ("cell.model", "cell.kv_mode", "cell.dtype", "cell.engine")}
    ids["K/V heads"] = big["kv_heads"]
    largest = ids | {
        "batch": big["cell.batch"],
        "tokens": big["tokens"],
        "formula": [f"`{formula_text(r)}`" for _, r in big.iterrows()],
        "= bytes": big["kv_formula"].map(rp.nbytes),
        "record: formula": big["memory.kv_cache_bytes_formula"].map(rp.nbytes),
        "record: measured": big["memory.kv_cache_bytes_measured"].map(rp.nbytes),
        "weights": weights.map(rp.nbytes),
        "cache / weights": (big["kv_held"] / weights).map(lambda v: "–" if rp.f(v) is None else f"{v:.3g}"),
    }
    block = big["block_size"].fillna(0)
    crossover = ids | {
        "cache per token per sequence": per_token.map(rp.nbytes),
        "weights": weights.map(rp.nbytes),
        "batch × tokens where cache = weights": cross.map("{:,.0f}".format),
        "full context (block size): from": [
            f"{b}: batch ≥ {math.ceil(c / b):,}" if b > 0 else "–" for b, c in zip(block, cross)
        ],
    }
    pairs = zip(differ["record"], differ["memory.kv_cache_bytes_formula"], differ["memory.kv_cache_bytes_measured"])
    return {
        "n": len(cached),
        "agree_formula": int((cached["kv_formula"] == formula.astype(float)).sum()),
        "agree_measured": int((measured == formula).sum()),
        "no_measured": int(measured.isna().sum()),
        "differ": [f"`{r}`: formula {rp.nbytes(a)}, measured {rp.nbytes(b)}" for r, a, b in pairs],
        "largest": by_engine(pd.DataFrame(largest), df),
        "crossover": by_engine(pd.DataFrame(crossover), df)[cross.notna().values],
    }


def wide(t: pd.DataFrame, rows: list[str], x: str, head: str) -> pd.DataFrame:
    """t's `cell` strings, a row per combination of `rows`, a column per value of x (headed `head`
    and the value), '–' where no cell; K/V heads spelled "all" where the setting is empty."""
    heads = [r for r in rows if r.endswith("n_kv_head")]
    w = t.assign(**{r: rp.sort_heads(t[r]) for r in heads}).pivot_table(
        index=rows, columns=x, values="cell", aggfunc="first", observed=True, sort=True
    )
    w = w.rename(columns=lambda c: f"{head}{c}").fillna("–").reset_index()
    w[heads] = w[heads].map(rp.heads)
    return w.rename(columns=lambda c: c.removeprefix("cell."))


def along(df: pd.DataFrame, axis: str) -> tuple[pd.DataFrame, str] | None:
    """aggregate.axis_table as markdown rows: kv mode x the other settings that vary; columns: the
    axis; cells total / per token speedup; then one line counting the rows whose whole-generation
    speedup grows along it. None where the sweep has one value of the axis."""
    t = agg.axis_table(df, axis)
    if t is None:
        return None
    t = t.assign(
        n_kv_head=rp.sort_heads(t["n_kv_head"]),
        cell=[
            f"{rp.x(a)} / {rp.x(b)}" if rp.f(a) or rp.f(b) else f"not measured ({s if s != 'ok' else f'none {n}'})"
            for a, b, s, n in zip(t["total_speedup"], t["decode_speedup"], t["status"], t["none_status"])
        ],
    )
    others = [c for c in ("engine", "model", *agg.ROW_KEYS[1:], "new_tokens") if c != axis and t[c].nunique() > 1]
    rows = ["kv_mode", *others]
    # along the axis: the table is sorted with the axis last (aggregate.AXIS_ORDER), and shows a row's first cell
    firsts = t.drop_duplicates([*rows, axis])
    trends = firsts.groupby(rows, observed=True, sort=True)["total_speedup"].agg(lambda s: rp.trend(list(s))).values
    counts = pd.Series(trends).value_counts().reindex(["grows", "falls", "mixed"]).dropna().astype(int)
    line = (
        f"Measured: of the {counts.sum()} rows with two or more finished pairs, the whole-generation speedup "
        f"along {axis} {', '.join(f'{n} in {c}' for n, c in counts.items())}."
        if len(counts)
        else "Measured: no row has two finished pairs to compare."
    )
    return wide(t, rows, axis, f"{axis} = ").assign(**{"total speedup": trends}), line


def speedup_growth(df: pd.DataFrame, sp: pd.DataFrame) -> dict:
    """Section 2: the speedup along generation length and model size, and the largest decode speedup."""
    best = None
    if sp["decode_speedup"].notna().any():
        r = sp.loc[sp["decode_speedup"].idxmax()]
        at = rp.where(r, ("model", "dtype", "batch", "prompt_len", "new_tokens"))
        best = (
            f"{rp.x(r['decode_speedup'])} ({r['cell.kv_mode']} at {at}: {rp.num(r['decode_ms'])} vs "
            f"{rp.num(r['none_decode_ms'])} ms per token; whole generation {rp.x(r['total_speedup'])})"
        )
    return {"by_length": along(df, "new_tokens"), "by_model": along(df, "model"), "best": best}


def not_helping(df: pd.DataFrame, sp: pd.DataFrame) -> dict:
    """Section 3: the prefill, short generations, pairs the cache lost, concat vs static."""
    pre = sp.dropna(subset=["prefill_speedup"])
    if not len(pre):
        return {"prefill": None}
    tot = sp.dropna(subset=["total_speedup", "prefill_ms", "total_ms"])
    tot = tot.assign(share=tot["prefill_ms"] / tot["total_ms"], bound=tot["none_total_ms"] / tot["prefill_ms"])
    short = {
        "pairs": ("record", "size"),
        "prefill share of cached total": ("share", lambda s: rp.pct(s.median())),
        "total speedup": ("total_speedup", lambda s: rp.x(s.median())),
        "bound: none total / cached prefill": ("bound", lambda s: rp.x(s.median())),
    }
    short = grouped(tot, df, ["cell.new_tokens"], ["kv_mode", "model", "engine", "n_kv_head", "new_tokens"], short)
    lost = sp[(sp["decode_speedup"] < 1) | (sp["total_speedup"] < 1)].sort_values("record")
    ok = df[df["ok"]]
    both = ok[ok["cell.kv_mode"] == "concat"].merge(ok[ok["cell.kv_mode"] == "static"], on=fr.SAME, suffixes=("", "_s"))
    d = "latency.decode_ms_per_token.median"
    return {
        "prefill": pre.groupby("cell.kv_mode", observed=True)["prefill_speedup"].agg(rp.spread).to_dict(),
        "short": short if len(tot) else None,
        "any_pair": sp["decode_speedup"].notna().any(),
        "lost": [
            f"`{r}`: decode {rp.x(a)}, whole generation {rp.x(b)}"
            for r, a, b in zip(lost["record"], lost["decode_speedup"], lost["total_speedup"])
        ],
        "concat_static": rp.spread(both[d].astype(float) / both[f"{d}_s"].astype(float)) if len(both) else None,
    }


def memory_cost(df: pd.DataFrame) -> dict:
    """Section 4: peak memory beyond the weights beside the formula (peak_memory.png), each cached
    cell's peak against its `none` partner's, and the prefill-only peak."""
    p = fr.pairs(df)
    p = p[p["ok"] & p["ok_none"].astype(bool) & (p["peak_bytes"] > 0) & (p["peak_bytes_none"] > 0)]
    p = p[p["peak_source"] == p["peak_source_none"]]
    p = p.assign(ratio=p["peak_bytes"] / p["peak_bytes_none"])
    peaks = {
        "peak measured as": ("peak_source", lambda s: ", ".join(sorted(set(s.map(PEAK_NAMES))))),
        "none peak (median)": ("peak_bytes_none", lambda s: rp.mib(s.median())),
        "cached peak (median)": ("peak_bytes", lambda s: rp.mib(s.median())),
        "its KV cache (median)": ("kv_held", lambda s: rp.mib(s.median())),
        "cached peak / none peak": ("ratio", rp.spread),
    }
    peaks = grouped(p, df, [], ["model", "engine", "n_kv_head", "kv_mode"], peaks)
    prefill = {m: rp.spread(v) for m, v in claims.prefill_ratios(df).items()}
    return {"peaks": peaks if len(peaks) else None, "prefill": prefill, **beyond_weights(df)}


def beyond_weights(df: pd.DataFrame) -> dict:
    """What peak_memory.png shows: peak bytes beyond the weights per kv mode along the figure's x,
    with the cache's formula bytes beside each."""
    ok = df[df["ok"] & df["beyond_bytes"].notna()]
    if not len(ok):
        return {"beyond": None}
    x = fr.x_axis(ok) or "cell.prompt_len"
    axis = x.removeprefix("cell.")
    rows = ["cell.kv_mode", *[f"cell.{k}" for k in rp.varying(ok, ("kv_mode", axis, "seed"))]]
    kv = ok["memory.kv_cache_bytes_formula"].astype(float) / fr.MIB
    kv = kv.map(rp.num).where(kv.notna(), "no cache")
    ok = ok.assign(cell=(ok["beyond_bytes"] / fr.MIB).map(rp.num) + " (" + kv + ")")
    ends = list(ok[x].cat.categories[[0, -1]]) if x == "cell.model" else [ok[x].min(), ok[x].max()]
    spans = [
        f"{m} {rp.mib(g[g[x] == ends[0]]['beyond_bytes'].median())} at {axis} {ends[0]} → "
        f"{rp.mib(g[g[x] == ends[1]]['beyond_bytes'].median())} at {ends[1]}"
        for m, g in ok.groupby("cell.kv_mode", observed=True)
    ]
    sources = sorted(set(ok["beyond_source"].astype(str)))
    return {
        "beyond": wide(ok, rows, x, f"{axis} "),
        "beyond_sources": sources,
        "beyond_spans": spans,
        "beyond_axis": axis,
    }


def floor(df: pd.DataFrame) -> dict | None:
    """The decode floor (floor_fraction.png): bytes over the measured *read* bandwidth (a decode
    step streams its weights and cache, it copies nothing), with the copy bandwidth beside it."""
    ok = df[df["ok"] & df["analytic.fraction_of_floor"].notna()]
    if not len(ok):
        return None
    bw = {k: ok[f"analytic.{k}_bandwidth_bytes_per_s"].astype(float).median() for k in ("read", "copy")}
    out = {f"{k}_bw": "–" if rp.f(v) is None else f"{rp.num(v / 1e9)} GB/s" for k, v in bw.items()}
    fraction = ok.groupby("cell.kv_mode", observed=True)["analytic.fraction_of_floor"]
    return out | {"fraction": fraction.agg(rp.spread, "{:.2f}".format, "cells").to_dict()}


def variants(df: pd.DataFrame) -> pd.DataFrame | None:
    """Section 5: kv_variants.csv summarised per model, dtype, kv mode and K/V heads, against
    the plain static cache with all heads."""
    v = agg.kv_variants_table(df)
    if v is None:
        return None
    coord = ["engine", "model", "dtype", "attention", "batch", "prompt_len", "new_tokens"]
    v = v.assign(held=v["kv_cache_bytes_measured"].astype(float).fillna(v["kv_cache_bytes_formula"].astype(float)))
    full = v[(v["kv_mode"] == "static") & (v["status"] == "ok") & (v["n_kv_head"] == v["n_head"])]
    v = v.merge(full[coord + ["held"]].rename(columns={"held": "ref"}), on=coord, how="left")
    head_dim = df.groupby("cell.model", observed=True)["head_dim"].max()
    keys = ["engine", "model", "dtype", -v["n_kv_head"], "kv_mode", "n_head"]  # most K/V heads first
    rows = [variant(g, *k, head_dim.get(k[1])) for k, g in v.groupby(keys, observed=True, sort=True)]
    return by_engine(pd.DataFrame(rows), df)


def variant(g: pd.DataFrame, engine, model, dtype, kv, mode, heads, hd) -> dict:
    """A row of section 5: one kv mode at one K/V head count, over its cells."""
    ok, kv, elem = g[g["status"] == "ok"], -kv, DTYPE_BYTES.get(str(dtype))
    expect = "no cache" if mode == "none" else f"{kv}/{heads} = {kv / heads:.3g}"
    if mode == "static-int8":
        ratio = kv / heads * (hd + INT8_SCALE_BYTES) / (hd * elem) if elem and rp.f(hd) else None
        expect = "–" if ratio is None else f"{kv}/{heads} × ({hd} + 4) / ({hd} × {elem}) = {ratio:.3g}"
    match = ok["matches_reference"].astype(str)
    first = [str(s) for s in ok["first_mismatch_step"].dropna().drop_duplicates().sort_values()]
    tokens = f"{(match == 'True').sum()} of {len(ok)}"
    tokens += f"; differ from step {', '.join(first)}" if (match == "False").any() and first else ""
    bytes_ratio = "–" if mode == "none" else rp.spread(ok["held"] / ok["ref"], "{:.3g}".format, "cells")
    logit = ok["max_logit_diff"].max()
    return {
        "model": model,
        "dtype": dtype,
        "kv_mode": mode,
        "K/V heads": f"{kv} of {heads}",
        "ok cells": f"{len(ok)} of {len(g)}",
        "cache bytes / static all heads": bytes_ratio,
        "formula's ratio": expect,
        "decode ms/token": rp.spread(ok["decode_ms_per_token"], rp.num, "cells"),
        "decode speedup vs none": rp.spread(ok["decode_speedup"]),
        "max logit diff": "–" if pd.isna(logit) else f"{logit:.3g}",
        "greedy tokens = none's": "the reference" if mode == "none" else tokens,
        "engine": engine,
    }


def explain(tables_dir: Path, out_md: Path) -> None:
    df = fr.read_cells(tables_dir / "cells.csv")
    sp, dev = fr.pairs(df), ", ".join(rp.devices(df))
    text = rp.render(
        "explanation.md.j2",
        h=header(df, [n for n in TABLES if (tables_dir / n).is_file()]),
        size=cache_size(df),
        growth=speedup_growth(df, sp),
        nohelp=not_helping(df, sp),
        mem=memory_cost(df),
        floor=floor(df),
        variants=variants(df),
        price=approx_price.explained(df),
        alloc=alloc_table.explained(df),
        speed=speed_table.explained(df),
        claims=claims.table(df, dev),
        dev=dev,
        about=f"{claims.ABOUT:.0%}",
    )
    kvrecord.write_atomic_text(out_md, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench explain", description="A sweep's tables -> explanation.md.")
    parser.add_argument("--tables", required=True, type=Path, help="the sweep's tables directory (cells.csv, ...)")
    parser.add_argument("--out", required=True, type=Path, help="markdown file to write")
    args = parser.parse_args(argv)
    return command.run("explain", lambda: explain(args.tables, args.out) or f"explain: {args.tables} -> {args.out}")


if __name__ == "__main__":
    raise SystemExit(main())
