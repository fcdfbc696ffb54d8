"""Cell records -> tables: cells.csv, per_step.csv, sweep_kv_<mode>.csv, speedup.csv, summary.md,
and where the sweep varies their axis speedup_by_model.csv, speedup_by_length.csv, kv_variants.csv.

Every table is sorted in grid order and written with lossless shortest-repr floats, so the same
records give byte-identical files (Snakemake then sees no change downstream), and a ratio in
speedup.csv read back equals none_ms / mode_ms exactly.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kvbench.analysis.atomic import atomic_write_text
from kvbench.analysis.records import (CELL_KEYS, KV_MODE_ORDER, STATUS_ORDER, cell_identity,
                                      cell_sort_key, column_sort_key, find_record_files, flatten,
                                      load_record, relative_names, sweep_name)

CELL_COLUMNS = tuple(f"cell.{k}" for k in CELL_KEYS)
_STATS = ("median", "min", "max")
# Columns present in cells.csv even when no record fills them (e.g. a sweep that all OOMed),
# so downstream readers can rely on their names.
CORE_COLUMNS = (
    ("record", "status", "error") + CELL_COLUMNS
    + tuple(f"latency.{m}.{s}" for m in ("prefill_ms", "decode_ms_per_token", "total_generate_ms")
            for s in _STATS)
    + ("latency.decode_tokens_per_s", "latency.decode_steps")
    + tuple(f"memory.{k}" for k in (
        "torch_peak_allocated_bytes", "torch_peak_reserved_bytes", "prefill_peak_allocated_bytes",
        "decode_peak_allocated_bytes", "nvml_peak_used_bytes", "rss_peak_bytes", "weights_bytes",
        "kv_cache_bytes_formula", "kv_cache_bytes_measured"))
    + ("energy.decode_joules_per_token", "energy.method",
       "analytic.decode_flops_per_token", "analytic.decode_bytes_per_token",
       "analytic.floor_ms_per_token", "analytic.fraction_of_floor",
       "check.tokens_sha256", "check.matches_reference", "environment.device_name")
)
MIB = 2**20
CSV_OPTS: dict[str, Any] = {"index": False, "lineterminator": "\n", "na_rep": ""}

# (speedup.csv name, cells.csv column): the three times a cache can change.
SPEEDUP_METRICS = (("prefill", "latency.prefill_ms.median"),
                   ("decode", "latency.decode_ms_per_token.median"),
                   ("total", "latency.total_generate_ms.median"))

Loaded = list[tuple[str, dict[str, Any]]]


def _num(value: Any) -> float | None:
    """A finite number or None (NaN and missing both mean 'not measured')."""
    if value is None or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _get(rec: dict[str, Any], dotted: str) -> Any:
    node: Any = rec
    for part in dotted.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node


def load_sorted(record_paths: Sequence[Path]) -> Loaded:
    """(relative name, record) in grid order; two records of one identical cell are an error,
    because every join below would silently pick one."""
    paths = list(record_paths)
    loaded = [(n, load_record(p)) for n, p in zip(relative_names(paths), paths)]
    loaded.sort(key=lambda nr: (cell_sort_key(nr[1]["cell"]), nr[0]))
    seen: dict[str, str] = {}
    for name, rec in loaded:
        ident = cell_identity(rec["cell"])
        if ident in seen:
            raise ValueError(f"two records for one cell: {seen[ident]} and {name}")
        seen[ident] = name
    return loaded


def _column_key(name: str) -> tuple:
    """Schema section order; known columns in CORE_COLUMNS order, the rest alphabetical."""
    known = CORE_COLUMNS.index(name) if name in CORE_COLUMNS else len(CORE_COLUMNS)
    return (*column_sort_key(name)[:2], known, name)


def _frame(rows: list[dict[str, Any]], columns: Sequence[str] | None = None) -> pd.DataFrame:
    """object dtype on the way in keeps Python ints/bools intact (no NaN-forced floats) for
    _tidy_types to type each column once."""
    df = pd.DataFrame(rows, columns=list(columns) if columns is not None else None, dtype=object)
    return _tidy_types(df)


def _tidy_types(df: pd.DataFrame) -> pd.DataFrame:
    """Integer columns with gaps stay integers (Int64), not floats like 1.2e+09."""
    for col in df.columns:
        vals = [v for v in df[col].tolist() if v is not None and not (isinstance(v, float)
                                                                      and math.isnan(v))]
        if not vals:
            continue
        if all(isinstance(v, bool) for v in vals):
            df[col] = df[col].astype("boolean")
        elif all(isinstance(v, int) and not isinstance(v, bool) for v in vals):
            df[col] = df[col].astype("Int64")
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            df[col] = df[col].astype("float64")
    return df


def cells_table(loaded: Loaded) -> pd.DataFrame:
    """One flat row per record, non-ok ones included with empty measurements."""
    rows = [{"record": name, **flatten(rec)} for name, rec in loaded]
    df = _frame(rows)
    for col in CORE_COLUMNS:
        if col not in df.columns:
            df[col] = None
    # A section that is null in one record and filled in another flattens to both "latency"
    # and "latency.*"; the bare one carries nothing.
    names = set(df.columns)
    bare = [c for c in names if any(o.startswith(c + ".") for o in names) and df[c].isna().all()]
    df = df.drop(columns=bare)
    return df[sorted(df.columns, key=_column_key)].reset_index(drop=True)


def per_step_table(loaded: Loaded) -> pd.DataFrame:
    """Long format: one row per decode step of each ok record.

    Step s (1-based) leaves prompt_len + s tokens in the cache; the record's formula bytes are
    for the final prompt_len + new_tokens - 1 tokens (the last token is never fed back).
    """
    rows: list[dict[str, Any]] = []
    for name, rec in loaded:
        steps = _get(rec, "latency.per_step_decode_ms") or []
        if rec["status"] != "ok" or not steps:
            continue
        cell = rec["cell"]
        total_tokens = cell["prompt_len"] + cell["new_tokens"] - 1
        formula = _get(rec, "memory.kv_cache_bytes_formula")
        for step, ms in enumerate(steps, start=1):
            ctx = cell["prompt_len"] + step
            kv = None if formula is None else round(formula * ctx / total_tokens)
            rows.append({"record": name, **{f"cell.{k}": cell.get(k) for k in CELL_KEYS},
                         "step": step, "context_tokens": ctx, "decode_ms": ms,
                         "kv_cache_bytes": kv, "kv_cache_mib": None if kv is None else kv / MIB})
    cols = ["record", *CELL_COLUMNS, "step", "context_tokens", "decode_ms", "kv_cache_bytes",
            "kv_cache_mib"]
    return _frame(rows, cols)


def peak_memory(rec: dict[str, Any]) -> tuple[int | None, str | None]:
    """Torch's peak allocation on a GPU; the process RSS peak where torch reports none (CPU;
    a 0 from torch there means 'not tracked', not 'no memory')."""
    for key, source in (("torch_peak_allocated_bytes", "torch_peak_allocated"),
                        ("rss_peak_bytes", "rss_peak")):
        value = _get(rec, f"memory.{key}")
        if value is not None and value > 0:
            return value, source
    return None, None


def _sig(value: Any, digits: int = 6) -> float | None:
    """Round to significant digits: the per-mode tables are for reading, cells.csv is exact."""
    f = _num(value)
    return None if f is None else float(f"{f:.{digits}g}")


def sweep_table(loaded: Loaded, kv_mode: str) -> pd.DataFrame:
    """Write-up 001's per-mode table, with non-ok cells kept as rows with a status; floats to
    6 significant digits."""
    rows = []
    for _, rec in loaded:
        cell = rec["cell"]
        if cell["kv_mode"] != kv_mode:
            continue
        peak, source = peak_memory(rec)
        kv = _get(rec, "memory.kv_cache_bytes_formula")
        rows.append({
            "model": cell["model"], "dtype": cell["dtype"], "attention": cell["attention"],
            "new_tokens": cell["new_tokens"], "batch": cell["batch"],
            "prompt_len": cell["prompt_len"], "status": rec["status"],
            "prefill_ms": _sig(_get(rec, "latency.prefill_ms.median")),
            "decode_ms_per_token": _sig(_get(rec, "latency.decode_ms_per_token.median")),
            "decode_tokens_per_s": _sig(_get(rec, "latency.decode_tokens_per_s")),
            "total_generate_ms": _sig(_get(rec, "latency.total_generate_ms.median")),
            "peak_memory_mib": None if peak is None else _sig(peak / MIB),
            "peak_memory_source": source,
            "kv_cache_mib": None if kv is None else _sig(kv / MIB),
        })
    cols = ["model", "dtype", "attention", "new_tokens", "batch", "prompt_len", "status",
            "prefill_ms", "decode_ms_per_token", "decode_tokens_per_s", "total_generate_ms",
            "peak_memory_mib", "peak_memory_source", "kv_cache_mib"]
    return _frame(rows, cols)


def _pairs(loaded: Loaded) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(name, cached record, its ``none`` record) for every cached cell whose ``none`` partner,
    with every other cell setting equal, is in the sweep."""
    nones = [rec for _, rec in loaded if rec["cell"]["kv_mode"] == "none"]
    baseline = {cell_identity(rec["cell"], drop=("kv_mode",)): rec for rec in nones}
    # A compiled cached cell with no compiled `none` beside it is measured against the eager one
    # (a sweep may compile only its static cells).
    eager = {cell_identity(rec["cell"], drop=("kv_mode", "compile")): rec
             for rec in nones if not rec["cell"].get("compile")}
    out = []
    for name, rec in loaded:
        cell = rec["cell"]
        ref = (baseline.get(cell_identity(cell, drop=("kv_mode",)))
               or eager.get(cell_identity(cell, drop=("kv_mode", "compile"))))
        if cell["kv_mode"] != "none" and ref is not None:
            out.append((name, rec, ref))
    return out


