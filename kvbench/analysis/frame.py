"""Records -> one flat, typed DataFrame with every derived column computed once.

`from_records` (the aggregate) and `read_cells` (figures and explain, from cells.csv) give the
same frame: one row per record, columns named by their dotted path in the record
(`latency.decode_ms_per_token.median`), typed by the record schema, with kv modes, statuses and
models as ordered Categoricals (models by parameter count) and the derived columns below. Every
table and figure is a selection of this frame; `pairs` joins each cached cell to its `none`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pandas as pd

from kvbench import record as kvrecord
from kvbench.kv_cache import kv_cache_bytes

MIB = 2**20
KV_MODE_ORDER = ("none", "concat", "static", "static-int8")
STATUS_ORDER = ("ok", "oom", "unsupported", "error")
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Cell keys in the order a person reads a cell; the first ones are the grid coordinates.
CELL_KEYS = (
    "model",
    "dtype",
    "attention",
    "kv_mode",
    "batch",
    "prompt_len",
    "new_tokens",
    "device",
    "prompt_source",
    "seed",
    "warmup",
    "iters",
    "engine",
    "n_kv_head",
    "compile",
    "checkpoint",
    "check_steps",
)
CELL = tuple(f"cell.{k}" for k in CELL_KEYS)
SECTIONS = (
    "schema_version",
    "status",
    "error",
    "created_utc",
    "cell",
    "model_info",
    "latency",
    "memory",
    "energy",
    "analytic",
    "check",
    "environment",
)
_STATS = ("median", "min", "max")
# cells.csv always has these (in this order, after the cell keys), filled or not.
CORE = (
    ("record", "status", "error")
    + CELL
    + tuple(f"latency.{m}.{s}" for m in ("prefill_ms", "decode_ms_per_token", "total_generate_ms") for s in _STATS)
    + ("latency.decode_tokens_per_s", "latency.decode_steps")
    + tuple(
        f"memory.{k}"
        for k in (
            "torch_peak_allocated_bytes",
            "torch_peak_reserved_bytes",
            "prefill_peak_allocated_bytes",
            "decode_peak_allocated_bytes",
            "nvml_peak_used_bytes",
            "rss_peak_bytes",
            "weights_bytes",
            "kv_cache_bytes_formula",
            "kv_cache_bytes_measured",
        )
    )
    + (
        "energy.decode_joules_per_token",
        "energy.method",
        "analytic.decode_flops_per_token",
        "analytic.decode_bytes_per_token",
        "analytic.floor_ms_per_token",
        "analytic.fraction_of_floor",
        "check.tokens_sha256",
        "check.matches_reference",
        "environment.device_name",
    )
)
PER_STEP = "latency.per_step_decode_ms"  # a list: per_step.csv carries it in long form
DERIVED = (
    "ident",
    "key",
    "key_eager",
    "n_params",
    "n_layer",
    "n_head",
    "n_embd",
    "n_kv_head",
    "block_size",
    "ok",
    "kv_heads",
    "head_dim",
    "elem_bytes",
    "tokens",
    "kv_formula",
    "peak_bytes",
    "peak_source",
    "kv_held",
    "beyond_bytes",
    "beyond_source",
    "prefill_peak",
)


def _schema_types(node: dict, prefix: str = "") -> dict[str, str]:
    """Dotted path -> 'integer' / 'boolean' for every such leaf of the record schema."""
    out = {}
    for key, sub in node.get("properties", {}).items():
        types = sub.get("type", [])
        types = {types} if isinstance(types, str) else set(types)
        if "object" in types:
            out.update(_schema_types(sub, f"{prefix}{key}."))
        elif types & {"integer", "boolean"}:
            out[f"{prefix}{key}"] = "integer" if "integer" in types else "boolean"
    return out


def typed(df: pd.DataFrame) -> pd.DataFrame:
    """Integers stay integers where a value is missing (Int64: 1 not 1.0), booleans stay booleans."""
    for col, kind in _schema_types(kvrecord.schema()).items():
        if col in df.columns and df[col].notna().any():
            df[col] = df[col].astype("Int64" if kind == "integer" else "boolean")
    return df


def _column_key(name: str) -> tuple:
    head, _, rest = name.partition(".")
    section = -1 if head == "record" else SECTIONS.index(head) if head in SECTIONS else len(SECTIONS)
    inner = CELL_KEYS.index(rest) if head == "cell" and rest in CELL_KEYS else len(CELL_KEYS) if head == "cell" else 0
    return (section, inner, CORE.index(name) if name in CORE else len(CORE), name)


def record_names(paths: list[Path]) -> list[str]:
    """Relative to the sweep's cells/ folder when every record has one (the names the bundle
    stores them under, whatever the working directory), else to the records' common folder."""
    absolute = [Path(os.path.abspath(p)) for p in paths]
    names = []
    for p in absolute:
        idx = [i for i, part in enumerate(p.parts[:-1]) if part == "cells"]
        if not idx:
            root = os.path.commonpath([str(q.parent) for q in absolute])
            return [Path(os.path.relpath(q, root)).as_posix() for q in absolute]
        names.append(Path(*p.parts[idx[-1] + 1 :]).as_posix())
    return names


