"""Tables -> explanation.md: what the KV cache did in one sweep, in words, with its numbers.

Write-up 004's point made into a rule: a speedup needs a measured baseline. This document is
generated from the sweep's aggregate tables alone (cells.csv, speedup.csv and, where the sweep
varied them, speedup_by_model.csv, speedup_by_length.csv, kv_variants.csv); every number in it
is read from those tables or computed by a formula written beside it, and a claim the sweep did
not measure says "not measured in this sweep". The same tables give the same bytes.

    kvbench explain --tables results/<sweep>/tables --out results/<sweep>/explanation.md

Nothing here imports torch or matplotlib: it runs wherever the tables are.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kvbench.analysis.atomic import atomic_write_text
from kvbench.analysis.records import (CELL_KEYS, KV_MODE_ORDER, STATUS_ORDER,
                                      WRITEUP_000_MB_PER_TOKEN, WRITEUP_000_SPEEDUP,
                                      WRITEUP_002_LENGTH, WRITEUP_002_MB_PER_100,
                                      WRITEUP_002_MB_PER_1000, WRITEUP_003_MODEL,
                                      WRITEUP_004_ESTIMATED)

# GPT-2 small's shape, as write-up 002 states it (12 layers, 12 heads, head dim 64).
GPT2_LAYERS, GPT2_HEADS, GPT2_HEAD_DIM = 12, 12, 64
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
INT8_SCALE_BYTES = 4  # one fp32 absmax scale per (token, head); as kvbench.kv_cache stores it
MB = 1e6
MIB = 2**20
CELL = tuple(f"cell.{k}" for k in CELL_KEYS)
ABOUT = 0.2  # "about the same" when within +-20 %

TABLES = ("cells.csv", "speedup.csv", "speedup_by_model.csv", "speedup_by_length.csv",
          "kv_variants.csv")


# ----------------------------------------------------------------------------- formatting

def _f(value: Any) -> float | None:
    if value is None or value is pd.NA or isinstance(value, bool):
        return None
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _lab(value: Any) -> str:
    """One spelling per value (16 and 16.0 alike; empty -> 'none')."""
    f = _f(value)
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return "none"
    if f is not None and not isinstance(value, str) and f.is_integer():
        return str(int(f))
    return str(value)


def _num(v: float | None) -> str:
    """A measured number for reading: 3 significant digits, no exponent for ordinary sizes."""
    if v is None:
        return "–"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a == 0:
        return "0"
    return f"{v:.3g}"


def _x(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}×"


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.0f} %"


def _bytes(n: float | None) -> str:
    return "–" if n is None else f"{int(n):,} B"


def _mb(n: float | None) -> str:
    return "–" if n is None else f"{n / MB:.3g} MB"


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def _spread(values: Sequence[float], fmt: Callable[[float | None], str] = _x,
            noun: str = "pairs") -> str:
    """'m' for one value, else 'median m (min–max, n <noun>)'."""
    vals = sorted(values)
    if not vals:
        return "–"
    if len(vals) == 1:
        return fmt(vals[0])
    return (f"median {fmt(statistics.median(vals))} "
            f"({fmt(vals[0])}–{fmt(vals[-1])}, {len(vals)} {noun})")


def _setting(column: str, value: Any) -> str:
    """A setting as the tables spell it; an empty n_kv_head means all heads (plain multi-head)."""
    if column.endswith("n_kv_head") and _f(value) is None:
        return "all"
    return _lab(value)


def _mode_rank(mode: str) -> tuple:
    return (KV_MODE_ORDER.index(mode) if mode in KV_MODE_ORDER else 99, mode)


def _natural(text: str) -> tuple:
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _compare(measured: float, claimed: float) -> str:
    """'about the same' within ABOUT, else higher / lower, by the measured/claimed ratio."""
    r = measured / claimed
    if abs(r - 1) <= ABOUT:
        return "about the same"
    return f"{'higher' if r > 1 else 'lower'} ({r:.2f}× the claim)"


def _range_verdict(v: float, lo: float, hi: float) -> str:
    return "within" if lo <= v <= hi else ("below" if v < lo else "above")


# ----------------------------------------------------------------------------- the tables

def _read(path: Path) -> pd.DataFrame | None:
    if not path.is_file() or path.stat().st_size == 0:
        return None
    df = pd.read_csv(path)
    return df if len(df.columns) else None


def _col(df: pd.DataFrame, name: str) -> pd.Series:
    return df[name] if name in df.columns else pd.Series([None] * len(df), index=df.index,
                                                           dtype=object)


class Tables:
    """The sweep's tables, and the per-cell quantities the sections share."""

    def __init__(self, tables_dir: Path):
        self.dir = Path(tables_dir)
        cells = _read(self.dir / "cells.csv")
        if cells is None:
            raise FileNotFoundError(f"{self.dir / 'cells.csv'}: no cells table to explain")
        self.present = [n for n in TABLES if (self.dir / n).is_file()]
        self.speedup = _read(self.dir / "speedup.csv")
        self.by_model = _read(self.dir / "speedup_by_model.csv")
        self.by_length = _read(self.dir / "speedup_by_length.csv")
        self.variants = _read(self.dir / "kv_variants.csv")
        self.cells = self._derive(cells)

    @staticmethod
    def _derive(cells: pd.DataFrame) -> pd.DataFrame:
        df = cells.copy()
        for col in CELL:
            if col not in df.columns:
                df[col] = None
        n_head = _col(df, "model_info.n_head")
        n_embd = _col(df, "model_info.n_embd")
        kv_set = _col(df, "cell.n_kv_head")
        kv_info = _col(df, "model_info.n_kv_head")
        torch_peaks = _col(df, "memory.torch_peak_allocated_bytes")
        rss_peaks = _col(df, "memory.rss_peak_bytes")
        rows = []
        for i in df.index:
            heads, embd = _f(n_head[i]), _f(n_embd[i])
            kv = _f(kv_set[i]) or _f(kv_info[i]) or heads
            # a 0 from torch on a CPU means 'not tracked', as in aggregate.peak_memory
            torch_peak, rss = _f(torch_peaks[i]), _f(rss_peaks[i])
            peak, source = ((torch_peak, "torch peak allocated") if torch_peak else
                            (rss, "process RSS peak") if rss else (None, None))
            rows.append({
                "x.head_dim": None if not heads or embd is None else embd / heads,
                "x.kv_heads": kv,
                "x.elem": DTYPE_BYTES.get(str(df.at[i, "cell.dtype"])),
                "x.tokens": (int(df.at[i, "cell.prompt_len"])
                             + int(df.at[i, "cell.new_tokens"]) - 1),
                "x.peak": peak, "x.peak_source": source,
                "x.key": "|".join(_lab(df.at[i, c]) for c in CELL if c != "cell.kv_mode"),
            })
        return pd.concat([df, pd.DataFrame(rows, index=df.index)], axis=1)

    def ok(self) -> pd.DataFrame:
        return self.cells[self.cells["status"] == "ok"]

    def speedup_ok(self, column: str) -> pd.DataFrame:
        sp = self.speedup
        if sp is None or column not in sp.columns:
            return pd.DataFrame()
        return sp[sp[column].notna()]

    def devices(self) -> list[str]:
        names = set()
        for _, row in self.cells.iterrows():
            name = row.get("environment.device_name")
            if isinstance(name, str) and name and name != "cpu":
                names.add(name)
            elif isinstance(row.get("environment.cpu"), str):
                names.add(f"CPU: {row['environment.cpu']}")
            else:
                names.add(str(row["cell.device"]))
        return sorted(names)

    def model_order(self) -> list[str]:
        params = _col(self.cells, "model_info.n_params")
        best: dict[str, float] = {}
        for m, p in zip(self.cells["cell.model"].astype(str), params):
            best[m] = max(best.get(m, 0.0), _f(p) or 0.0)
        return sorted(best, key=lambda m: (0, best[m], m) if best[m] else (1, 0.0, m))

    def model_desc(self, model: str) -> str:
        rows = self.cells[self.cells["cell.model"].astype(str) == model]
        params = _f(_col(rows, "model_info.n_params").max())
        layers = _f(_col(rows, "model_info.n_layer").max())
        parts = []
        if params:
            parts.append(f"{params / 1e6:.0f}M params")
        if layers:
            parts.append(f"{int(layers)} layers")
        return f"{model} ({', '.join(parts)})" if parts else model

    def values(self, column: str) -> list[str]:
        return sorted({_lab(v) for v in self.cells[column]}, key=_natural)


