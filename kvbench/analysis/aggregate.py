"""Cell records -> tables, each a selection of the one frame (kvbench.analysis.frame):
cells.csv, per_step.csv, sweep_kv_<mode>.csv, speedup.csv, summary.md, and where the sweep
varies their axis speedup_by_model.csv, speedup_by_length.csv, kv_variants.csv.

Tables are written with lossless shortest-repr floats in grid order, so the same records give
the same bytes (Snakemake then sees no change downstream) and a ratio read back from speedup.csv
equals none_ms / mode_ms exactly.

    kvbench aggregate --sweep <name> --config config/config.yaml --out results/<name>/tables
    kvbench aggregate --records results/<name>/cells --out tables/
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench import record as kvrecord
from kvbench.analysis import frame as fr
from kvbench.analysis import report

CSV_OPTS = {"index": False, "lineterminator": "\n", "na_rep": ""}
SPEEDUP_METRICS = (
    ("prefill", "latency.prefill_ms.median"),
    ("decode", "latency.decode_ms_per_token.median"),
    ("total", "latency.total_generate_ms.median"),
)
# speedup_by_model.csv and speedup_by_length.csv (write-ups 003 and 002): the whole generation in
# seconds as the write-ups timed it, and per decode token.
AXIS_SPEEDUP_COLUMNS = (
    "record",
    "model",
    "n_params",
    "n_layer",
    "dtype",
    "attention",
    "n_kv_head",
    "batch",
    "prompt_len",
    "new_tokens",
    "kv_mode",
    "status",
    "none_status",
    "none_total_s",
    "total_s",
    "total_speedup",
    "none_decode_ms_per_token",
    "decode_ms_per_token",
    "decode_speedup",
)
KV_VARIANT_COLUMNS = (
    "record",
    "model",
    "dtype",
    "attention",
    "batch",
    "prompt_len",
    "new_tokens",
    "n_head",
    "n_kv_head",
    "kv_mode",
    "status",
    "kv_cache_bytes_formula",
    "kv_cache_bytes_measured",
    "kv_cache_mib",
    "weights_bytes",
    "decode_ms_per_token",
    "decode_tokens_per_s",
    "none_decode_ms_per_token",
    "decode_speedup",
    "max_logit_diff",
    "first_mismatch_step",
    "matches_reference",
)


def _sig(series: pd.Series) -> pd.Series:
    """6 significant digits: the per-mode tables are for reading, cells.csv is exact."""
    return pd.to_numeric(series, errors="coerce").astype(float).map(lambda v: float(f"{v:.6g}"), na_action="ignore")


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series(None, index=df.index, dtype=object)


def sweep_table(df: pd.DataFrame, kv_mode: str) -> pd.DataFrame:
    """Write-up 001's per-mode table; non-ok cells kept as rows with their status."""
    d = df[df["cell.kv_mode"] == kv_mode]
    out = pd.DataFrame(
        {k: d[f"cell.{k}"] for k in ("model", "dtype", "attention", "new_tokens", "batch", "prompt_len")}
    )
    out["status"] = d["status"]
    for name, col in (
        ("prefill_ms", "latency.prefill_ms.median"),
        ("decode_ms_per_token", "latency.decode_ms_per_token.median"),
        ("decode_tokens_per_s", "latency.decode_tokens_per_s"),
        ("total_generate_ms", "latency.total_generate_ms.median"),
    ):
        out[name] = _sig(d[col])
    out["peak_memory_mib"] = _sig(d["peak_bytes"] / fr.MIB)
    out["peak_memory_source"] = d["peak_source"]
    out["kv_cache_mib"] = _sig(d["memory.kv_cache_bytes_formula"].astype(float) / fr.MIB)
    return out


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each cached mode against `none` = none_ms / mode_ms; a pair where a side is not ok keeps
    its row (the statuses say why) with empty speedups, so the heatmap marks it."""
    p = fr.pairs(df)
    out = p[["record", *fr.CELL, "status"]].assign(none_status=p["status_none"])
    for metric, col in SPEEDUP_METRICS:
        out[f"{metric}_ms"], out[f"none_{metric}_ms"], out[f"{metric}_speedup"] = fr.ratio(p, col)
    return out


def _axis_rows(df: pd.DataFrame) -> pd.DataFrame:
    p = fr.pairs(df)
    total, none_total, total_speedup = fr.ratio(p, "latency.total_generate_ms.median")
    decode, none_decode, decode_speedup = fr.ratio(p, "latency.decode_ms_per_token.median")
    out = pd.DataFrame(
        {
            "record": p["record"],
            "model": p["cell.model"],
            "n_params": p["n_params"].astype("Int64"),
            "n_layer": p["n_layer"].astype("Int64"),
            **{
                k: p[f"cell.{k}"]
                for k in ("dtype", "attention", "n_kv_head", "batch", "prompt_len", "new_tokens", "kv_mode")
            },
            "status": p["status"],
            "none_status": p["status_none"],
            "none_total_s": none_total / 1000.0,
            "total_s": total / 1000.0,
            "total_speedup": total_speedup,
            "none_decode_ms_per_token": none_decode,
            "decode_ms_per_token": decode,
            "decode_speedup": decode_speedup,
        }
    )
    return out.assign(kv_sort=out["n_kv_head"].astype(float).fillna(-1))


def speedup_by_model_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Write-up 003's table: none vs each cached mode per model (by parameter count). None when
    the sweep has fewer than two models to compare."""
    rows = _axis_rows(df)
    if rows["model"].nunique() < 2:
        return None
    order = ["dtype", "attention", "kv_sort", "batch", "prompt_len", "new_tokens", "model"]
    return rows.sort_values(order, kind="stable", key=_key)[list(AXIS_SPEEDUP_COLUMNS)]


