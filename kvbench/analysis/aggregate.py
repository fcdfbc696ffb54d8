"""Cell records -> tables, each a column selection of the one frame (kvbench.analysis.frame):
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
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench.analysis import approx_price, command, report
from kvbench.analysis import frame as fr
from kvbench.core import record as kvrecord

CSV_OPTS = {"index": False, "lineterminator": "\n", "na_rep": ""}
# Each table's columns, named as in `readable` (settings without "cell.", measurements plainly).
SPEEDUP_COLUMNS = ("record", *fr.CELL, "status", "none_status") + tuple(
    c for m in fr.METRICS for c in (f"{m}_ms", f"none_{m}_ms", f"{m}_speedup")
)
SWEEP_COLUMNS = tuple(
    "engine model dtype attention new_tokens batch prompt_len status prefill_ms decode_ms_per_token "
    "decode_std_ms timed_iters decode_tokens_per_s total_generate_ms peak_memory_mib peak_memory_source "
    "kv_cache_mib".split()
)
# speedup_by_model.csv and speedup_by_length.csv (write-ups 003 and 002): the whole generation in
# seconds as the write-ups timed it, and per decode token.
AXIS_SPEEDUP_COLUMNS = tuple(
    "record engine model n_params n_layer dtype attention n_kv_head batch prompt_len new_tokens kv_mode status "
    "none_status none_total_s total_s total_speedup none_decode_ms_per_token decode_ms_per_token decode_speedup".split()
)
KV_VARIANT_COLUMNS = tuple(
    "record engine model dtype attention batch prompt_len new_tokens n_head n_kv_head kv_mode status "
    "kv_cache_bytes_formula kv_cache_bytes_measured kv_cache_mib weights_bytes decode_ms_per_token "
    "decode_tokens_per_s none_decode_ms_per_token decode_speedup max_logit_diff first_mismatch_step "
    "matches_reference".split()
)
# Row orders of the axis tables: the axis last, so each row group reads along it.
ROW_KEYS = ["engine", "dtype", "attention", "n_kv_head", "batch", "prompt_len"]
AXIS_ORDER = {"model": [*ROW_KEYS, "new_tokens", "model"], "new_tokens": ["model", *ROW_KEYS, "kv_mode", "new_tokens"]}


def readable(frame: pd.DataFrame) -> pd.DataFrame:
    """The reading tables' names: a setting without "cell." (n_kv_head is the setting, empty for
    all heads), the medians by their measurement's name, decode times only where the cell is ok."""
    out = frame.drop(columns=["n_kv_head", "n_kv_head_none"], errors="ignore")
    out = out.rename(columns=lambda c: c.removeprefix("cell."))
    return out.assign(
        prefill_ms=frame["latency.prefill_ms.median"],
        decode_ms_per_token=frame["latency.decode_ms_per_token.median"].where(frame["ok"]),
        # how sure the median is: the standard deviation over the timed iterations, and how many
        decode_std_ms=frame["latency.decode_ms_per_token.std"].where(frame["ok"]),
        timed_iters=frame["latency.decode_ms_per_token.n"].where(frame["ok"]),
        decode_tokens_per_s=frame["latency.decode_tokens_per_s"].where(frame["ok"]),
        total_generate_ms=frame["latency.total_generate_ms.median"],
        peak_memory_mib=frame["peak_bytes"] / fr.MIB,
        peak_memory_source=frame["peak_source"],
        kv_cache_mib=frame["memory.kv_cache_bytes_formula"].astype(float) / fr.MIB,
        **{k: frame[f"memory.{k}"] for k in ("kv_cache_bytes_formula", "kv_cache_bytes_measured", "weights_bytes")},
        **{k: frame.get(f"check.{k}") for k in ("max_logit_diff", "first_mismatch_step", "matches_reference")},
    )


def sweep_table(df: pd.DataFrame, kv_mode: str) -> pd.DataFrame:
    """Write-up 001's per-mode table; non-ok cells kept as rows with their status."""
    t = readable(df[df["cell.kv_mode"] == kv_mode])[list(SWEEP_COLUMNS)]
    numbers = [c for c in SWEEP_COLUMNS[8:] if c not in ("peak_memory_source", "timed_iters")]
    # 6 significant digits: these tables are for reading, cells.csv is exact
    t[numbers] = t[numbers].astype(float).map(lambda v: float(f"{v:.6g}"), na_action="ignore")
    return t


def speedup_table(df: pd.DataFrame) -> pd.DataFrame:
    """Each cached mode against `none` = none_ms / mode_ms; a pair where a side is not ok keeps
    its row (the statuses say why) with empty speedups, so the figures mark it."""
    return fr.pairs(df)[list(SPEEDUP_COLUMNS)]


def axis_table(df: pd.DataFrame, axis: str) -> pd.DataFrame | None:
    """Write-up 003's table (axis "model", models by parameter count) or 002's (axis
    "new_tokens"): none vs each cached mode along the axis. None when the sweep has one value."""
    p = fr.pairs(df)
    t = readable(p).assign(
        total_s=p["total_ms"] / 1000.0,
        none_total_s=p["none_total_ms"] / 1000.0,
        decode_ms_per_token=p["decode_ms"],  # a float, like its none_ column
        none_decode_ms_per_token=p["none_decode_ms"],
    )
    if t[axis].nunique() < 2:
        return None
    return t.sort_values(AXIS_ORDER[axis], kind="stable", na_position="first")[list(AXIS_SPEEDUP_COLUMNS)]