def _ratio(rec: dict[str, Any], ref: dict[str, Any], col: str
           ) -> tuple[float | None, float | None, float | None]:
    """(mode value, none value, none / mode) of one column; None where a side is not ok."""
    mode_v = _num(_get(rec, col)) if rec["status"] == "ok" else None
    none_v = _num(_get(ref, col)) if ref["status"] == "ok" else None
    return mode_v, none_v, (none_v / mode_v if mode_v and none_v is not None else None)


def speedup_table(loaded: Loaded) -> pd.DataFrame:
    """Each cached mode against ``none`` with every other cell setting equal; = none_ms / mode_ms.

    A pair where either side is not ok keeps its row (statuses say why) with empty speedups, so
    the heatmap can mark it instead of leaving a silent hole.
    """
    rows = []
    for name, rec, ref in _pairs(loaded):
        cell = rec["cell"]
        row: dict[str, Any] = {"record": name, **{f"cell.{k}": cell.get(k) for k in CELL_KEYS},
                               "status": rec["status"], "none_status": ref["status"]}
        for metric, col in SPEEDUP_METRICS:
            mode_ms, none_ms, ratio = _ratio(rec, ref, col)
            row[f"{metric}_ms"] = mode_ms
            row[f"none_{metric}_ms"] = none_ms
            row[f"{metric}_speedup"] = ratio
        rows.append(row)
    cols = ["record", *CELL_COLUMNS, "status", "none_status"]
    for metric, _ in SPEEDUP_METRICS:
        cols += [f"{metric}_ms", f"none_{metric}_ms", f"{metric}_speedup"]
    return _frame(rows, cols)