def kv_formula(n_layer: int, batch: int, kv_heads: int, tokens: int, head_dim: int,
               elem: int | None, kv_mode: str) -> tuple[str, int]:
    """(the product written out, its value) of the KV-cache formula for one cell."""
    if kv_mode == "static-int8":
        text = (f"2 × {n_layer} × {batch} × {kv_heads} × {tokens} × "
                f"({head_dim} + {INT8_SCALE_BYTES})")
        return text, 2 * n_layer * batch * kv_heads * tokens * (head_dim + INT8_SCALE_BYTES)
    assert elem is not None
    text = f"2 × {n_layer} × {batch} × {kv_heads} × {tokens} × {head_dim} × {elem}"
    return text, 2 * n_layer * batch * kv_heads * tokens * head_dim * elem


def _cell_formula(row: pd.Series) -> tuple[str, int] | None:
    n_layer, hd, kv = _f(row.get("model_info.n_layer")), row["x.head_dim"], row["x.kv_heads"]
    mode = str(row["cell.kv_mode"])
    if n_layer is None or hd is None or kv is None or mode == "none" \
            or (mode != "static-int8" and row["x.elem"] is None):
        return None
    return kv_formula(int(n_layer), int(row["cell.batch"]), int(kv), int(row["x.tokens"]),
                      int(hd), row["x.elem"], mode)


def _per_token_bytes(row: pd.Series) -> int | None:
    """Cache bytes per token per sequence (the formula at batch 1, tokens 1)."""
    n_layer, hd, kv = _f(row.get("model_info.n_layer")), row["x.head_dim"], row["x.kv_heads"]
    if n_layer is None or hd is None or kv is None:
        return None
    mode = str(row["cell.kv_mode"])
    if mode != "static-int8" and row["x.elem"] is None:
        return None
    return kv_formula(int(n_layer), 1, int(kv), 1, int(hd), row["x.elem"], mode)[1]


# ----------------------------------------------------------------------------- sections

def _header(t: Tables) -> list[str]:
    c = t.cells
    counts = c["status"].value_counts()
    status = ", ".join(f"{s} {int(counts[s])}" for s in sorted(
        counts.index, key=lambda s: (STATUS_ORDER.index(s) if s in STATUS_ORDER else 99, s)))
    lines = [
        "# What the KV cache did in this sweep", "",
        "Generated by `kvbench explain` from this sweep's tables ("
        + ", ".join(f"`{n}`" for n in t.present) + "). Every number below is read from those "
        "tables or computed by a formula written next to it; a claim this sweep did not measure "
        "says *not measured in this sweep*. The baseline, `none` (the whole sequence recomputed "
        "at every step, nanoGPT's original `generate`), was measured in the same sweep, cell by "
        "cell, with every other setting equal: no speedup here is against an estimated baseline "
        "(write-up 004's lesson). MB = 10^6 bytes, MiB = 2^20 bytes.", "",
        f"- records: {len(c)} ({status})",
        f"- device: {', '.join(t.devices())}",
        f"- models: {', '.join(t.model_desc(m) for m in t.model_order())}",
        f"- kv modes: {', '.join(sorted(set(c['cell.kv_mode'].astype(str)), key=_mode_rank))}",
    ]
    for key in ("dtype", "attention", "batch", "prompt_len", "new_tokens"):
        lines.append(f"- {key}: {', '.join(t.values(f'cell.{key}'))}")
    kv = sorted({_lab(v) for v in c["x.kv_heads"] if _f(v) is not None}, key=_natural)
    lines.append(f"- K/V heads: {', '.join(kv)}")
    return lines


