"""Tables -> explanation.md: what the KV cache did in one sweep, in words, with its numbers.

Write-up 004's point made a rule: a speedup needs a measured baseline. The document is built
from the sweep's cells.csv alone (through the same frame and tables as the aggregate, so the
two cannot disagree); every number is read from it or computed by a formula written beside it,
and a claim the sweep did not measure says "not measured in this sweep".

    kvbench explain --tables results/<sweep>/tables --out results/<sweep>/explanation.md
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench import record as kvrecord
from kvbench.analysis import aggregate as agg
from kvbench.analysis import claims
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.kv_cache import INT8_SCALE_BYTES, kv_cache_bytes

PEAK_NAMES = {"torch_peak_allocated": "torch peak allocated", "rss_peak": "process RSS peak"}
TABLES = ("cells.csv", "speedup.csv", "speedup_by_model.csv", "speedup_by_length.csv", "kv_variants.csv")


def _i(v) -> int:
    return int(float(v))


def formula_text(r: pd.Series, batch=None, tokens=None) -> str:
    """The KV-cache product written out for one cell (its value comes from kv_cache_bytes)."""
    b, t = _i(r["cell.batch"]) if batch is None else batch, _i(r["tokens"]) if tokens is None else tokens
    last = (
        f"({_i(r['head_dim'])} + {INT8_SCALE_BYTES})"
        if r["cell.kv_mode"] == "static-int8"
        else f"{_i(r['head_dim'])} × {_i(r['elem_bytes'])}"
    )
    return f"2 × {_i(r['n_layer'])} × {b} × {_i(r['kv_heads'])} × {t} × {last}"


def header(df: pd.DataFrame, present: list[str]) -> dict:
    models = [desc(df, m) for m in rp.values(df, "model")]
    kv = sorted({rp.lab(v) for v in df["kv_heads"].dropna()}, key=rp.natural)
    return {
        "present": present,
        "n": len(df),
        "statuses": rp.status_counts(df),
        "devices": rp.devices(df),
        "settings": {
            "models": models,
            "kv modes": [str(m) for m in df["cell.kv_mode"].cat.categories],
            **{k: rp.values(df, k) for k in ("dtype", "attention", "batch", "prompt_len", "new_tokens")},
            "K/V heads": kv,
        },
    }


def desc(df: pd.DataFrame, model: str) -> str:
    rows = df[df["cell.model"] == model]
    parts = [f"{rows['n_params'].max() / 1e6:.0f}M params"] if rows["n_params"].max() > 0 else []
    parts += [f"{int(rows['n_layer'].max())} layers"] if rows["n_layer"].max() > 0 else []
    return f"{model} ({', '.join(parts)})" if parts else model


def _largest(cached: pd.DataFrame) -> pd.DataFrame:
    """The largest cache each model, dtype, kv mode and K/V head count reached."""
    size = cached["cell.batch"].astype(float) * cached["tokens"]
    idx = size.groupby(
        [cached["cell.model"], cached["cell.dtype"], cached["kv_heads"], cached["cell.kv_mode"]],
        observed=True,
        sort=True,
    ).idxmax()
    return cached.loc[idx.values]


def cache_size(df: pd.DataFrame) -> dict:
    cached = df[df["ok"] & (df["cell.kv_mode"] != "none")]
    if not len(cached):
        return {"n": 0}
    rec_formula, measured = cached["memory.kv_cache_bytes_formula"], cached["memory.kv_cache_bytes_measured"]
    differ = cached[measured.notna() & (measured != rec_formula)]
    big = _largest(cached)
    largest = pd.DataFrame(
        {
            "model": big["cell.model"],
            "kv_mode": big["cell.kv_mode"],
            "dtype": big["cell.dtype"],
            "K/V heads": big["kv_heads"].map(rp.lab),
            "batch": big["cell.batch"].map(rp.lab),
            "tokens": big["tokens"].map(rp.lab),
            "formula": [f"`{formula_text(r)}`" for _, r in big.iterrows()],
            "= bytes": big["kv_formula"].map(rp.nbytes),
            "record: formula": big["memory.kv_cache_bytes_formula"].map(rp.nbytes),
            "record: measured": big["memory.kv_cache_bytes_measured"].map(rp.f).map(rp.nbytes),
            "weights": big["memory.weights_bytes"].map(rp.nbytes),
            "cache / weights": [
                f"{h / w:.3g}" if w else "–" for h, w in zip(big["kv_held"], big["memory.weights_bytes"].map(rp.f))
            ],
        }
    )
    per_token = [
        kv_cache_bytes(
            _i(r["n_layer"]),
            1,
            _i(r["kv_heads"]),
            1,
            _i(r["head_dim"]),
            0 if pd.isna(r["elem_bytes"]) else _i(r["elem_bytes"]),
            str(r["cell.kv_mode"]),
        )
        for _, r in big.iterrows()
    ]
    cross = big["memory.weights_bytes"].astype(float) / per_token
    crossover = pd.DataFrame(
        {
            "model": big["cell.model"],
            "kv_mode": big["cell.kv_mode"],
            "dtype": big["cell.dtype"],
            "K/V heads": big["kv_heads"].map(rp.lab),
            "cache per token per sequence": [rp.nbytes(n) for n in per_token],
            "weights": big["memory.weights_bytes"].map(rp.nbytes),
            "batch × tokens where cache = weights": cross.map("{:,.0f}".format),
            "full context (block size): from": [
                f"{_i(b)}: batch ≥ {math.ceil(c / b):,}" if b > 0 else "–"
                for b, c in zip(big["block_size"].fillna(0), cross)
            ],
        }
    )
    return {
        "n": len(cached),
        "agree_formula": int((cached["kv_formula"] == rec_formula.astype(float)).sum()),
        "agree_measured": int((measured == rec_formula).sum()),
        "no_measured": int(measured.isna().sum()),
        "differ": [
            f"`{r['record']}`: formula {rp.nbytes(rp.f(r['memory.kv_cache_bytes_formula']))}, measured "
            f"{rp.nbytes(rp.f(r['memory.kv_cache_bytes_measured']))}"
            for _, r in differ.iterrows()
        ],
        "largest": largest,
        "crossover": crossover[cross.notna().values],
    }


def speedup_growth(df: pd.DataFrame, sp: pd.DataFrame) -> dict:
    out = {
        "by_length": None,
        "by_model": None,
        "best": None,
        "new_tokens": rp.values(df, "new_tokens"),
        "models": [desc(df, m) for m in rp.values(df, "model")],
    }
    for key, build, axis in (
        ("by_length", agg.speedup_by_length_table, "new_tokens"),
        ("by_model", agg.speedup_by_model_table, "model"),
    ):
        table = build(df)
        if table is not None and len(table):
            out[key] = rp.axis_table(table, axis)
    ok = sp.dropna(subset=["decode_speedup"])
    if len(ok):
        r = ok.loc[ok["decode_speedup"].idxmax()]
        out["best"] = (
            f"{rp.x(r['decode_speedup'])} ({r['cell.kv_mode']} at "
            f"{rp.where(r, ('model', 'dtype', 'batch', 'prompt_len', 'new_tokens'))}: "
            f"{rp.num(r['decode_ms'])} vs {rp.num(r['none_decode_ms'])} ms per token; whole generation "
            f"{rp.x(r['total_speedup'])})"
        )
    return out


def not_helping(df: pd.DataFrame, sp: pd.DataFrame) -> dict:
    pre = sp.dropna(subset=["prefill_speedup"])
    if not len(pre):
        return {"prefill": None}
    tot = sp.dropna(subset=["total_speedup", "prefill_ms", "total_ms"])
    short = tot.assign(
        share=tot["prefill_ms"] / tot["total_ms"],
        bound=tot["none_total_ms"] / tot["prefill_ms"],
        kv=tot["cell.n_kv_head"].astype(float).fillna(-1),
    )
    short = (
        short.groupby(["cell.model", "kv", "cell.kv_mode", "cell.new_tokens"], observed=True, sort=True)
        .agg(
            pairs=("record", "size"),
            share=("share", "median"),
            total=("total_speedup", "median"),
            bound=("bound", "median"),
        )
        .reset_index()
    )
    short = pd.DataFrame(
        {
            "kv_mode": short["cell.kv_mode"],
            "model": short["cell.model"],
            "n_kv_head": short["kv"].map(lambda v: "all" if v == -1 else rp.lab(v)),
            "new_tokens": short["cell.new_tokens"].map(rp.lab),
            "pairs": short["pairs"],
            "prefill share of cached total": short["share"].map(rp.pct),
            "total speedup": short["total"].map(rp.x),
            "bound: none total / cached prefill": short["bound"].map(rp.x),
        }
    )
    dec = sp.dropna(subset=["decode_speedup"])
    lost = pd.concat([dec[dec["decode_speedup"] < 1], tot[tot["total_speedup"] < 1]]).drop_duplicates("record")
    ok = df[df["ok"]]
    both = ok[ok["cell.kv_mode"] == "concat"].merge(ok[ok["cell.kv_mode"] == "static"], on="key", suffixes=("", "_s"))
    d = "latency.decode_ms_per_token.median"
    return {
        "prefill": {str(m): rp.spread(g["prefill_speedup"]) for m, g in pre.groupby("cell.kv_mode", observed=True)},
        "short": short if len(tot) else None,
        "any_pair": len(dec) > 0,
        "lost": [
            f"`{r['record']}`: decode {rp.x(rp.f(r['decode_speedup']))}, whole generation "
            f"{rp.x(rp.f(r['total_speedup']))}"
            for _, r in lost.sort_values("record").iterrows()
        ],
        "concat_static": rp.spread(both[d].astype(float) / both[f"{d}_s"].astype(float)) if len(both) else None,
    }


def memory_cost(df: pd.DataFrame) -> dict:
    p = fr.pairs(df)
    p = p[p["ok"] & p["ok_none"].astype(bool)]
    same = p[(p["peak_bytes"] > 0) & (p["peak_bytes_none"] > 0) & (p["peak_source"] == p["peak_source_none"])]
    same = same.assign(
        ratio=same["peak_bytes"] / same["peak_bytes_none"],
        kv=same["cell.n_kv_head"].astype(float).fillna(-1),
        source=same["peak_source"].map(PEAK_NAMES),
    )
    peaks = (
        same.groupby(["cell.model", "kv", "cell.kv_mode"], observed=True, sort=True)
        .agg(
            source=("source", lambda s: ", ".join(sorted(set(s)))),
            none=("peak_bytes_none", "median"),
            cached=("peak_bytes", "median"),
            cache=("kv_held", "median"),
            ratios=("ratio", list),
        )
        .reset_index()
    )
    peaks = pd.DataFrame(
        {
            "model": peaks["cell.model"],
            "n_kv_head": peaks["kv"].map(lambda v: "all" if v == -1 else rp.lab(v)),
            "kv_mode": peaks["cell.kv_mode"],
            "peak measured as": peaks["source"],
            "none peak (median)": peaks["none"].map(rp.mib),
            "cached peak (median)": peaks["cached"].map(rp.mib),
            "its KV cache (median)": peaks["cache"].map(rp.f).map(rp.mib),
            "cached peak / none peak": peaks["ratios"].map(rp.spread),
        }
    )
    pre = p[(p["prefill_peak"] > 0) & (p["prefill_peak_none"] > 0)]
    prefill = {
        str(m): list(g["prefill_peak"] / g["prefill_peak_none"]) for m, g in pre.groupby("cell.kv_mode", observed=True)
    }
    return {"peaks": peaks if len(peaks) else None, "prefill": prefill, **beyond_weights(df)}


def beyond_weights(df: pd.DataFrame) -> dict:
    """What peak_memory.png shows: peak bytes beyond the weights per kv mode and prompt length,
    with the cache's formula bytes beside each (issue 17)."""
    ok = df[df["ok"] & df["beyond_bytes"].notna()]
    if not len(ok):
        return {"beyond": None}
    x = fr.x_axis(ok) or "cell.prompt_len"
    rows = ["cell.kv_mode", *[f"cell.{k}" for k in rp.varying(ok, ("kv_mode", x[5:])) if k != "seed"]]
    cell = [
        f"{rp.num(b / fr.MIB)} ({'no cache' if pd.isna(k) else rp.num(k / fr.MIB)})"
        for b, k in zip(ok["beyond_bytes"], ok["memory.kv_cache_bytes_formula"].astype(float))
    ]
    ok = ok.assign(**{"cell.n_kv_head": ok["cell.n_kv_head"].astype(float).fillna(-1)})  # -1: all heads; kept as a key
    wide = (
        ok.assign(cell=cell)
        .pivot_table(index=rows, columns=x, values="cell", aggfunc="first", observed=True, sort=True)
        .fillna("–")
        .reset_index()
    )
    if "cell.n_kv_head" in wide.columns:
        wide["cell.n_kv_head"] = wide["cell.n_kv_head"].map(lambda v: "all" if v == -1 else rp.lab(v))
    wide.columns = [c.removeprefix("cell.") if str(c).startswith("cell.") else f"{x[5:]} {c}" for c in wide.columns]
    lo, hi = (ok[x].min(), ok[x].max()) if x != "cell.model" else (ok[x].cat.categories[0], ok[x].cat.categories[-1])
    spans = []
    for mode, g in ok.groupby("cell.kv_mode", observed=True):
        a, b = g[g[x] == lo]["beyond_bytes"], g[g[x] == hi]["beyond_bytes"]
        spans.append(f"{mode} {rp.mib(rp.f(a.median()))} at {x[5:]} {lo} → {rp.mib(rp.f(b.median()))} at {hi}")
    return {
        "beyond": wide.map(rp.lab),
        "beyond_sources": sorted(set(ok["beyond_source"].astype(str))),
        "beyond_spans": spans,
        "beyond_axis": x[5:],
    }


