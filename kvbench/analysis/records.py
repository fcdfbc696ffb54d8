"""Finding, loading, ordering and flattening cell records (workflow/schemas/record.schema.json)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

SCHEMA_VERSION = 1

# Top-level sections in schema order; used to order flat columns.
SECTIONS = ("schema_version", "status", "error", "created_utc", "cell", "model_info", "latency",
            "memory", "energy", "analytic", "check", "environment")
REQUIRED = frozenset(SECTIONS)

# Cell keys in the order a person reads a cell; the first ones are the grid coordinates.
CELL_KEYS = ("model", "dtype", "attention", "kv_mode", "batch", "prompt_len", "new_tokens",
             "device", "prompt_source", "seed", "warmup", "iters", "engine", "n_kv_head",
             "compile", "checkpoint", "check_steps")

# Fixed order of kv modes: the uncached baseline first, then the caches by sophistication.
KV_MODE_ORDER = ("none", "concat", "static", "static-int8")
STATUS_ORDER = ("ok", "oom", "unsupported", "error")

# The write-ups' claims (shared/seeds/00N_*.txt), which explain.py sets beside the measurements
# and figures.py draws in grey.
WRITEUP_000_SPEEDUP = 2.8              # "~2.8x speed-up on CPU" (GPT-2 small)
WRITEUP_000_MB_PER_TOKEN = 0.07        # "cache grows linearly (~0.07 MB per token)"
WRITEUP_002_LENGTH = {20: (2.0, 3.0), 50: (5.0, 7.0), 100: (10.0, 15.0), 500: (30.0, 50.0)}
WRITEUP_002_MB_PER_1000 = 3.0          # "1000 tokens: ~3 MB per sample", fp16, GPT-2
WRITEUP_002_MB_PER_100 = 0.3           # "100 tokens: ~0.3 MB per sample"
WRITEUP_003_MODEL = {"gpt2": 2.44, "gpt2-medium": 2.82, "gpt2-large": 4.24}  # T4, total time
WRITEUP_004_ESTIMATED = 6.7            # 100.7 tok/s measured vs ~15 tok/s estimated

# Lists that would make a flat row unreadable; per_step.csv carries this one in long form.
DROPPED_FROM_FLAT = frozenset({"latency.per_step_decode_ms"})


def find_record_files(paths: Iterable[Path]) -> list[Path]:
    """Files as given, directories searched recursively for ``*.json``; sorted, unique."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(q for q in p.rglob("*.json") if q.is_file() and not q.name.startswith("."))
        elif p.is_file():
            found.add(p)
        else:
            raise FileNotFoundError(f"no such record file or directory: {p}")
    return sorted(found, key=lambda q: q.as_posix())


def load_record(path: Path) -> dict[str, Any]:
    """Parse one record, failing with the file's name rather than deep inside pandas."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{path}: not a readable JSON record: {exc}") from exc
    if not isinstance(rec, dict):
        raise ValueError(f"{path}: a record is a JSON object, got {type(rec).__name__}")
    missing = sorted(REQUIRED - rec.keys())
    if missing:
        raise ValueError(f"{path}: not a kvbench record, missing keys {missing}")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {rec['schema_version']!r}, "
                         f"this analysis reads {SCHEMA_VERSION}")
    return rec


def relative_names(paths: list[Path]) -> list[str]:
    """Names that do not depend on the working directory: relative to the sweep's ``cells/``
    folder when every record has one (the names the bundle stores them under, and stable when
    a sweep grows), else relative to the records' common folder."""
    if not paths:
        return []
    absolute = [Path(os.path.abspath(p)) for p in paths]
    names = []
    for p in absolute:
        idx = [i for i, part in enumerate(p.parts[:-1]) if part == "cells"]
        if not idx:
            break
        names.append(Path(*p.parts[idx[-1] + 1:]).as_posix())
    else:
        return names
    root = os.path.commonpath([str(p.parent) for p in absolute])
    return [Path(os.path.relpath(p, root)).as_posix() for p in absolute]


def sweep_name(paths: list[Path]) -> str | None:
    """The ``<sweep>`` of ``results/<sweep>/cells/...`` when every record agrees on it."""
    names = set()
    for p in paths:
        parts = Path(os.path.abspath(p)).parts
        idx = [i for i, part in enumerate(parts) if part == "cells"]
        names.add(parts[idx[-1] - 1] if idx and idx[-1] > 0 else None)
    return names.pop() if len(names) == 1 else None


def _rank(value: Any, order: tuple[str, ...]) -> int:
    return order.index(value) if value in order else len(order)


def cell_sort_key(cell: Mapping[str, Any]) -> tuple:
    """Grid order: model, dtype, attention, kv mode (baseline first), batch, prompt, new tokens."""
    return (str(cell.get("model")), str(cell.get("dtype")), str(cell.get("attention")),
            _rank(cell.get("kv_mode"), KV_MODE_ORDER), str(cell.get("kv_mode")),
            int(cell.get("batch") or 0), int(cell.get("prompt_len") or 0),
            int(cell.get("new_tokens") or 0), json.dumps(cell, sort_keys=True, default=str))


def cell_identity(cell: Mapping[str, Any], drop: Iterable[str] = ()) -> str:
    """Canonical string of a cell's settings (minus ``drop``), for exact joins; nulls included."""
    dropped = set(drop)
    return json.dumps({k: v for k, v in cell.items() if k not in dropped}, sort_keys=True,
                      default=str)


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> dot-joined keys; scalar lists -> ';'-joined text; other lists -> JSON."""
    out: dict[str, Any] = {}
    for key, value in obj.items():
        name = f"{prefix}{key}"
        if name in DROPPED_FROM_FLAT:
            continue
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        elif isinstance(value, (list, tuple)):
            scalar = all(isinstance(v, (str, int, float, bool)) or v is None for v in value)
            out[name] = (";".join("" if v is None else str(v) for v in value) if scalar
                         else json.dumps(value, sort_keys=True))
        else:
            out[name] = value
    return out


def column_sort_key(name: str) -> tuple:
    """Schema section order, cell keys in CELL_KEYS order, everything else alphabetical."""
    head, _, rest = name.partition(".")
    section = SECTIONS.index(head) if head in SECTIONS else len(SECTIONS)
    if head == "record":
        section = -1
    inner = _rank(rest, CELL_KEYS) if head == "cell" else 0
    return (section, inner, name)