def _memory_section(t: Tables) -> list[str]:
    lines = ["", "## 1. How big the KV cache is", "",
             "Each decode step attends over the keys and values of every earlier position in "
             "every layer. Without a cache they are recomputed from the whole sequence at every "
             "step; a cache keeps them:", "",
             "```",
             "KV bytes = 2 × n_layer × batch × n_kv_head × tokens × head_dim × bytes per "
             "element",
             "```", "",
             "with 2 for K and V, tokens = prompt_len + new_tokens − 1 (the last generated token "
             "is never fed back), head_dim = n_embd / n_head, and bytes per element 4 for fp32, "
             "2 for bf16 and fp16. `static-int8` stores 1 byte per element plus one 4-byte "
             "fp32 scale per token and head, so `head_dim × bytes` becomes `(head_dim + 4)`. "
             "The cache grows linearly with batch × tokens; `none` keeps no cache."]
    ok = t.ok()
    cached = ok[ok["cell.kv_mode"].astype(str) != "none"]
    if not len(cached):
        return lines + ["", "No cached cell finished in this sweep: the cache's size was not "
                        "measured in this sweep."]
    agree_formula = agree_measured = no_measured = 0
    differ: list[str] = []
    for _, row in cached.iterrows():
        calc = _cell_formula(row)
        rec_formula = _f(row.get("memory.kv_cache_bytes_formula"))
        measured = _f(row.get("memory.kv_cache_bytes_measured"))
        if calc is not None and rec_formula is not None and calc[1] == rec_formula:
            agree_formula += 1
        if measured is None:
            no_measured += 1
        elif rec_formula is not None and measured == rec_formula:
            agree_measured += 1
        else:
            differ.append(f"- `{row['record']}`: formula {_bytes(rec_formula)}, "
                          f"measured {_bytes(measured)}")
    lines += ["", f"Checked on every finished cached cell ({len(cached)}): the formula above "
              f"reproduces the record's formula bytes in {agree_formula}, and the bytes measured "
              f"from the cache's tensors equal the formula in {agree_measured}"
              + (f" ({no_measured} recorded no measured bytes)" if no_measured else "") + "."]
    if differ:
        lines += ["", "Measured bytes that differ from the formula:", "", *differ[:10]]
        if len(differ) > 10:
            lines.append(f"- … and {len(differ) - 10} more (see `cells.csv`)")
    # the largest cache of each (model, dtype, kv mode, K/V heads)
    groups: dict[tuple, pd.Series] = {}
    for _, row in cached.iterrows():
        key = (str(row["cell.model"]), str(row["cell.dtype"]), str(row["cell.kv_mode"]),
               _lab(row["x.kv_heads"]))
        size = int(row["cell.batch"]) * int(row["x.tokens"])
        best = groups.get(key)
        if best is None or size > int(best["cell.batch"]) * int(best["x.tokens"]):
            groups[key] = row
    order = {m: i for i, m in enumerate(t.model_order())}
    keys = sorted(groups, key=lambda k: (order.get(k[0], 99), k[1], _natural(k[3]),
                                         _mode_rank(k[2])))
    rows = []
    for key in keys:
        row = groups[key]
        calc = _cell_formula(row)
        measured = _f(row.get("memory.kv_cache_bytes_measured"))
        weights = _f(row.get("memory.weights_bytes"))
        held = measured if measured is not None else _f(row.get("memory.kv_cache_bytes_formula"))
        rows.append([key[0], key[2], key[1], key[3], _lab(row["cell.batch"]),
                     _lab(row["x.tokens"]), "–" if calc is None else f"`{calc[0]}`",
                     "–" if calc is None else _bytes(calc[1]),
                     _bytes(_f(row.get("memory.kv_cache_bytes_formula"))), _bytes(measured),
                     _bytes(weights),
                     "–" if not weights or held is None else f"{held / weights:.3g}"])
    lines += ["", "The largest cache each model, dtype, kv mode and K/V head count reached "
              "here (cache / weights = measured bytes / weights bytes):", ""]
    lines += _table(["model", "kv_mode", "dtype", "K/V heads", "batch", "tokens", "formula",
                     "= bytes", "record: formula", "record: measured", "weights",
                     "cache / weights"],
                    rows)
    # when does the cache outgrow the weights
    lines += ["", "### When the cache outgrows the weights", "",
              "The cache of one sequence grows by the formula at batch 1, tokens 1 per token; it "
              "equals the weights at batch × tokens = weights bytes / bytes per token. At the "
              "model's full context (block size) that happens from batch = weights / (bytes per "
              "token × block size), rounded up.", ""]
    rows = []
    for key in keys:
        row = groups[key]
        per_token = _per_token_bytes(row)
        weights = _f(row.get("memory.weights_bytes"))
        block = _f(row.get("model_info.block_size"))
        if per_token is None or not weights:
            continue
        cross = weights / per_token
        rows.append([key[0], key[2], key[1], key[3], _bytes(per_token), _bytes(weights),
                     f"{cross:,.0f}",
                     "–" if not block else f"{int(block)}: batch ≥ "
                     f"{math.ceil(cross / block):,}"])
    lines += _table(["model", "kv_mode", "dtype", "K/V heads", "cache per token per sequence",
                     "weights", "batch × tokens where cache = weights",
                     "full context (block size): from"], rows)
    return lines


def _trend(vals: list[float | None]) -> str:
    got = [v for v in vals if v is not None]
    if len(got) < 2:
        return "–"
    if all(b >= a for a, b in zip(got, got[1:])):
        return "grows"
    if all(b <= a for a, b in zip(got, got[1:])):
        return "falls"
    return "mixed"


def _setting_key(value: str) -> tuple:
    """Sort key of a setting's spelling: 'all' (K/V heads) first, then numbers, then text."""
    return (-1, 0.0, "") if value == "all" else _natural(value)