# ----------------------------------------------------------------- speedup by model and length

# speedup_by_model.csv and speedup_by_length.csv share these columns (write-ups 003 and 002):
# the whole generation in seconds as the write-ups timed it, and per decode token.
AXIS_SPEEDUP_COLUMNS = (
    "record", "model", "n_params", "n_layer", "dtype", "attention", "n_kv_head", "batch",
    "prompt_len", "new_tokens", "kv_mode", "status", "none_status",
    "none_total_s", "total_s", "total_speedup",
    "none_decode_ms_per_token", "decode_ms_per_token", "decode_speedup")


def _info(recs: Sequence[dict[str, Any]], key: str) -> Any:
    """A model_info value from the first record that has one."""
    for rec in recs:
        value = _get(rec, f"model_info.{key}")
        if value is not None:
            return value
    return None


def effective_kv_heads(cell: dict[str, Any], *recs: dict[str, Any]) -> int | None:
    """K/V heads actually used: the cell's n_kv_head, else the model's (null = n_head)."""
    if cell.get("n_kv_head") is not None:
        return cell["n_kv_head"]
    return _info(recs, "n_kv_head") or _info(recs, "n_head")


def _described(loaded: Loaded) -> Callable[[dict[str, Any]], list[dict[str, Any]]]:
    """cell -> [a record of the same model (name, n_kv_head, checkpoint) that has model_info]:
    a cell that failed before its model was built still gets its shape from a sibling."""
    first: dict[str, dict[str, Any]] = {}
    for _, rec in loaded:
        c = rec["cell"]
        key = json.dumps([c.get("model"), c.get("n_kv_head"), c.get("checkpoint")], default=str)
        if rec.get("model_info") and key not in first:
            first[key] = rec

    def lookup(cell: dict[str, Any]) -> list[dict[str, Any]]:
        key = json.dumps([cell.get("model"), cell.get("n_kv_head"), cell.get("checkpoint")],
                         default=str)
        return [first[key]] if key in first else []
    return lookup