def kv_variants_table(df: pd.DataFrame) -> pd.DataFrame | None:
    """kv_mode x n_kv_head side by side at equal other settings: cache bytes, decode speed, and the
    logit error against `none` each costs. None when the sweep has no static-int8 cell and no n_kv_head."""
    if not ((df["cell.kv_mode"] == "static-int8") | df["cell.n_kv_head"].notna()).any():
        return None
    p = fr.pairs(df)[["record", "none_decode_ms", "decode_speedup"]]
    t = readable(df.merge(p, on="record", how="left")).rename(columns={"none_decode_ms": "none_decode_ms_per_token"})
    order = ["engine", "model", "dtype", "attention", "batch", "prompt_len", "new_tokens", "n_kv_head"]
    t = t.sort_values(order, kind="stable", na_position="first")
    return t.assign(n_kv_head=t["kv_heads"])[list(KV_VARIANT_COLUMNS)].reset_index(drop=True)


# Written only when the sweep varies their axis; otherwise an older copy is removed.
OPTIONAL_TABLES = {
    "speedup_by_model.csv": lambda df: axis_table(df, "model"),
    "speedup_by_length.csv": lambda df: axis_table(df, "new_tokens"),
    "kv_variants.csv": kv_variants_table,
    "kv_price.csv": approx_price.price_or_none,  # the approximate caches' memory and accuracy
}


def tables(df: pd.DataFrame, sweep: str | None) -> dict[str, str]:
    """File name -> text of every table of one sweep."""
    out = {
        "cells.csv": df[fr.record_columns(df)],
        "per_step.csv": fr.per_step(df),
        "speedup.csv": speedup_table(df),
        **{f"sweep_kv_{m}.csv": sweep_table(df, m) for m in sorted(set(df["cell.kv_mode"].astype(str)))},
        **{name: build(df) for name, build in OPTIONAL_TABLES.items()},
    }
    texts = {name: t.to_csv(**CSV_OPTS) for name, t in out.items() if t is not None}
    return texts | {"summary.md": report.render("summary.md.j2", **report.summary(df, sweep))}


def aggregate(record_paths: Sequence[Path], out_dir: Path) -> None:
    """Write every table into out_dir; stale sweep_kv_* and optional tables of an older run go."""
    paths = [Path(p) for p in record_paths]
    texts = tables(fr.from_records(paths), fr.sweep_name(paths))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    for path in [*out_dir.glob("sweep_kv_*.csv"), *(out_dir / n for n in OPTIONAL_TABLES)]:
        if path.name not in texts:
            path.unlink(missing_ok=True)
    for name, text in texts.items():
        kvrecord.write_atomic_text(out_dir / name, text)


def sweep_records(config: Path, sweep: str) -> list[Path]:
    """The records of a sweep's grid, as the workflow names them (kvbench.core.sweep)."""
    from kvbench.core import sweep as kvsweep

    sweeps = read_sweeps(config)
    if sweep not in sweeps:
        raise ValueError(f"sweep: {sweep!r} is not defined in {config} (defined: {', '.join(sweeps)})")
    if not isinstance(sweeps[sweep], dict) or not all(isinstance(sweeps[sweep].get(k, {}), dict) for k in SWEEP_KEYS):
        raise ValueError(f"{config}: sweep {sweep!r} is not a sweep ({', '.join(SWEEP_KEYS)}: mappings)")
    try:
        return [Path(kvsweep.cell_path(sweep, c)) for c in kvsweep.cells(sweeps[sweep])]
    except (TypeError, KeyError, AttributeError) as e:  # a grid of the wrong shape: the workflow's check names it
        raise ValueError(f"{config}: sweep {sweep!r} is not a valid sweep ({type(e).__name__}: {e})") from None


SWEEP_KEYS = ("grid", "settings")  # what a sweep holds (workflow/schemas/config.schema.yaml)


def read_sweeps(config: Path) -> dict:
    """The `sweeps:` of a config file; ValueError, naming the file, for one that is not a sweep config."""
    import yaml

    try:
        loaded = yaml.safe_load(Path(config).read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        at = f" at line {where.line + 1}" if where is not None else ""
        raise ValueError(f"{config}: not valid YAML{at} ({getattr(e, 'problem', None) or type(e).__name__})") from None
    except UnicodeDecodeError:
        raise ValueError(f"{config}: not a text file") from None
    sweeps = loaded.get("sweeps") if isinstance(loaded, dict) else None
    if not isinstance(sweeps, dict):
        raise ValueError(f"{config}: not a sweep config (no `sweeps:` mapping of sweep names to grids)")
    return sweeps


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench aggregate", description="Records -> CSV tables and summary.md.")
    parser.add_argument("--records", nargs="+", type=Path, help="record files, or folders searched for *.json")
    parser.add_argument("--sweep", help="with --config: the records of this sweep's grid")
    parser.add_argument("--config", type=Path, help="the config file defining --sweep")
    parser.add_argument("--out", required=True, type=Path, help="tables directory to write")
    args = parser.parse_args(argv)
    if bool(args.records) == bool(args.sweep and args.config):
        parser.error("give either --records or --sweep with --config")

    def action() -> str:
        files = kvrecord.find(args.records) if args.records else sweep_records(args.config, args.sweep)
        if not files:
            where = " ".join(map(str, args.records)) if args.records else f"sweep {args.sweep}'s grid in {args.config}"
            raise ValueError(f"no *.json records: {where} names none")
        aggregate(files, args.out)
        return f"aggregate: {len(files)} records -> {args.out}"

    return command.run("aggregate", action)


if __name__ == "__main__":
    raise SystemExit(main())