def _axis_table(df: pd.DataFrame, axis: str, axis_values: list[str]) -> list[str]:
    """Rows: kv mode x the other settings that vary; columns: the axis; cells total / per token;
    then one line counting the rows whose whole-generation speedup grows along the axis."""
    others = [c for c in ("model", "dtype", "attention", "n_kv_head", "batch", "prompt_len",
                          "new_tokens") if c != axis and c in df.columns
              and df[c].map(_lab).nunique() > 1]
    groups: dict[tuple, dict[str, pd.Series]] = {}
    for _, row in df.iterrows():
        key = (_mode_rank(str(row["kv_mode"])), tuple(_setting(c, row[c]) for c in others))
        groups.setdefault(key, {})[_lab(row[axis])] = row
    header = ["kv_mode", *others, *[f"{axis} = {v}" for v in axis_values], "total speedup"]
    rows = []
    for key in sorted(groups, key=lambda k: (k[0], tuple(_setting_key(v) for v in k[1]))):
        cells = groups[key]
        out = []
        totals = []
        for v in axis_values:
            row = cells.get(v)
            if row is None:
                out.append("–")
                totals.append(None)
                continue
            total, per_token = _f(row["total_speedup"]), _f(row["decode_speedup"])
            totals.append(total)
            if total is None and per_token is None:
                status = row["status"] if row["status"] != "ok" else f"none {row['none_status']}"
                out.append(f"not measured ({status})")
            else:
                out.append(f"{_x(total)} / {_x(per_token)}")
        rows.append([key[0][1], *key[1], *out, _trend(totals)])
    trends = [r[-1] for r in rows if r[-1] != "–"]
    counts = ", ".join(f"{name} in {trends.count(name)}" for name in ("grows", "falls", "mixed")
                       if trends.count(name))
    summary = (f"Measured: of the {len(trends)} rows with two or more finished pairs, the "
               f"whole-generation speedup along {axis} {counts}." if trends else
               "Measured: no row has two finished pairs to compare.")
    return _table(header, rows) + ["", summary]


def _speedup_section(t: Tables) -> list[str]:
    lines = ["", "## 2. Why the speedup grows with generation length and model size", "",
             "Without a cache, decode step *s* runs the whole model over prompt_len + *s* "
             "positions; with one it runs the model over the one new position and reads the "
             "cached keys and values. An uncached step therefore costs more the longer the "
             "context, a cached one stays nearly flat: the speedup per decode token grows with "
             "the context, i.e. with the prompt and with every token generated. The whole "
             "generation gains less, because its first token (the prefill over the prompt) is "
             "the same work with or without a cache, and in a short generation it is a large "
             "share of the time (section 3).", "",
             "The work a cache saves is a forward pass of every layer over every earlier "
             "position, so it grows with the model; what a cached step still pays includes "
             "costs that grow less or not at all with the model (Python and kernel-launch "
             "overhead, sampling). On a small model those fixed costs cap the speedup; on a "
             "larger one the saved work dominates. Whether that held on this hardware is in the "
             "measurements below.", "",
             "Speedup = `none` time / cached time at otherwise equal settings, given as *whole "
             "generation (total time, as the write-ups timed it) / per decode token*."]
    lines += ["", "### Generation length (`speedup_by_length.csv`)", ""]
    bl = t.by_length
    if bl is not None and len(bl):
        values = sorted({_lab(v) for v in bl["new_tokens"]}, key=_natural)
        lines += _axis_table(bl, "new_tokens", values)
    else:
        lines.append("Not measured in this sweep: it generates one length only (new_tokens = "
                     f"{', '.join(t.values('cell.new_tokens'))}).")
    lines += ["", "### Model size (`speedup_by_model.csv`)", ""]
    bm = t.by_model
    if bm is not None and len(bm):
        present = set(bm["model"].astype(str))
        models = [m for m in t.model_order() if m in present]
        lines.append("Models in order of parameter count: "
                     + ", ".join(t.model_desc(m) for m in models) + ".")
        lines.append("")
        lines += _axis_table(bm, "model", models)
    else:
        lines.append("Not measured in this sweep: it has one model only ("
                     f"{', '.join(t.model_desc(m) for m in t.model_order())}).")
    best = t.speedup_ok("decode_speedup")
    if len(best):
        row = best.loc[best["decode_speedup"].astype(float).idxmax()]
        where = ", ".join(f"{k}={_lab(row[f'cell.{k}'])}" for k in (
            "model", "dtype", "batch", "prompt_len", "new_tokens"))
        lines += ["", f"Largest decode speedup in the sweep: {_x(_f(row['decode_speedup']))} "
                  f"({row['cell.kv_mode']} at {where}: {_num(_f(row['decode_ms']))} vs "
                  f"{_num(_f(row['none_decode_ms']))} ms per token; whole generation "
                  f"{_x(_f(row['total_speedup']))})."]
    return lines


def _not_help_section(t: Tables) -> list[str]:
    lines = ["", "## 3. When the cache does not help", ""]
    sp = t.speedup
    if sp is None or not len(sp) or not len(t.speedup_ok("prefill_speedup")):
        return lines + ["No cached cell has a finished `none` partner: not measured in this "
                        "sweep."]
    modes = sorted(set(sp["cell.kv_mode"].astype(str)), key=_mode_rank)
    pre = t.speedup_ok("prefill_speedup")
    lines += ["- **The prompt and the first token.** The prefill (time to first token) is one "
              "forward pass over the prompt with or without a cache; a cache can only add the "
              "cost of storing what it computes. Prefill speedup (`none` / cached):"]
    for m in modes:
        vals = [float(v) for v in pre[pre["cell.kv_mode"] == m]["prefill_speedup"]]
        if vals:
            lines.append(f"  - {m}: {_spread(vals)}")
    # short generations: the prefill's share of a cached generation, and Amdahl's bound
    tot = t.speedup_ok("total_speedup")
    tot = tot[tot["prefill_ms"].notna() & tot["total_ms"].notna()]
    if len(tot):
        lines += ["- **Short generations.** The shorter the generation, the larger the prefill's "
                  "share of it, and a cache cannot shorten that share: the whole generation can "
                  "never be faster than `none` total ms / cached prefill ms, however fast the "
                  "cached decode. Measured (median over the pairs at each length):", ""]
        rows = []
        order = {m: i for i, m in enumerate(t.model_order())}
        groups: dict[tuple, pd.DataFrame] = {}
        for key, gdf in tot.groupby([tot["cell.model"].astype(str),
                                     tot["cell.n_kv_head"].map(lambda v: _setting("n_kv_head", v)),
                                     tot["cell.kv_mode"].astype(str),
                                     tot["cell.new_tokens"].map(_lab)], sort=False):
            groups[key] = gdf
        for key in sorted(groups, key=lambda k: (order.get(k[0], 99), k[0],
                                                 (0, 0.0, "") if k[1] == "all" else _natural(k[1]),
                                                 _mode_rank(k[2]), _natural(k[3]))):
            ndf = groups[key]
            share = [float(p) / float(t_) for p, t_ in zip(ndf["prefill_ms"], ndf["total_ms"])]
            bound = [float(a) / float(p) for a, p in zip(ndf["none_total_ms"], ndf["prefill_ms"])]
            rows.append([key[2], key[0], key[1], key[3], str(len(ndf)),
                         _pct(statistics.median(share)),
                         _x(statistics.median([float(v) for v in ndf["total_speedup"]])),
                         _x(statistics.median(bound))])
        lines += ["  " + line for line in _table(
            ["kv_mode", "model", "n_kv_head", "new_tokens", "pairs",
             "prefill share of cached total", "total speedup",
             "bound: none total / cached prefill"], rows)]
    dec = t.speedup_ok("decode_speedup")
    slower = pd.concat([dec[dec["decode_speedup"].astype(float) < 1],
                        tot[tot["total_speedup"].astype(float) < 1]]) if len(dec) else dec
    if len(slower):
        slower = slower.drop_duplicates(subset=["record"]).sort_values("record")
        lines += ["- **Where the cache lost.** Pairs where a cached mode was slower than `none` "
                  "(speedup below 1):"]
        for _, row in slower.head(10).iterrows():
            lines.append(f"  - `{row['record']}`: decode {_x(_f(row['decode_speedup']))}, "
                         f"whole generation {_x(_f(row['total_speedup']))}")
        if len(slower) > 10:
            lines.append(f"  - … and {len(slower) - 10} more (see `speedup.csv`)")
    elif len(dec):
        lines.append("- **Where the cache lost.** Nowhere in this sweep: every finished cached "
                     "cell decoded and generated faster than its `none` partner.")
    # concat (a full copy per step) vs static (in place)
    ok = t.ok()
    conc = ok[ok["cell.kv_mode"] == "concat"].set_index("x.key")
    stat = ok[ok["cell.kv_mode"] == "static"].set_index("x.key")
    both = sorted(set(conc.index) & set(stat.index))
    if both:
        ratios = [float(conc.at[k, "latency.decode_ms_per_token.median"])
                  / float(stat.at[k, "latency.decode_ms_per_token.median"]) for k in both]
        lines.append(f"- **How the cache is kept matters.** `concat` copies the whole cache "
                     f"with `torch.cat` every step, `static` writes one position in place: "
                     f"decode ms per token concat / static = {_spread(ratios)}.")
    return lines