def model_order(loaded: Loaded) -> dict[str, tuple]:
    """Sort key per model name: by its parameter count (the largest any record reports, so a
    grouped-query variant does not reorder it), models no record describes last, by name."""
    params: dict[str, int] = {}
    for _, rec in loaded:
        n = _get(rec, "model_info.n_params")
        model = str(rec["cell"]["model"])
        if n is not None:
            params[model] = max(params.get(model, 0), int(n))
        else:
            params.setdefault(model, 0)
    return {m: ((0, params[m], m) if params[m] else (1, 0, m)) for m in params}


def _kv_heads_key(cell: dict[str, Any]) -> tuple:
    """The cell's n_kv_head setting: unset (plain multi-head) first, then ascending."""
    n = cell.get("n_kv_head")
    return (0, 0) if n is None else (1, int(n))


def _axis_speedup_rows(loaded: Loaded) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(cached cell, row) per none/cached pair, in AXIS_SPEEDUP_COLUMNS. ``n_kv_head`` is the
    cell's setting (empty: as many K/V heads as query heads), so rows of different models at
    one setting line up."""
    sibling = _described(loaded)
    out = []
    for name, rec, ref in _pairs(loaded):
        cell = rec["cell"]
        described = (rec, ref, *sibling(cell))
        total, none_total, total_speedup = _ratio(rec, ref, "latency.total_generate_ms.median")
        decode, none_decode, decode_speedup = _ratio(rec, ref,
                                                     "latency.decode_ms_per_token.median")
        out.append((cell, {
            "record": name, "model": cell["model"], "n_params": _info(described, "n_params"),
            "n_layer": _info(described, "n_layer"), "dtype": cell["dtype"],
            "attention": cell["attention"], "n_kv_head": cell.get("n_kv_head"),
            "batch": cell["batch"], "prompt_len": cell["prompt_len"],
            "new_tokens": cell["new_tokens"], "kv_mode": cell["kv_mode"],
            "status": rec["status"], "none_status": ref["status"],
            "none_total_s": None if none_total is None else none_total / 1000.0,
            "total_s": None if total is None else total / 1000.0,
            "total_speedup": total_speedup,  # from the ms values: exactly speedup.csv's
            "none_decode_ms_per_token": none_decode, "decode_ms_per_token": decode,
            "decode_speedup": decode_speedup}))
    return out


def speedup_by_model_table(loaded: Loaded) -> pd.DataFrame | None:
    """Write-up 003's table: none vs each cached mode per model (ordered by parameter count),
    every other setting equal. None when the sweep has fewer than two models to compare."""
    pairs = _axis_speedup_rows(loaded)
    if len({row["model"] for _, row in pairs}) < 2:
        return None
    rank = model_order(loaded)
    pairs.sort(key=lambda cr: (str(cr[0]["dtype"]), str(cr[0]["attention"]),
                               _kv_heads_key(cr[0]), cr[0]["batch"], cr[0]["prompt_len"],
                               cr[0]["new_tokens"], rank[str(cr[0]["model"])],
                               cell_sort_key(cr[0])))
    return _frame([row for _, row in pairs], AXIS_SPEEDUP_COLUMNS)


def speedup_by_length_table(loaded: Loaded) -> pd.DataFrame | None:
    """Write-up 002's claim: speedup vs generated tokens, total and per decode token. None when
    the sweep has a single ``new_tokens``."""
    pairs = _axis_speedup_rows(loaded)
    if len({row["new_tokens"] for _, row in pairs}) < 2:
        return None
    rank = model_order(loaded)
    pairs.sort(key=lambda cr: (rank[str(cr[0]["model"])], str(cr[0]["dtype"]),
                               str(cr[0]["attention"]), _kv_heads_key(cr[0]), cr[0]["batch"],
                               cr[0]["prompt_len"],
                               KV_MODE_ORDER.index(cr[0]["kv_mode"])
                               if cr[0]["kv_mode"] in KV_MODE_ORDER else 99,
                               cr[0]["new_tokens"], cell_sort_key(cr[0])))
    return _frame([row for _, row in pairs], AXIS_SPEEDUP_COLUMNS)


# ----------------------------------------------------------------- KV variants (GQA, int8)

KV_VARIANT_COLUMNS = (
    "record", "model", "dtype", "attention", "batch", "prompt_len", "new_tokens", "n_head",
    "n_kv_head", "kv_mode", "status", "kv_cache_bytes_formula", "kv_cache_bytes_measured",
    "kv_cache_mib", "weights_bytes", "decode_ms_per_token", "decode_tokens_per_s",
    "none_decode_ms_per_token", "decode_speedup", "max_logit_diff", "first_mismatch_step",
    "matches_reference")


def is_kv_variant(cell: dict[str, Any]) -> bool:
    """Write-up 002's extensions: an int8 cache or fewer K/V heads than query heads."""
    return cell.get("kv_mode") == "static-int8" or cell.get("n_kv_head") is not None


