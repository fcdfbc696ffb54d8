"""Records -> one flat, typed DataFrame with every derived column computed once.

`from_records` (the aggregate) and `read_cells` (figures and explain, from cells.csv) give the
same frame: one row per record, columns named by their dotted path in the record
(`latency.decode_ms_per_token.median`), typed by the record schema, kv modes, statuses and
models as ordered Categoricals (models by parameter count), plus the columns `derive` adds. Every
table and figure is a selection of this frame or of `pairs` (each cached cell beside its `none`).
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from kvbench.analysis import approx_price
from kvbench.core import record as kvrecord
from kvbench.core.presets import BLOCK_TOKENS, DTYPE_BYTES, KV_MODES, kv_cache_bytes

MIB = 2**20
STATUS_ORDER = ("ok", "oom", "unsupported", "error")
# Cell keys in the order a person reads a cell; the first ones are the grid coordinates.
CELL_KEYS = tuple(
    "model dtype attention kv_mode batch prompt_len new_tokens device prompt_source seed warmup iters engine "
    "n_kv_head compile checkpoint check_steps threads prompt_spread shared_prefix block_tokens".split()
)
CELL = tuple(f"cell.{k}" for k in CELL_KEYS)
SCHEMA = kvrecord.schema()
SECTIONS = {name: i for i, name in enumerate(("record", *SCHEMA["properties"]))}  # the columns' order: the record's
STATS = ("median", "min", "max", "std", "n")  # n: the timed iterations the others are over
MEMORY = tuple(k for k, v in SCHEMA["properties"]["memory"]["properties"].items() if "integer" in v.get("type", ()))
# cells.csv always has these (in this order, after the cell keys), filled or not: a failed cell has
# no measurement, a peer engine no phase peaks.
CORE = (
    ("record", "status", "error", *CELL)
    + tuple(f"latency.{m}.{s}" for m in ("prefill_ms", "decode_ms_per_token", "total_generate_ms") for s in STATS)
    + ("latency.decode_tokens_per_s", "latency.decode_steps", *(f"memory.{k}" for k in MEMORY))
    + tuple(
        "energy.decode_joules_per_token energy.method analytic.decode_flops_per_token analytic.decode_bytes_per_token "
        "analytic.floor_ms_per_token analytic.fraction_of_floor analytic.bandwidth_bytes_per_s "
        "analytic.read_bandwidth_bytes_per_s analytic.copy_bandwidth_bytes_per_s check.tokens_sha256 "
        "check.matches_reference environment.device_name".split()
    )
)
PER_STEP = "latency.per_step_decode_ms"  # a list: per_step.csv carries it in long form
SHAPE = ("n_params", "n_layer", "n_head", "n_embd", "n_kv_head", "block_size")
# The columns `derive` adds after the record's own (cells.csv keeps only the latter).
DERIVED = (*SHAPE, "family", "ok", "kv_heads", "head_dim", "elem_bytes", "tokens", "kv_formula", "peak_bytes")
DERIVED += ("peak_source", "kv_held", "beyond_bytes", "beyond_source", "prefill_peak")
# Cells equal in these (every setting but the kv mode) are one setting measured with and without a cache.
SAME = [c for c in CELL if c != "cell.kv_mode"]
# Rows in grid order: the grid coordinates, then the other settings by name.
GRID = [*CELL[:7], *sorted(set(CELL) - set(CELL[:7]))]


def _schema_types(node: dict, prefix: str = "") -> dict[str, str]:
    """Dotted path -> dtype of each integer leaf (Int64: 1 not 1.0 where a value is missing) and boolean leaf."""
    out = {}
    for key, sub in node.get("properties", {}).items():
        sub = SCHEMA["$defs"][sub["$ref"].rsplit("/", 1)[-1]] if "$ref" in sub else sub  # a timing's stats
        types = {sub["type"]} if isinstance(sub.get("type"), str) else set(sub.get("type", []))
        if "object" in types:
            out.update(_schema_types(sub, f"{prefix}{key}."))
        elif types & {"integer", "boolean"}:
            out[f"{prefix}{key}"] = "Int64" if "integer" in types else "boolean"
    return out


TYPES = _schema_types(SCHEMA)


def _cells_dir_parts(path: Path) -> tuple[tuple[str, ...], int | None]:
    parts = Path(os.path.abspath(path)).parts
    return parts, max((i for i, part in enumerate(parts[:-1]) if part == "cells"), default=None)


def record_names(paths: list[Path]) -> list[str]:
    """Relative to the sweep's cells/ folder when every record has one (the names the bundle
    stores them under, whatever the working directory), else to the records' common folder."""
    found = [_cells_dir_parts(p) for p in paths]
    if any(i is None for _, i in found):
        root = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])
        return [Path(os.path.relpath(os.path.abspath(p), root)).as_posix() for p in paths]
    return [Path(*parts[i + 1 :]).as_posix() for parts, i in found]