def _pairs(t: Tables) -> list[tuple[pd.Series, pd.Series]]:
    """(cached cell, its none cell) from cells.csv, both ok."""
    ok = t.ok()
    none = {row["x.key"]: row for _, row in ok[ok["cell.kv_mode"] == "none"].iterrows()}
    return [(row, none[row["x.key"]]) for _, row in ok.iterrows()
            if row["cell.kv_mode"] != "none" and row["x.key"] in none]


class _Peaks:
    """Peaks of the pairs of one kv mode (and model): ratios, sources, absolute values."""

    def __init__(self) -> None:
        self.ratios: list[float] = []
        self.sources: set[str] = set()
        self.none: list[float] = []
        self.cached: list[float] = []
        self.cache: list[float] = []


def _peak_ratios(t: Tables, by_model: bool = False) -> dict[tuple[str, ...], _Peaks]:
    """(kv mode,) or (model, n_kv_head, kv mode) -> the peaks of its ok none/cached pairs,
    when both report a peak of the same kind."""
    out: dict[tuple[str, ...], _Peaks] = {}
    for row, ref in _pairs(t):
        if row["x.peak"] and ref["x.peak"] and row["x.peak_source"] == ref["x.peak_source"]:
            key = ((str(row["cell.model"]), _setting("n_kv_head", row["cell.n_kv_head"]))
                   if by_model else ()) + (str(row["cell.kv_mode"]),)
            p = out.setdefault(key, _Peaks())
            p.ratios.append(row["x.peak"] / ref["x.peak"])
            p.sources.add(str(row["x.peak_source"]))
            p.none.append(ref["x.peak"])
            p.cached.append(row["x.peak"])
            held = _f(row.get("memory.kv_cache_bytes_measured"))
            held = held if held is not None else _f(row.get("memory.kv_cache_bytes_formula"))
            if held is not None:
                p.cache.append(held)
    return out


def _mib(v: float | None) -> str:
    return "–" if v is None else f"{_num(v / MIB)} MiB"


def _prefill_peak_ratios(t: Tables) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {}
    for row, ref in _pairs(t):
        a = _f(row.get("memory.prefill_peak_allocated_bytes"))
        b = _f(ref.get("memory.prefill_peak_allocated_bytes"))
        if a and b:
            out.setdefault(str(row["cell.kv_mode"]), []).append(a / b)
    return out


def _memory_cost_section(t: Tables) -> list[str]:
    lines = ["", "## 4. What the memory costs", "",
             "A cache trades memory for time: it holds the bytes of section 1 for the whole "
             "generation, while `none` recomputes them and lets them go every step. Peak "
             "memory of each cached cell / its `none` partner (GPU: torch's peak allocated; "
             "CPU: the process's peak resident set, which includes the weights and Python):", ""]
    peaks = _peak_ratios(t, by_model=True)
    if not peaks:
        lines.append("Not measured in this sweep (no pair of finished cells reports a peak).")
    else:
        order = {m: i for i, m in enumerate(t.model_order())}
        med = lambda v: statistics.median(v) if v else None  # noqa: E731
        rows = [[k[0], k[1], k[2], ", ".join(sorted(p.sources)), _mib(med(p.none)),
                 _mib(med(p.cached)), _mib(med(p.cache)), _spread(p.ratios, _x)]
                for k, p in sorted(peaks.items(), key=lambda kp: (
                    order.get(kp[0][0], 99), kp[0][0], _setting_key(kp[0][1]),
                    _mode_rank(kp[0][2])))]
        lines += _table(["model", "n_kv_head", "kv_mode", "peak measured as", "none peak (median)",
                         "cached peak (median)", "its KV cache (median)",
                         "cached peak / none peak"], rows)
    pre = _prefill_peak_ratios(t)
    lines += [""]
    if pre:
        lines.append("During the prefill alone (torch's peak allocated up to the first token), "
                     "cached / none: " + "; ".join(f"{m} {_spread(pre[m])}"
                                                   for m in sorted(pre, key=_mode_rank)) + ".")
    else:
        lines.append("The prefill-only peak is not measured in this sweep (torch tracks it on "
                     "a GPU only).")
    return lines