def kv_variants_table(loaded: Loaded) -> pd.DataFrame | None:
    """One row per cell, kv_mode x n_kv_head side by side at equal other settings: cache bytes,
    decode speed, and the logit error against ``none`` each costs. None when the sweep has no
    variant (no static-int8 cell and no n_kv_head set)."""
    if not any(is_kv_variant(rec["cell"]) for _, rec in loaded):
        return None
    baseline = {cell_identity(rec["cell"], drop=("kv_mode",)): rec
                for _, rec in loaded if rec["cell"]["kv_mode"] == "none"}
    rank = model_order(loaded)
    sibling = _described(loaded)
    rows = []
    for name, rec in loaded:
        cell = rec["cell"]
        ref = baseline.get(cell_identity(cell, drop=("kv_mode",)))
        described = (rec, *sibling(cell))
        ok = rec["status"] == "ok"
        formula = _get(rec, "memory.kv_cache_bytes_formula")
        decode = _num(_get(rec, "latency.decode_ms_per_token.median")) if ok else None
        none_decode = speedup = None
        if ref is not None and cell["kv_mode"] != "none":
            _, none_decode, speedup = _ratio(rec, ref, "latency.decode_ms_per_token.median")
        rows.append((cell, {
            "record": name, "model": cell["model"], "dtype": cell["dtype"],
            "attention": cell["attention"], "batch": cell["batch"],
            "prompt_len": cell["prompt_len"], "new_tokens": cell["new_tokens"],
            "n_head": _info(described, "n_head"),
            "n_kv_head": effective_kv_heads(cell, *described),
            "kv_mode": cell["kv_mode"], "status": rec["status"],
            "kv_cache_bytes_formula": formula,
            "kv_cache_bytes_measured": _get(rec, "memory.kv_cache_bytes_measured"),
            "kv_cache_mib": None if formula is None else formula / MIB,
            "weights_bytes": _get(rec, "memory.weights_bytes"),
            "decode_ms_per_token": decode,
            "decode_tokens_per_s": _num(_get(rec, "latency.decode_tokens_per_s")) if ok else None,
            "none_decode_ms_per_token": none_decode, "decode_speedup": speedup,
            "max_logit_diff": _num(_get(rec, "check.max_logit_diff")),
            "first_mismatch_step": _get(rec, "check.first_mismatch_step"),
            "matches_reference": _get(rec, "check.matches_reference")}))
    rows.sort(key=lambda cr: (rank[str(cr[0]["model"])], str(cr[0]["dtype"]),
                              str(cr[0]["attention"]), cr[0]["batch"], cr[0]["prompt_len"],
                              cr[0]["new_tokens"], _kv_heads_key(cr[0]),
                              cell_sort_key(cr[0])))
    return _frame([row for _, row in rows], KV_VARIANT_COLUMNS)