def sweep_name(paths: list[Path]) -> str | None:
    """The <sweep> of results/<sweep>/cells/... when every record agrees on it."""
    names = set()
    for p in paths:
        parts = Path(os.path.abspath(p)).parts
        idx = [i for i, part in enumerate(parts) if part == "cells"]
        names.add(parts[idx[-1] - 1] if idx and idx[-1] > 0 else None)
    return names.pop() if len(names) == 1 else None


def _as_text(value):
    """A list in a flat row: scalars ';'-joined, anything else as JSON."""
    if not isinstance(value, list):
        return value
    if all(v is None or isinstance(v, (str, int, float, bool)) for v in value):
        return ";".join("" if v is None else str(v) for v in value)
    return json.dumps(value, sort_keys=True)


def from_records(paths: list[Path]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(frame, per_step) of the records; damaged records raise RecordError, all of them named."""
    paths = [Path(p) for p in paths]
    records, problems = [], []
    for p in paths:
        try:
            records.append(kvrecord.load(p))
        except kvrecord.RecordError as exc:
            problems.append(f"{exc}; {kvrecord.REMEDY}")
    if problems:
        raise kvrecord.RecordError("\n".join(problems))
    flat = pd.json_normalize(records) if records else pd.DataFrame()
    flat.insert(0, "record", record_names(paths))
    for col in [c for c in flat.columns if c != PER_STEP and pd.api.types.is_object_dtype(flat[c])]:
        flat[col] = flat[col].map(_as_text)
    # a section null in one record and filled in another flattens to "latency" and "latency.*" too
    bare = [c for c in flat.columns if flat[c].isna().all() and any(o.startswith(c + ".") for o in flat.columns)]
    bare += [c for c in flat.columns if c.startswith(PER_STEP + ".")]
    flat = flat.drop(columns=bare).reindex(columns=sorted(set(flat.columns) - set(bare) | set(CORE), key=_column_key))
    df = derive(typed(flat))
    twins = df[df.duplicated("ident", keep=False)]
    if len(twins):  # every join below would silently pick one
        raise ValueError(f"two records for one cell: {' and '.join(sorted(twins['record']))}")
    return df, per_step(df)


def read_cells(path: Path) -> pd.DataFrame:
    """The frame again from cells.csv (figures and explain run from the tables alone)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no cells table")
    return derive(typed(pd.read_csv(path, dtype={c: object for c in ("cell.checkpoint", "error")})))


def read_table(path: Path) -> pd.DataFrame | None:
    return pd.read_csv(path) if Path(path).is_file() and Path(path).stat().st_size else None


def _ordered(values: pd.Series, order) -> pd.Series:
    present = [v for v in order if v in set(values.dropna())]
    return pd.Categorical(values, categories=present + sorted(set(values.dropna()) - set(present)), ordered=True)


def _num(series: pd.Series) -> pd.Series:
    return pd.to_numeric(series, errors="coerce").astype(float)


def derive(df: pd.DataFrame) -> pd.DataFrame:
    """Orders as Categoricals, the model's shape filled from a sibling record for a cell that
    failed before its model was built, and the derived columns; rows in grid order."""
    df = df.copy()
    for col in CELL + (
        "model_info.n_params",
        "model_info.n_layer",
        "model_info.n_head",
        "model_info.n_embd",
        "model_info.n_kv_head",
        "model_info.block_size",
    ):
        if col not in df.columns:
            df[col] = None
    cell = df[list(CELL)].astype(object).where(df[list(CELL)].notna(), None)
    ident = [
        json.dumps({k: _plain(v) for k, v in zip(CELL_KEYS, row)}, sort_keys=True) for row in cell.itertuples(False)
    ]
    df["ident"] = ident
    df["key"] = [i for i in _drop_keys(cell, ("kv_mode",))]
    df["key_eager"] = [i for i in _drop_keys(cell, ("kv_mode", "compile"))]
    family = pd.Series(
        [
            json.dumps([_plain(v) for v in r], default=str)
            for r in cell[["cell.model", "cell.n_kv_head", "cell.checkpoint"]].itertuples(False)
        ],
        index=df.index,
    )
    for k in ("n_params", "n_layer", "n_head", "n_embd", "n_kv_head", "block_size"):
        df[k] = _num(df[f"model_info.{k}"]).groupby(family).transform("max")
    size = df.groupby(df["cell.model"].astype(str))["n_params"].transform("max")  # the largest a record reports
    models = sorted(
        set(df["cell.model"].astype(str)),
        key=lambda m: (
            (0, float(size[df["cell.model"].astype(str) == m].iloc[0]), m)
            if size[df["cell.model"].astype(str) == m].notna().any()
            else (1, 0.0, m)
        ),
    )
    df["cell.model"] = _ordered(df["cell.model"].astype(str), models)
    df["cell.kv_mode"] = _ordered(df["cell.kv_mode"].astype(str), KV_MODE_ORDER)
    df["status"] = _ordered(df["status"].astype(str), STATUS_ORDER)
    df["ok"] = df["status"] == "ok"
    df["kv_heads"] = _num(df["cell.n_kv_head"]).fillna(df["n_kv_head"]).fillna(df["n_head"])
    df["head_dim"] = df["n_embd"] / df["n_head"]
    df["elem_bytes"] = df["cell.dtype"].map(DTYPE_BYTES)
    df["tokens"] = _num(df["cell.prompt_len"]) + _num(df["cell.new_tokens"]) - 1
    df["kv_formula"] = [
        _kv(r)
        for r in df[
            ["n_layer", "cell.batch", "kv_heads", "tokens", "head_dim", "elem_bytes", "cell.kv_mode"]
        ].itertuples(False)
    ]
    mem = {
        k: _num(df.get(f"memory.{k}", pd.Series(np.nan, index=df.index)))
        for k in (
            "torch_peak_allocated_bytes",
            "rss_peak_bytes",
            "prefill_peak_allocated_bytes",
            "decode_peak_allocated_bytes",
            "weights_bytes",
            "kv_cache_bytes_measured",
            "kv_cache_bytes_formula",
        )
    }
    # a 0 from torch on a CPU means 'not tracked', not 'no memory'
    torch_peak, rss = (
        mem["torch_peak_allocated_bytes"].where(lambda s: s > 0),
        mem["rss_peak_bytes"].where(lambda s: s > 0),
    )
    df["peak_bytes"] = torch_peak.fillna(rss)
    df["peak_source"] = np.where(torch_peak.notna(), "torch_peak_allocated", np.where(rss.notna(), "rss_peak", None))
    df["kv_held"] = mem["kv_cache_bytes_measured"].fillna(mem["kv_cache_bytes_formula"])
    # Issue 17: what a cache costs is the allocator's peak beyond the weights; records without the
    # phase peaks fall back to torch's whole-cell peak, then to the process RSS (which includes the runtime).
    phase = pd.concat([mem["prefill_peak_allocated_bytes"], mem["decode_peak_allocated_bytes"]], axis=1).max(axis=1)
    method = df.get("memory.peak_method", pd.Series(None, index=df.index, dtype=object))
    df["beyond_bytes"] = phase.fillna(torch_peak).fillna(rss) - mem["weights_bytes"]
    df["beyond_source"] = np.where(
        phase.notna(),
        method.fillna("allocator peak").astype(str),
        np.where(
            torch_peak.notna(),
            "torch peak (whole cell)",
            np.where(rss.notna(), "process RSS (includes the runtime)", None),
        ),
    )
    df["prefill_peak"] = mem["prefill_peak_allocated_bytes"].where(lambda s: s > 0)
    order = [
        "cell.model",
        "cell.dtype",
        "cell.attention",
        "cell.kv_mode",
        "cell.batch",
        "cell.prompt_len",
        "cell.new_tokens",
        "ident",
        "record",
    ]
    return df.sort_values(
        order, kind="stable", key=lambda s: s.astype(str) if s.name in ("cell.dtype", "cell.attention") else s
    ).reset_index(drop=True)


def x_axis(df: pd.DataFrame) -> str | None:
    """What a sweep varies, as a figure's x: the prompt, else the generation length, else the model
    (by size), else the batch; None when nothing varies (no figure has anything to compare)."""
    for col in ("cell.prompt_len", "cell.new_tokens", "cell.model", "cell.batch"):
        if df[col].nunique() > 1:
            return col
    return None


def _plain(v):
    """One spelling per value for joins: 16 and 16.0 alike (cells.csv reads some ints as floats)."""
    if isinstance(v, (float, np.floating)) and float(v).is_integer():
        return int(v)
    if isinstance(v, (np.integer, np.bool_)):
        return v.item()
    return v


def _drop_keys(cell: pd.DataFrame, drop: tuple[str, ...]):
    keep = [i for i, k in enumerate(CELL_KEYS) if k not in drop]
    for row in cell.itertuples(False):
        yield json.dumps({CELL_KEYS[i]: _plain(row[i]) for i in keep}, sort_keys=True, default=str)


def _kv(row) -> float:
    n_layer, batch, kv_heads, tokens, head_dim, elem, mode = row
    if (
        mode == "none"
        or any(pd.isna(v) for v in (n_layer, kv_heads, head_dim))
        or (pd.isna(elem) and mode != "static-int8")
    ):
        return np.nan
    return float(
        kv_cache_bytes(
            int(n_layer),
            int(batch),
            int(kv_heads),
            int(tokens),
            int(head_dim),
            0 if pd.isna(elem) else int(elem),
            str(mode),
        )
    )


def record_columns(df: pd.DataFrame) -> list[str]:
    """cells.csv: the record's own columns, none derived here."""
    return [c for c in df.columns if c not in DERIVED and c != PER_STEP]


def per_step(df: pd.DataFrame) -> pd.DataFrame:
    """Long format, one row per decode step of each ok record. Step s leaves prompt_len + s tokens
    in the cache; the record's formula bytes are for the final prompt_len + new_tokens - 1."""
    long = df[list(("record",) + CELL)].assign(
        decode_ms=df.get(PER_STEP, pd.Series(None, index=df.index, dtype=object)).where(df["ok"]),
        formula=df["memory.kv_cache_bytes_formula"],
        tokens=df["tokens"],
    )
    long = long[long["decode_ms"].map(lambda v: isinstance(v, list) and len(v) > 0)].explode("decode_ms")
    long["step"] = long.groupby(level=0).cumcount() + 1
    long["context_tokens"] = long["cell.prompt_len"].astype("Int64") + long["step"]
    kv = [
        None if pd.isna(f) else round(f * c / t)
        for f, c, t in zip(long["formula"], long["context_tokens"], long["tokens"])
    ]
    long["kv_cache_bytes"] = pd.array(kv, dtype="Int64")
    long["kv_cache_mib"] = long["kv_cache_bytes"].astype(float) / MIB
    long["decode_ms"] = long["decode_ms"].astype(float)
    cols = ["record", *CELL, "step", "context_tokens", "decode_ms", "kv_cache_bytes", "kv_cache_mib"]
    return long[cols].reset_index(drop=True)


def pairs(df: pd.DataFrame) -> pd.DataFrame:
    """Each cached cell beside its `none` cell (every other setting equal), columns of the latter
    suffixed `_none`; a compiled cached cell with no compiled `none` is paired with the eager one."""
    cached, none = df[df["cell.kv_mode"] != "none"], df[df["cell.kv_mode"] == "none"]
    exact = cached.merge(none, on="key", suffixes=("", "_none"))
    eager = none[~none["cell.compile"].fillna(False).astype(bool)]
    rest = cached[~cached["key"].isin(exact["key"])].merge(
        eager.drop(columns="key"), on="key_eager", suffixes=("", "_none")
    )
    both = pd.concat([exact, rest]) if len(rest) else exact
    return both.set_index("ident").reindex([i for i in cached["ident"] if i in set(both["ident"])]).reset_index()


def ratio(p: pd.DataFrame, col: str) -> tuple[pd.Series, pd.Series, pd.Series]:
    """(mode value, none value, none / mode) of one column; empty where a side is not ok."""
    mode, none = _num(p[col]).where(p["ok"]), _num(p[f"{col}_none"]).where(p["ok_none"].astype(bool))
    return mode, none, none / mode.where(mode != 0)