def _variants_section(t: Tables) -> list[str]:
    lines = ["", "## 5. Smaller caches: fewer K/V heads, int8 (write-up 002's extensions)", ""]
    v = t.variants
    if v is None or not len(v):
        return lines + ["Not measured in this sweep (no `static-int8` cell and no `n_kv_head` "
                        "set)."]
    lines += ["Grouped-query attention keeps `n_kv_head` < `n_head` K/V heads, so its cache is "
              "n_kv_head / n_head of the full one; `static-int8` stores the cache as int8 with "
              "one fp32 scale per token and head, (head_dim + 4) / (head_dim × bytes) of it. "
              "Bytes are compared with the plain `static` cache with all heads at the same "
              "model, dtype, batch and lengths; the logit error is the largest |logit − `none` "
              "logit| over the checked tokens. A grouped-query model is a different model "
              "(random weights here), so its error is against its own `none`: it shows the "
              "cache is exact for it, not what fewer heads cost in quality.", ""]
    v = v.copy()
    v["x.coord"] = v[["model", "dtype", "attention", "batch", "prompt_len",
                      "new_tokens"]].apply(lambda r: "|".join(_lab(x) for x in r), axis=1)
    full = v[(v["kv_mode"] == "static") & (v["status"] == "ok")
             & (v["n_kv_head"].map(_lab) == v["n_head"].map(_lab))]
    ref_bytes = {c: _f(b) for c, b in zip(full["x.coord"], full["kv_cache_bytes_measured"]
                                          .where(full["kv_cache_bytes_measured"].notna(),
                                                 full["kv_cache_bytes_formula"]))}
    order = {m: i for i, m in enumerate(t.model_order())}
    ok_cells = t.ok()
    head_dim = {str(m): int(d) for m, d in zip(ok_cells["cell.model"], ok_cells["x.head_dim"])
                if _f(d) is not None}
    groups: dict[tuple, pd.DataFrame] = {}
    for key, gdf in v.groupby([v["model"].astype(str), v["dtype"].astype(str),
                               v["kv_mode"].astype(str), v["n_kv_head"].map(_lab),
                               v["n_head"].map(_lab)], sort=False):
        groups[key] = gdf
    rows = []
    for key in sorted(groups, key=lambda k: (order.get(k[0], 99), k[1], -_natural(k[3])[1],
                                             _mode_rank(k[2]))):
        model, dtype, mode, kv, heads = key
        gdf = groups[key]
        ok = gdf[gdf["status"] == "ok"]
        ratios = []
        for _, row in ok.iterrows():
            held = _f(row["kv_cache_bytes_measured"])
            held = held if held is not None else _f(row["kv_cache_bytes_formula"])
            ref = ref_bytes.get(row["x.coord"])
            if held is not None and ref:
                ratios.append(held / ref)
        h, kv_f, elem, hd = _f(heads), _f(kv), DTYPE_BYTES.get(dtype), head_dim.get(model)
        frac = kv_f / h if h and kv_f else None
        if mode == "none":
            expect = "no cache"
        elif frac is None:
            expect = "–"
        elif mode == "static-int8" and elem and hd:
            expect = (f"{kv}/{heads} × ({hd} + 4) / ({hd} × {elem}) = "
                      f"{frac * (hd + INT8_SCALE_BYTES) / (hd * elem):.3g}")
        elif mode == "static-int8":
            expect = "–"
        else:
            expect = f"{kv}/{heads} = {frac:.3g}"
        logit = [float(x) for x in ok["max_logit_diff"].dropna()]
        matches = [_lab(x) for x in ok["matches_reference"]]
        n_true = sum(m == "True" for m in matches)
        n_false = sum(m == "False" for m in matches)
        first = sorted({_lab(x) for x in ok["first_mismatch_step"].dropna()}, key=_natural)
        match_text = ("the reference" if mode == "none" else
                      f"{n_true} of {len(ok)}" + (f"; differ from step {', '.join(first)}"
                                                  if n_false and first else ""))
        rows.append([model, dtype, mode, f"{kv} of {heads}", f"{len(ok)} of {len(gdf)}",
                     "–" if mode == "none" else _spread(ratios, lambda x: "–" if x is None
                                                        else f"{x:.3g}", "cells"),
                     expect,
                     _spread([float(x) for x in ok["decode_ms_per_token"].dropna()], _num,
                             "cells"),
                     _spread([float(x) for x in ok["decode_speedup"].dropna()]),
                     "–" if not logit else f"{max(logit):.3g}", match_text])
    lines += _table(["model", "dtype", "kv_mode", "K/V heads", "ok cells",
                     "cache bytes / static all heads", "formula's ratio",
                     "decode ms/token", "decode speedup vs none", "max logit diff",
                     "greedy tokens = none's"], rows)
    return lines


# ----------------------------------------------------------------------------- the claims

def _speedups_at(t: Tables, column: str, where: Callable[[pd.DataFrame], pd.Series]
                 ) -> dict[str, list[float]]:
    """Speedups per cached mode of the pairs ``where`` selects, plain models only (a
    grouped-query variant is another model than the write-ups ran)."""
    sp = t.speedup_ok(column)
    if not len(sp):
        return {}
    sub = sp[where(sp) & sp["cell.n_kv_head"].isna()]
    out: dict[str, list[float]] = {}
    for m, v in zip(sub["cell.kv_mode"].astype(str), sub[column].astype(float)):
        out.setdefault(m, []).append(float(v))
    return out


def _per_mode(values: dict[str, list[float]]) -> str:
    return "; ".join(f"{m} {_spread(values[m])}" for m in sorted(values, key=_mode_rank))


def _best_median(values: dict[str, list[float]]) -> float | None:
    meds = [statistics.median(v) for v in values.values() if v]
    return max(meds) if meds else None


def _measured_per_token(t: Tables, model: str, dtypes: Sequence[str]) -> dict[str, float]:
    """Measured cache bytes / (batch × tokens) per dtype, for one model's plain caches."""
    ok = t.ok()
    out: dict[str, float] = {}
    sub = ok[(ok["cell.model"].astype(str) == model) & ok["cell.kv_mode"].isin(["concat", "static"])
             & ok["cell.dtype"].isin(list(dtypes)) & _col(ok, "cell.n_kv_head").isna()]
    for _, row in sub.sort_values(["cell.dtype", "record"]).iterrows():
        measured = _f(row.get("memory.kv_cache_bytes_measured"))
        if measured is not None and str(row["cell.dtype"]) not in out:
            out[str(row["cell.dtype"])] = measured / (int(row["cell.batch"]) * int(row["x.tokens"]))
    return out