def speedup_by_length_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """Write-up 002's claim: speedup vs generated tokens. None when the sweep has one new_tokens."""
    rows = _axis_rows(df)
    if rows["new_tokens"].nunique() < 2:
        return None
    order = ["model", "dtype", "attention", "kv_sort", "batch", "prompt_len", "kv_mode", "new_tokens"]
    return rows.sort_values(order, kind="stable", key=_key)[list(AXIS_SPEEDUP_COLUMNS)]


def _key(s: pd.Series) -> pd.Series:
    return s.astype(str) if s.name in ("dtype", "attention") else s


def kv_variants_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """kv_mode x n_kv_head side by side at equal other settings: cache bytes, decode speed, and the
    logit error against `none` each costs. None when the sweep has no static-int8 cell and no n_kv_head."""
    if not ((df["cell.kv_mode"] == "static-int8") | df["cell.n_kv_head"].notna()).any():
        return None
    p = fr.pairs(df).set_index("ident")
    d = df.set_index("ident")
    _, none_decode, speedup = (s.reindex(d.index) for s in fr.ratio(p, "latency.decode_ms_per_token.median"))
    out = pd.DataFrame(
        {
            "record": d["record"],
            **{k: d[f"cell.{k}"] for k in ("model", "dtype", "attention", "batch", "prompt_len", "new_tokens")},
            "n_head": d["n_head"].astype("Int64"),
            "n_kv_head": d["kv_heads"].astype("Int64"),
            "kv_mode": d["cell.kv_mode"],
            "status": d["status"],
            "kv_cache_bytes_formula": d["memory.kv_cache_bytes_formula"],
            "kv_cache_bytes_measured": d["memory.kv_cache_bytes_measured"],
            "kv_cache_mib": d["memory.kv_cache_bytes_formula"].astype(float) / fr.MIB,
            "weights_bytes": d["memory.weights_bytes"],
            "decode_ms_per_token": d["latency.decode_ms_per_token.median"].where(d["ok"]),
            "decode_tokens_per_s": d["latency.decode_tokens_per_s"].where(d["ok"]),
            "none_decode_ms_per_token": none_decode,
            "decode_speedup": speedup,
            **{k: _col(d, f"check.{k}") for k in ("max_logit_diff", "first_mismatch_step", "matches_reference")},
            "kv_sort": d["cell.n_kv_head"].astype(float).fillna(-1),
        }
    )
    order = ["model", "dtype", "attention", "batch", "prompt_len", "new_tokens", "kv_sort"]
    return out.sort_values(order, kind="stable", key=_key)[list(KV_VARIANT_COLUMNS)].reset_index(drop=True)