def _fmt(value: Any, spec: str = ".3f") -> str:
    f = _num(value)
    return "–" if f is None else format(f, spec)


def _where(cell: dict[str, Any], varying: list[str]) -> str:
    return ", ".join(f"{k}={cell.get(k)}" for k in varying)


def summary_markdown(loaded: Loaded, speedup: pd.DataFrame, sweep: str | None) -> str:
    """A page a person reads first: what ran, what failed, the headline numbers."""
    cells = [rec["cell"] for _, rec in loaded]
    # Name a cell by the settings that actually vary in this sweep, plus the grid's main axes.
    varying = [k for k in CELL_KEYS if k not in ("kv_mode", "batch", "prompt_len")
               and len({str(c.get(k)) for c in cells}) > 1] + ["batch", "prompt_len"]
    statuses = Counter(rec["status"] for _, rec in loaded)
    status_text = ", ".join(f"{s} {statuses[s]}" for s in sorted(
        statuses, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s)))
    # the accelerator's name; on a CPU run (no device_name) the CPU's, as publish names it
    devices = sorted({str(_get(rec, "environment.device_name") or _get(rec, "environment.cpu")
                          or rec["cell"].get("device")) for _, rec in loaded})
    lines = [f"# kvbench summary{f': {sweep}' if sweep else ''}", "",
             f"- records: {len(loaded)} ({status_text or 'none'})",
             f"- device: {', '.join(devices) or '–'}"]
    for key in ("model", "dtype", "attention", "new_tokens"):
        lines.append(f"- {key}: {', '.join(sorted({str(c.get(key)) for c in cells})) or '–'}")
    modes = sorted({c["kv_mode"] for c in cells}, key=lambda m: (
        KV_MODE_ORDER.index(m) if m in KV_MODE_ORDER else 99, m))
    lines += ["", "## Decode latency per kv mode (ok cells; median ms per decode step)", "",
              "| kv_mode | ok cells | fastest ms/token | at | slowest ms/token | at "
              "| best tokens/s (batch total) |",
              "|---|---|---|---|---|---|---|"]
    for mode in modes:
        ok = [rec for _, rec in loaded if rec["cell"]["kv_mode"] == mode and rec["status"] == "ok"
              and _num(_get(rec, "latency.decode_ms_per_token.median")) is not None]
        if not ok:
            lines.append(f"| {mode} | 0 | – | – | – | – | – |")
            continue
        def by_decode(r: dict[str, Any]) -> tuple:
            return (_get(r, "latency.decode_ms_per_token.median"), cell_sort_key(r["cell"]))

        fast, slow = min(ok, key=by_decode), max(ok, key=by_decode)
        best_tps = max(_num(_get(r, "latency.decode_tokens_per_s")) or 0.0 for r in ok)
        lines.append(
            f"| {mode} | {len(ok)} | {_fmt(_get(fast, 'latency.decode_ms_per_token.median'))} "
            f"| {_where(fast['cell'], varying)} "
            f"| {_fmt(_get(slow, 'latency.decode_ms_per_token.median'))} "
            f"| {_where(slow['cell'], varying)} | {_fmt(best_tps, '.1f')} |")
    lines += ["", "## Speedup vs `none` (none_ms / mode_ms, same cell otherwise)", ""]
    ok_speed = speedup.dropna(subset=["decode_speedup"]) if len(speedup) else speedup
    if len(ok_speed) == 0:
        lines.append("No cached cell has an ok `none` cell to compare with.")
    else:
        lines += ["| kv_mode | pairs | best decode speedup | at | median decode speedup "
                  "| best total speedup |", "|---|---|---|---|---|---|"]
        for mode in [m for m in modes if m != "none"]:
            sub = ok_speed[ok_speed["cell.kv_mode"] == mode]
            if len(sub) == 0:
                continue
            best = sub.loc[sub["decode_speedup"].astype(float).idxmax()]
            at = _where({k: best[f"cell.{k}"] for k in CELL_KEYS}, varying)
            lines.append(f"| {mode} | {len(sub)} | {_fmt(best['decode_speedup'], '.2f')}× "
                         f"| {at} | {_fmt(sub['decode_speedup'].astype(float).median(), '.2f')}× "
                         f"| {_fmt(sub['total_speedup'].astype(float).max(), '.2f')}× |")
        best = ok_speed.loc[ok_speed["decode_speedup"].astype(float).idxmax()]
        lines += ["", f"Best decode speedup: **{_fmt(best['decode_speedup'], '.2f')}×** "
                  f"({best['cell.kv_mode']} vs none at "
                  f"{_where({k: best[f'cell.{k}'] for k in CELL_KEYS}, varying)}: "
                  f"{_fmt(best['decode_ms'])} vs {_fmt(best['none_decode_ms'])} ms/token)."]
    mismatched = [(n, r) for n, r in loaded if _get(r, "check.matches_reference") is False]
    if mismatched:
        lines += ["", "## Greedy tokens differ from `none`", ""]
        lines += [f"- {r['cell']['kv_mode']}: {_where(r['cell'], varying)} "
                  f"(first mismatch step {_get(r, 'check.first_mismatch_step')})"
                  for _, r in mismatched]
    bad = [(n, r) for n, r in loaded if r["status"] != "ok"]
    lines += ["", "## Cells not measured (oom, unsupported, error)", ""]
    if not bad:
        lines.append("None: every cell is ok.")
    else:
        lines += ["| status | kv_mode | cell | message |", "|---|---|---|---|"]
        for _, r in sorted(bad, key=lambda nr: (STATUS_ORDER.index(nr[1]["status"])
                                                 if nr[1]["status"] in STATUS_ORDER else 99,
                                                 cell_sort_key(nr[1]["cell"]))):
            msg = " ".join(str(r.get("error") or "").split())[:160].replace("|", "\\|")
            lines.append(f"| {r['status']} | {r['cell']['kv_mode']} "
                         f"| {_where(r['cell'], varying)} | {msg} |")
    return "\n".join(lines) + "\n"