def _claims_section(t: Tables) -> list[str]:
    dev = ", ".join(t.devices())
    rows: list[list[str]] = []
    gpt2 = lambda df: df["cell.model"].astype(str) == "gpt2"  # noqa: E731

    # 000: ~2.8x on CPU at gpt2
    total = _speedups_at(t, "total_speedup", gpt2)
    decode = _speedups_at(t, "decode_speedup", gpt2)
    if total:
        best = _best_median(total)
        rows.append(["000", f"~{WRITEUP_000_SPEEDUP}× faster generation with the cache, GPT-2 "
                     "small on a CPU", f"gpt2 on {dev}: whole generation {_per_mode(total)}; "
                     f"per decode token {_per_mode(decode)}",
                     f"best median {_compare(best, WRITEUP_000_SPEEDUP)}" if best else "–"])
    else:
        rows.append(["000", f"~{WRITEUP_000_SPEEDUP}× faster generation with the cache, GPT-2 "
                     "small on a CPU", "not measured in this sweep (no gpt2 pair of none and a "
                     "cached mode)", "not measured in this sweep"])
    # 000: ~0.07 MB per token
    fp32 = kv_formula(GPT2_LAYERS, 1, GPT2_HEADS, 1, GPT2_HEAD_DIM, 4, "static")
    per_tok = _measured_per_token(t, "gpt2", ["fp32"])
    measured = (f"; measured here (gpt2, fp32): {_bytes(per_tok['fp32'])} per token per "
                "sequence" if "fp32" in per_tok else
                "; the cache's bytes at gpt2 fp32 are not measured in this sweep")
    rows.append(["000", f"the cache grows ~{WRITEUP_000_MB_PER_TOKEN} MB per token (GPT-2 small)",
                 f"formula, fp32: `{fp32[0]}` = {_bytes(fp32[1])} = {_mb(fp32[1])} per token "
                 f"per sequence{measured}",
                 "yes" if abs(fp32[1] / MB / WRITEUP_000_MB_PER_TOKEN - 1) <= ABOUT else "no"])

    # 001: none's decode grows with prompt length; cache does not reduce prefill peak memory
    ok = t.ok()
    growth: dict[str, list[float]] = {}
    ends: set[tuple[str, str]] = set()
    if ok["cell.prompt_len"].map(_lab).nunique() > 1:
        key_cols = [c for c in CELL if c not in ("cell.kv_mode", "cell.prompt_len")]
        keys = ok[key_cols].apply(lambda r: "|".join(_lab(x) for x in r), axis=1)
        for (mode, _), gdf in ok.groupby([ok["cell.kv_mode"].astype(str), keys], sort=True):
            gdf = gdf.sort_values("cell.prompt_len")
            if len(gdf) > 1:
                lo, hi = gdf.iloc[0], gdf.iloc[-1]
                growth.setdefault(mode, []).append(
                    float(hi["latency.decode_ms_per_token.median"])
                    / float(lo["latency.decode_ms_per_token.median"]))
                ends.add((_lab(lo["cell.prompt_len"]), _lab(hi["cell.prompt_len"])))
    claim = "decode latency grows with prompt length without a cache (and much less with one)"
    if growth.get("none"):
        span = ", ".join(f"{a}→{b}" for a, b in sorted(ends, key=lambda e: (
            _natural(e[0]), _natural(e[1]))))
        verdict = "yes" if statistics.median(growth["none"]) > 1 + ABOUT / 2 else "no"
        rows.append(["001", claim, "decode ms per token at the longest / the shortest prompt "
                     f"(prompt {span}): {_per_mode(growth)}", verdict])
    else:
        rows.append(["001", claim, "not measured in this sweep (one prompt length, or no "
                     "finished `none` cells at two)", "not measured in this sweep"])
    pre = _prefill_peak_ratios(t)
    claim = "the cache does not reduce peak memory during the prefill"
    if pre:
        worst = min(min(v) for v in pre.values())
        rows.append(["001", claim, "prefill peak allocated, cached / none: " + "; ".join(
            f"{m} {_spread(pre[m])}" for m in sorted(pre, key=_mode_rank)),
            "yes" if worst >= 0.99 else "no"])
    else:
        whole = _peak_ratios(t)
        extra = ("; over the whole cell, cached / none peak: " + "; ".join(
            f"{k[0]} {_spread(whole[k].ratios)}" for k in sorted(whole, key=lambda k: _mode_rank(
                k[0])))) if whole else ""
        rows.append(["001", claim, "the prefill-only peak is not measured in this sweep (torch "
                     f"tracks it on a GPU only){extra}", "not measured in this sweep"])

    # 002: speedup vs length
    for n, (lo, hi) in sorted(WRITEUP_002_LENGTH.items()):
        at = lambda df, n=n: df["cell.new_tokens"].map(_lab) == str(n)  # noqa: E731
        total = _speedups_at(t, "total_speedup", at)
        decode = _speedups_at(t, "decode_speedup", at)
        claim = f"{n} new tokens: {lo:g}–{hi:g}× speedup"
        if total:
            verdicts = "; ".join(f"{m} {_range_verdict(statistics.median(total[m]), lo, hi)}"
                                 for m in sorted(total, key=_mode_rank))
            rows.append(["002", claim, f"whole generation {_per_mode(total)}; per decode token "
                         f"{_per_mode(decode)}", f"whole generation: {verdicts}"])
        else:
            rows.append(["002", claim, f"not measured in this sweep (no pair at new_tokens = {n})",
                         "not measured in this sweep"])
    # 002: ~3 MB per 1000 tokens per sample, fp16
    f1000 = kv_formula(GPT2_LAYERS, 1, GPT2_HEADS, 1000, GPT2_HEAD_DIM, 2, "static")
    f100 = kv_formula(GPT2_LAYERS, 1, GPT2_HEADS, 100, GPT2_HEAD_DIM, 2, "static")
    off = f1000[1] / MB / WRITEUP_002_MB_PER_1000
    one_layer = f1000[1] / GPT2_LAYERS
    half = _measured_per_token(t, "gpt2", ["fp16", "bf16"])
    full = _measured_per_token(t, "gpt2", ["fp32"])
    if half:
        dt = sorted(half)[0]
        measured = (f"; measured here (gpt2, {dt}): {_bytes(half[dt])} per token, "
                    f"× 1000 = {_mb(half[dt] * 1000)}")
    elif full:
        measured = (f"; measured here at fp32 only (gpt2): {_bytes(full['fp32'])} per token, "
                    f"× 1000 = {_mb(full['fp32'] * 1000)}, twice the fp16 formula; fp16 not "
                    "measured in this sweep")
    else:
        measured = "; not measured in this sweep (no gpt2 cache)"
    rows.append(["002", f"KV cache of GPT-2 in fp16: ~{WRITEUP_002_MB_PER_1000:g} MB per 1000 "
                 f"tokens per sample (~{WRITEUP_002_MB_PER_100:g} MB per 100)",
                 f"formula: `{f1000[0]}` = {_bytes(f1000[1])} = {_mb(f1000[1])} per 1000 tokens "
                 f"({_mb(f100[1])} per 100){measured}",
                 f"no: the write-up is off by ~{off:.0f}× ({_mb(f1000[1])} / "
                 f"{WRITEUP_002_MB_PER_1000:g} MB = {off:.1f}); its number is one layer's "
                 f"worth ({_mb(f1000[1])} / {GPT2_LAYERS} layers = {_mb(one_layer)})"])

    # 003: speedup by model on a T4
    measured_models: list[tuple[str, float]] = []
    for model, claimed in WRITEUP_003_MODEL.items():
        at = lambda df, model=model: df["cell.model"].astype(str) == model  # noqa: E731
        total = _speedups_at(t, "total_speedup", at)
        decode = _speedups_at(t, "decode_speedup", at)
        claim = f"{model}: {claimed}× (whole generation, T4 GPU)"
        if total:
            best = _best_median(total)
            if best is not None:
                measured_models.append((model, best))
            rows.append(["003", claim, f"on {dev}: whole generation {_per_mode(total)}; per "
                         f"decode token {_per_mode(decode)}",
                         f"best median {_compare(best, claimed)}; other hardware"
                         if best else "–"])
        else:
            rows.append(["003", claim, f"not measured in this sweep (no {model} pair)",
                         "not measured in this sweep"])
    claim = "the speedup grows with model size (more layers to cache)"
    bm = t.by_model
    if bm is not None and len(bm) and bm["total_speedup"].notna().any():
        trends = []
        for mode in sorted(set(bm["kv_mode"].astype(str)), key=_mode_rank):
            mdf = bm[(bm["kv_mode"].astype(str) == mode) & bm["total_speedup"].notna()
                     & bm["n_kv_head"].isna()]
            meds = []
            present = set(mdf["model"].astype(str))
            for m in [m for m in t.model_order() if m in present]:
                meds.append(statistics.median(
                    [float(x) for x in mdf[mdf["model"].astype(str) == m]["total_speedup"]]))
            if len(meds) > 1:
                trends.append((mode, meds, _trend(meds)))
        text = "; ".join(f"{mode}: " + " → ".join(_x(x) for x in meds) + f" ({tr})"
                         for mode, meds, tr in trends)
        verdict = ("yes" if trends and all(tr == "grows" for _, _, tr in trends) else
                   "no" if trends and all(tr == "falls" for _, _, tr in trends) else
                   "partly" if trends else "–")
        rows.append(["003", claim, "median whole-generation speedup by model, smallest to "
                     f"largest: {text}" if text else "–", verdict])
    else:
        rows.append(["003", claim, "not measured in this sweep (one model)",
                     "not measured in this sweep"])

    # 004: estimated baseline
    dec = t.speedup_ok("decode_speedup")
    if len(dec):
        vals = [float(x) for x in dec["decode_speedup"]]
        tot_vals = [float(x) for x in t.speedup_ok("total_speedup")["total_speedup"]]
        rows.append(["004", f"{WRITEUP_004_ESTIMATED}× from a cached run measured against a "
                     "baseline estimated at ~15 tokens/s", f"every baseline here measured: "
                     f"{len(dec)} none/cached pairs on {dev}; decode speedup {_spread(vals)}; "
                     f"whole generation {_spread(tot_vals)}",
                     "an estimated baseline is not a measurement: the numbers here replace it"])
    else:
        rows.append(["004", f"{WRITEUP_004_ESTIMATED}× from a cached run measured against a "
                     "baseline estimated at ~15 tokens/s", "not measured in this sweep (no "
                     "finished none/cached pair)", "not measured in this sweep"])
    lines = ["", "## 6. Each write-up's claim vs what kvbench measured here", "",
             "The write-ups are in `shared/seeds/`; their hardware differs from this sweep's "
             f"({dev}), so a different number is not by itself an error. Speedups are medians "
             f"over the pairs that match the claim's setting; 'about the same' means within "
             f"±{ABOUT:.0%}.", ""]
    lines += _table(["write-up", "claim", "measured here", "agrees?"], rows)
    return lines


def explanation_markdown(tables_dir: Path) -> str:
    """The document, from the tables in ``tables_dir`` (cells.csv required)."""
    t = Tables(tables_dir)
    lines = _header(t)
    for section in (_memory_section, _speedup_section, _not_help_section,
                    _memory_cost_section, _variants_section, _claims_section):
        lines += section(t)
    return "\n".join(lines) + "\n"


def explain(tables_dir: Path, out_md: Path) -> None:
    """Write the explanation of the sweep whose tables are in ``tables_dir`` to ``out_md``
    (atomically: a reader never sees half a file)."""
    atomic_write_text(Path(out_md), explanation_markdown(Path(tables_dir)))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvbench explain",
        description="Write a markdown explanation of a sweep (the KV-cache formula with the "
                    "measured bytes, why the speedup grows, when the cache does not help, the "
                    "write-ups' claims vs the measurements) from its aggregate tables.")
    parser.add_argument("--tables", required=True, type=Path,
                        help="the sweep's tables directory (cells.csv, speedup.csv, ...)")
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