def csv_text(df: pd.DataFrame) -> str:
    return df.to_csv(**CSV_OPTS)


# Written only when the sweep varies their axis; otherwise an older copy is removed.
OPTIONAL_TABLES = {
    "speedup_by_model.csv": speedup_by_model_table,
    "speedup_by_length.csv": speedup_by_length_table,
    "kv_variants.csv": kv_variants_table,
}


def tables(df: pd.DataFrame, steps: pd.DataFrame, sweep: str | None) -> dict[str, str]:
    """File name -> text of every table of one sweep."""
    out = {
        "cells.csv": csv_text(df[fr.record_columns(df)]),
        "per_step.csv": csv_text(steps),
        "speedup.csv": csv_text(speedup_table(df)),
    }
    out |= {f"sweep_kv_{m}.csv": csv_text(sweep_table(df, m)) for m in sorted(set(df["cell.kv_mode"].astype(str)))}
    for name, build in OPTIONAL_TABLES.items():
        table = build(df)
        if table is not None:
            out[name] = csv_text(table)
    out["summary.md"] = report.summary_markdown(df, sweep)
    return out


def aggregate(record_paths: Sequence[Path], out_dir: Path) -> None:
    """Write every table into out_dir; stale sweep_kv_* and optional tables of an older run go."""
    paths = [Path(p) for p in record_paths]
    df, steps = fr.from_records(paths)
    texts = tables(df, steps, fr.sweep_name(paths))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in [*out_dir.glob("sweep_kv_*.csv"), *(out_dir / n for n in OPTIONAL_TABLES)]:
        if path.name not in texts:
            path.unlink(missing_ok=True)
    for name, text in texts.items():
        kvrecord.write_atomic_text(out_dir / name, text)


def sweep_records(config: Path, sweep: str) -> list[Path]:
    """The records of a sweep's grid, as the workflow names them (kvbench.sweep)."""
    import yaml

    from kvbench import sweep as kvsweep

    sweeps = yaml.safe_load(Path(config).read_text())["sweeps"]
    if sweep not in sweeps:
        raise ValueError(f"sweep: {sweep!r} is not defined in {config} (defined: {', '.join(sweeps)})")
    return [Path(kvsweep.cell_path(sweep, c)) for c in kvsweep.cells(sweeps[sweep])]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench aggregate", description="Records -> CSV tables and summary.md.")
    parser.add_argument("--records", nargs="+", type=Path, help="record files, or folders searched for *.json")
    parser.add_argument("--sweep", help="with --config: the records of this sweep's grid")
    parser.add_argument("--config", type=Path, help="the config file defining --sweep")
    parser.add_argument("--out", required=True, type=Path, help="tables directory to write")
    args = parser.parse_args(argv)
    if bool(args.records) == bool(args.sweep and args.config):
        parser.error("give either --records or --sweep with --config")
    try:
        files = kvrecord.find(args.records) if args.records else sweep_records(args.config, args.sweep)
        if not files:
            raise ValueError(f"no *.json records under {' '.join(map(str, args.records))}")
        aggregate(files, args.out)
    except kvrecord.RecordError as exc:  # one line per damaged file, each with the remedy
        print("\n".join(f"aggregate: refused: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"aggregate: error: {exc}", file=sys.stderr)
        return 1
    print(f"aggregate: {len(files)} records -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