def _csv(df: pd.DataFrame) -> str:
    buf = io.StringIO()
    df.to_csv(buf, **CSV_OPTS)
    return buf.getvalue()


# Tables written only when the sweep varies their axis; otherwise an older copy is removed.
OPTIONAL_TABLES = {"speedup_by_model.csv": speedup_by_model_table,
                   "speedup_by_length.csv": speedup_by_length_table,
                   "kv_variants.csv": kv_variants_table}


def aggregate(record_paths: list[Path], out_dir: Path) -> None:
    """Write every table of one sweep into ``out_dir`` (old sweep_kv_* files of modes no longer
    present, and optional tables whose axis the sweep no longer varies, are removed, so the
    folder never mixes runs)."""
    paths = [Path(p) for p in record_paths]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    loaded = load_sorted(paths)
    speedup = speedup_table(loaded)
    modes = sorted({rec["cell"]["kv_mode"] for _, rec in loaded})
    tables = {"cells.csv": _csv(cells_table(loaded)), "per_step.csv": _csv(per_step_table(loaded)),
              "speedup.csv": _csv(speedup)}
    tables.update({f"sweep_kv_{m}.csv": _csv(sweep_table(loaded, m)) for m in modes})
    for name, build in OPTIONAL_TABLES.items():
        table = build(loaded)
        if table is not None:
            tables[name] = _csv(table)
    tables["summary.md"] = summary_markdown(loaded, speedup, sweep_name(paths))
    stale = [*out_dir.glob("sweep_kv_*.csv"), *(out_dir / n for n in OPTIONAL_TABLES)]
    for path in stale:
        if path.name not in tables:
            path.unlink(missing_ok=True)
    for name, text in tables.items():
        atomic_write_text(out_dir / name, text)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvbench aggregate",
        description="Aggregate kvbench cell records into CSV tables and summary.md.")
    parser.add_argument("--records", nargs="+", required=True, type=Path,
                        help="record files, or directories searched recursively for *.json")
    parser.add_argument("--out", required=True, type=Path, help="tables directory to write")
    args = parser.parse_args(argv)
    try:
        files = find_record_files(args.records)
        if not files:
            parser.error(f"no *.json records under {' '.join(map(str, args.records))}")
        aggregate(files, args.out)
    except (ValueError, FileNotFoundError) as exc:
        print(f"aggregate: error: {exc}", file=sys.stderr)
        return 1
    print(f"aggregate: {len(files)} records -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