def _expected_ratio(mode, kv: int, heads, frac: float, elem, hd) -> str:
    """The formula's cache ratio against the plain static cache with all heads."""
    if mode == "none":
        return "no cache"
    if mode != "static-int8":
        return f"{kv}/{heads} = {frac:.3g}"
    if not (elem and rp.f(hd)):
        return "–"
    return f"{kv}/{heads} × ({_i(hd)} + 4) / ({_i(hd)} × {elem}) = {frac * (hd + INT8_SCALE_BYTES) / (hd * elem):.3g}"


def variants(df: pd.DataFrame) -> pd.DataFrame | None:
    v = agg.kv_variants_table(df)
    if v is None or not len(v):
        return None
    coord = ["model", "dtype", "attention", "batch", "prompt_len", "new_tokens"]
    v = v.assign(held=v["kv_cache_bytes_measured"].astype(float).fillna(v["kv_cache_bytes_formula"].astype(float)))
    full = v[(v["kv_mode"] == "static") & (v["status"] == "ok") & (v["n_kv_head"] == v["n_head"])]
    v = v.merge(full[coord + ["held"]].rename(columns={"held": "ref"}), on=coord, how="left")
    shape = df.groupby(df["cell.model"].astype(str))[["head_dim"]].max()["head_dim"]
    rows = []
    for (model, dtype, kv, mode, heads), g in v.groupby(
        ["model", "dtype", v["n_kv_head"].astype(float) * -1, "kv_mode", "n_head"], observed=True, sort=True
    ):
        ok, kv = g[g["status"] == "ok"], int(-kv)
        elem, hd, frac = fr.DTYPE_BYTES.get(str(dtype)), shape.get(str(model)), kv / heads
        expect = _expected_ratio(mode, kv, heads, frac, elem, hd)
        match = ok["matches_reference"].astype(str)
        first = sorted({rp.lab(s) for s in ok["first_mismatch_step"].dropna()}, key=rp.natural)
        rows.append(
            [
                model,
                dtype,
                mode,
                f"{kv} of {heads}",
                f"{len(ok)} of {len(g)}",
                "–" if mode == "none" else rp.spread(ok["held"] / ok["ref"], lambda x: f"{x:.3g}", "cells"),
                expect,
                rp.spread(ok["decode_ms_per_token"], rp.num, "cells"),
                rp.spread(ok["decode_speedup"]),
                "–" if not ok["max_logit_diff"].notna().any() else f"{ok['max_logit_diff'].max():.3g}",
                "the reference"
                if mode == "none"
                else f"{(match == 'True').sum()} of {len(ok)}"
                + (f"; differ from step {', '.join(first)}" if (match == "False").any() and first else ""),
            ]
        )
    return pd.DataFrame(
        rows,
        columns=[
            "model",
            "dtype",
            "kv_mode",
            "K/V heads",
            "ok cells",
            "cache bytes / static all heads",
            "formula's ratio",
            "decode ms/token",
            "decode speedup vs none",
            "max logit diff",
            "greedy tokens = none's",
        ],
    )