def sweep_name(paths: list[Path]) -> str | None:
    """The <sweep> of results/<sweep>/cells/... when every record agrees on it."""
    names = {parts[i - 1] if i else None for parts, i in map(_cells_dir_parts, paths)}
    return names.pop() if len(names) == 1 else None


def as_text(value):
    """A list in a flat row: scalars ';'-joined, anything else as JSON."""
    if not isinstance(value, list):
        return value
    if all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
        return ";".join("" if v is None else str(v) for v in value)
    return json.dumps(value, sort_keys=True)


def from_records(paths: list[Path]) -> pd.DataFrame:
    """The frame of the records; damaged records raise RecordError, all of them named."""
    records, problems = [], []
    for p in paths:
        try:
            records.append(kvrecord.load(p))
        except kvrecord.RecordError as exc:
            problems.append(f"{exc}; {kvrecord.REMEDY}")
    if problems:
        raise kvrecord.RecordError("\n".join(problems))
    flat = pd.json_normalize(records)
    flat.insert(0, "record", record_names(paths))
    lists = [c for c in flat.columns if c != PER_STEP and pd.api.types.is_object_dtype(flat[c])]
    flat[lists] = flat[lists].map(as_text)
    # a section null in one record and filled in another flattens to "latency" and "latency.*" too
    bare = [c for c in flat.columns if flat[c].isna().all() and any(o.startswith(c + ".") for o in flat.columns)]
    # a stable sort by section: in each the CORE columns first, in their order, then the rest by name
    keep = [*CORE, *sorted(set(flat.columns) - set(bare) - set(CORE))]
    keep.sort(key=lambda c: SECTIONS.get(c.split(".")[0], len(SECTIONS)))
    df = derive(flat.reindex(columns=keep))
    twins = df[df.duplicated(list(CELL), keep=False)]
    if len(twins):  # every join below would silently pick one
        raise ValueError(f"two records for one cell: {' and '.join(sorted(twins['record']))}")
    return df


# What derive cannot do without: which record, how it ended, and the grid coordinates. (Other CORE
# columns may be missing from a cells.csv written before they existed: derive adds them empty.)
REQUIRED = ("record", "status", *CELL[:7])
AGAIN = "run `kvbench aggregate` again to rewrite it"


def read_table(path: Path, required: tuple[str, ...] = (), **read_csv) -> pd.DataFrame:
    """A table kvbench wrote, checked whole before it is trusted: pandas fills a row cut off mid-way
    with blanks, and a missing column would fail later without a name. TableError names the file,
    the line or the column, and the remedy."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such table")
    text = path.read_text(encoding="utf-8")
    try:
        rows = list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as e:  # e.g. a quoted field the file ends inside
        raise TableError(f"{path}: not a whole CSV table ({e}); {AGAIN}") from None
    if not rows:
        raise TableError(f"{path}: empty (no header); {AGAIN}")
    width = len(rows[0])
    short = next((i for i, row in enumerate(rows[1:], 2) if len(row) != width), None)
    if short is not None or not text.endswith("\n"):  # kvbench ends every line, the last one too
        line = short or len(rows)
        raise TableError(f"{path}: cut off at line {line} (a row of {len(rows[line - 1])} of {width} fields); {AGAIN}")
    if missing := [c for c in required if c not in rows[0]]:
        raise TableError(f"{path}: no column {', '.join(missing)}; {AGAIN}")
    return pd.read_csv(io.StringIO(text), **read_csv)


class TableError(ValueError):
    """A damaged table: one line naming the file and what is wrong."""


def read_cells(path: Path) -> pd.DataFrame:
    """The frame again from cells.csv (figures and explain run from the tables alone)."""
    return derive(read_table(path, REQUIRED, dtype={"cell.checkpoint": object, "error": object}))


def _ordered(values: pd.Series, order) -> pd.Categorical:
    present = [v for v in order if v in set(values)]
    return pd.Categorical(values, categories=present + sorted(set(values) - set(present)), ordered=True)


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Types as the schema says, orders as Categoricals, the model's shape filled from a sibling
    record for a cell that failed before its model was built, and the derived columns (DERIVED);
    rows in grid order."""
    df = df.reindex(columns=list(dict.fromkeys([*df.columns, *CORE])))  # a cells.csv from before a field was added
    df = df.astype({c: kind for c, kind in TYPES.items() if c in df})
    info = df.reindex(columns=[f"model_info.{k}" for k in (*SHAPE, "family")])
    same_model = df[["cell.model", "cell.n_kv_head", "cell.checkpoint"]].astype(object)
    shape = info.groupby([same_model[c] for c in same_model], dropna=False).transform("max")
    df[list(SHAPE)] = shape.iloc[:, : len(SHAPE)].astype("Int64")
    df["family"] = shape.iloc[:, -1]
    size = df.groupby(df["cell.model"].astype(str))["n_params"].max()  # the largest a record reports
    models = size.sort_values(kind="stable", na_position="last").index  # ties by name, as groupby sorted them
    df["cell.model"] = _ordered(df["cell.model"].astype(str), models)
    df["cell.kv_mode"] = _ordered(df["cell.kv_mode"].astype(str), KV_MODES)
    df["status"] = _ordered(df["status"].astype(str), STATUS_ORDER)
    df["ok"] = df["status"] == "ok"
    df["kv_heads"] = df["cell.n_kv_head"].fillna(df["n_kv_head"]).fillna(df["n_head"])
    df["head_dim"] = df["n_embd"] // df["n_head"]
    df["elem_bytes"] = df["cell.dtype"].map(DTYPE_BYTES).astype("Int64")
    df["tokens"] = df["cell.prompt_len"] + df["cell.new_tokens"] - 1  # the last token is never fed back
    dims = (df["n_layer"], df["cell.batch"], df["kv_heads"], df["tokens"], df["head_dim"], df["elem_bytes"])
    mode = df["cell.kv_mode"].astype(str)
    int8 = kv_cache_bytes(*dims, "static-int8")
    df["kv_formula"] = kv_cache_bytes(*dims).mask(mode == "static-int8", int8).where(mode != "none")
    known = mode.isin(approx_price.SETTING_MODES) & pd.concat(dims, axis=1).notna().all(axis=1)
    for i in df.index[known]:  # bytes that depend on the cell's own window, sinks or group size
        df.at[i, "kv_formula"] = approx_price.formula_bytes(df.loc[i])
    paged = (mode == "paged") & pd.concat(dims, axis=1).notna().all(axis=1)
    for i in df.index[paged]:  # the blocks its sequences took, not a static reservation
        df.at[i, "kv_formula"] = paged_bytes(df.loc[i])
    return _memory(df).sort_values([*GRID, "record"], kind="stable").reset_index(drop=True).copy()