def explanation_markdown(tables_dir: Path) -> str:
    tables_dir = Path(tables_dir)
    df = fr.read_cells(tables_dir / "cells.csv")
    sp = agg.speedup_table(df)
    mem = memory_cost(df)
    ctx = {
        "ok": df[df["ok"]],
        "speedup": sp,
        "dev": ", ".join(rp.devices(df)),
        "by_model": agg.speedup_by_model_table(df),
        "prefill_ratios": mem["prefill"],
    }
    return rp.render(
        "explanation.md.j2",
        h=header(df, [n for n in TABLES if (tables_dir / n).is_file()]),
        size=cache_size(df),
        growth=speedup_growth(df, sp),
        nohelp=not_helping(df, sp),
        mem=mem,
        prefill={m: rp.spread(v) for m, v in mem["prefill"].items()},
        variants=variants(df),
        claims=claims.table(ctx),
        dev=ctx["dev"],
        about=f"{claims.ABOUT:.0%}",
    )


def explain(tables_dir: Path, out_md: Path) -> None:
    kvrecord.write_atomic_text(Path(out_md), explanation_markdown(Path(tables_dir)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench explain", description="A sweep's tables -> explanation.md.")
    parser.add_argument("--tables", required=True, type=Path, help="the sweep's tables directory (cells.csv, ...)")
    parser.add_argument("--out", required=True, type=Path, help="markdown file to write")
    args = parser.parse_args(argv)
    try:
        explain(args.tables, args.out)
    except (FileNotFoundError, ValueError, KeyError) as exc:
        print(f"explain: error: {exc}", file=sys.stderr)
        return 1
    print(f"explain: {args.tables} -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