def paged_block(r: pd.Series) -> int:
    """A paged cell's positions per block (the default where its record names none)."""
    return int(r["cell.block_tokens"]) if pd.notna(r.get("cell.block_tokens")) else BLOCK_TOKENS


def paged_bytes(r: pd.Series) -> int:
    """A paged cell's KV bytes at its last step: each sequence's tokens (its own prompt length from
    the record, else prompt_len, plus new_tokens - 1) rounded up to whole blocks, a shared prefix's
    full blocks counted once, times the bytes of one position (K and V, every layer and K/V head)."""
    block = paged_block(r)
    shared = int(r["cell.shared_prefix"]) // block if pd.notna(r.get("cell.shared_prefix")) else 0
    lengths = r.get("memory.prompt_lengths")
    lengths = [int(n) for n in str(lengths).split(";")] if pd.notna(lengths) else [int(r["cell.prompt_len"])]
    lengths = lengths * (int(r["cell.batch"]) // len(lengths))  # a rectangular batch's record names no lengths
    final = [n + int(r["cell.new_tokens"]) - 1 for n in lengths]
    blocks = shared + sum(-(-(t - shared * block) // block) for t in final)
    return blocks * block * 2 * int(r["n_layer"]) * int(r["kv_heads"]) * int(r["head_dim"]) * int(r["elem_bytes"])


def _memory(df: pd.DataFrame) -> pd.DataFrame:
    """The peaks: the whole cell's, and beyond the weights (what a cache costs)."""
    mem = {k: df[f"memory.{k}"] for k in MEMORY}
    # a 0 from torch on a CPU means 'not tracked', not 'no memory'
    torch_peak, rss = (mem[k].where(mem[k] > 0) for k in ("torch_peak_allocated_bytes", "rss_peak_bytes"))
    df["peak_bytes"] = torch_peak.fillna(rss)
    df["peak_source"] = np.where(torch_peak.notna(), "torch_peak_allocated", np.where(rss.notna(), "rss_peak", None))
    df["kv_held"] = mem["kv_cache_bytes_measured"].fillna(mem["kv_cache_bytes_formula"])
    # What a cache costs is the peak beyond the weights, from the phase peaks (the CUDA allocator, or
    # the CPU tensor tracker); an engine that reports none falls back to torch's whole-cell peak, then
    # to the process RSS (which includes the runtime).
    phase = pd.concat([mem["prefill_peak_allocated_bytes"], mem["decode_peak_allocated_bytes"]], axis=1).max(axis=1)
    method = df.get("memory.peak_method", pd.Series(None, index=df.index, dtype=object))
    df["beyond_bytes"] = phase.fillna(torch_peak).fillna(rss) - mem["weights_bytes"]
    sources = [method, "torch peak (whole cell)", "process RSS (includes the runtime)"]
    df["beyond_source"] = np.select([phase.notna(), torch_peak.notna(), rss.notna()], sources, None)
    df["prefill_peak"] = mem["prefill_peak_allocated_bytes"].where(mem["prefill_peak_allocated_bytes"] > 0)
    return df


def x_axis(df: pd.DataFrame) -> str | None:
    """What a sweep varies, as a figure's x: the prompt, else the generation length, else the model
    (by size), else the batch, else the CPU threads; None when nothing varies (no figure has anything to compare)."""
    axes = ("cell.prompt_len", "cell.new_tokens", "cell.model", "cell.batch", "cell.threads")
    varied = [c for c in axes if df[c].nunique() > 1]
    return varied[0] if varied else None


def record_columns(df: pd.DataFrame) -> list[str]:
    """cells.csv: the record's own columns, not those `derive` appended."""
    return [c for c in df.columns if c not in DERIVED and c != PER_STEP]


def per_step(df: pd.DataFrame) -> pd.DataFrame:
    """Long format, one row per decode step of each ok record. Step s leaves prompt_len + s tokens
    in the cache; the record's formula bytes are for the final prompt_len + new_tokens - 1 (a paged
    cell's bytes at step s are its record's blocks taken by then, `memory.kv_bytes_reserved_by_step`)."""
    none = pd.Series(None, index=df.index, dtype=object)
    steps = df.get(PER_STEP, none).where(df["ok"])
    blocks = df.get("memory.kv_bytes_reserved_by_step", none).where(df["cell.kv_mode"].astype(str) == "paged")
    long = df[["record", *CELL]].assign(decode_ms=steps, formula=df["memory.kv_cache_bytes_formula"], t=df["tokens"])
    long = long.assign(blocks=blocks)
    long = long[long["decode_ms"].map(lambda v: isinstance(v, list) and len(v) > 0)].explode("decode_ms")
    long["step"] = long.groupby(level=0).cumcount() + 1
    long["context_tokens"] = long["cell.prompt_len"] + long["step"]
    kv = long["formula"].astype(float) * long["context_tokens"].astype(float) / long["t"].astype(float)
    paged = long["blocks"].notna()
    kv[paged] = [float(str(b).split(";")[s]) for b, s in zip(long.loc[paged, "blocks"], long.loc[paged, "step"])]
    long["kv_cache_bytes"] = kv.round().astype("Int64")
    long["kv_cache_mib"] = long["kv_cache_bytes"].astype(float) / MIB
    long["decode_ms"] = long["decode_ms"].astype(float)
    cols = ["record", *CELL, "step", "context_tokens", "decode_ms", "kv_cache_bytes", "kv_cache_mib"]
    return long[cols].reset_index(drop=True)


METRICS = {"prefill": "latency.prefill_ms.median", "decode": "latency.decode_ms_per_token.median"}
METRICS["total"] = "latency.total_generate_ms.median"


def pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Each cached cell beside its `none` cell (every other setting equal, the engine included),
    columns of the latter suffixed `_none`; a compiled cached cell with no compiled `none` is
    paired with the eager one. Adds `<metric>_ms`, `none_<metric>_ms` and `<metric>_speedup`
    (none / cached, empty where a side is not ok) for prefill, decode and total."""
    cached, none = df[df["cell.kv_mode"] != "none"], df[df["cell.kv_mode"] == "none"]
    eager = none[~none["cell.compile"].fillna(False)]
    partner = _partner(cached, none, SAME).fillna(_partner(cached, eager, [c for c in SAME if c != "cell.compile"]))
    cached = cached[partner.notna()].reset_index(drop=True)
    p = pd.concat([cached, df.loc[partner.dropna().astype(int)].add_suffix("_none").reset_index(drop=True)], axis=1)
    new = {"none_status": p["status_none"]}
    for metric, col in METRICS.items():
        mode, base = p[col].astype(float).where(p["ok"]), p[f"{col}_none"].astype(float).where(p["ok_none"])
        new |= {f"{metric}_ms": mode, f"none_{metric}_ms": base, f"{metric}_speedup": base / mode.where(mode != 0)}
    return pd.concat([p, pd.DataFrame(new, index=p.index)], axis=1)


def _partner(left: pd.DataFrame, right: pd.DataFrame, on: list) -> pd.Series:
    """For each row of left, the index of the row of right equal to it in the columns `on` (NaN: none)."""
    found = left[on].merge(right[on].reset_index(names="partner"), on=on, how="left")
    return pd.Series(found["partner"].to_numpy(), index=left.index)
