"""Tests of kvbench.analysis.explain: the explanation document generated from a sweep's tables.

Synthetic, schema-valid records (the factory of test_analysis.py): gpt2 and gpt2-medium, 20 and
50 new tokens, every kv mode including static-int8, and a grouped-query variant. The document
must regenerate byte-identically from the CSVs alone, carry the KV formula with the sweep's
numbers, and say "not measured in this sweep" for what the sweep did not measure.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from kvbench.analysis import aggregate as agg
from kvbench.analysis import explain as ex
from test_analysis import (AXIS_LENGTHS, AXIS_MODELS, AXIS_OOM, AXIS_PROMPT, GQA_HEADS,
                           INT8_LOGIT_DIFF, INT8_MISMATCH, MODELS, REPO, Sweep, axis_records,
                           grid_records, kv_bytes_for, make_record)

NOT_MEASURED = "not measured in this sweep"


@pytest.fixture(scope="module")
def axes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sweep, str]:
    s = Sweep(tmp_path_factory.mktemp("explain"), axis_records())
    agg.aggregate(s.paths, s.tables)
    out = s.dir / "explanation.md"
    assert ex.main(["--tables", str(s.tables), "--out", str(out)]) == 0
    return s, out.read_text(encoding="utf-8")


def section(text: str, number: int) -> str:
    """The text of '## <number>. ...' up to the next '## '."""
    start = text.index(f"\n## {number}. ")
    end = text.find("\n## ", start + 1)
    return text[start:end if end != -1 else len(text)]


def claim_rows(text: str, writeup: str) -> list[list[str]]:
    rows = []
    for line in section(text, 6).splitlines():
        if line.startswith(f"| {writeup} |"):
            rows.append([c.strip() for c in line.strip("|").split(" | ")])
    return rows


# ---------------------------------------------------------------------------------- determinism

def test_regenerates_byte_identically_from_the_csvs_alone(axes: tuple[Sweep, str],
                                                          tmp_path: Path) -> None:
    s, text = axes
    only_tables = tmp_path / "tables"
    only_tables.mkdir()
    for p in s.tables.glob("*.csv"):  # the CSVs only: no records, no summary.md
        shutil.copy(p, only_tables / p.name)
    out = tmp_path / "sub" / "explanation.md"
    env = {"PYTHONHASHSEED": "999", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "kvbench.analysis.explain", "--tables",
                           str(only_tables), "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert out.read_bytes() == (s.dir / "explanation.md").read_bytes()
    assert not [p for p in out.parent.iterdir() if p.name != out.name]  # no temp file left
    assert text.startswith("# What the KV cache did in this sweep\n")
    assert text.endswith("\n") and "nan" not in text.lower().replace("nanogpt", "")


def test_the_document_follows_the_tables(axes: tuple[Sweep, str], tmp_path: Path) -> None:
    """Change one number in cells.csv: the document reports it (it reads the tables)."""
    s, text = axes
    tables = tmp_path / "tables"
    shutil.copytree(s.tables, tables)
    cells = pd.read_csv(tables / "cells.csv")
    target = "gpt2/fp32/static/b1-p16-n20-sdpa.json"
    row = cells.index[cells["record"] == target][0]
    col = "memory.kv_cache_bytes_measured"
    cells[col] = cells[col].astype("Int64")
    cells.loc[row, col] = 12345
    cells.to_csv(tables / "cells.csv", index=False, lineterminator="\n")
    out = tmp_path / "explanation.md"
    ex.explain(tables, out)
    changed = out.read_text()
    assert changed != text
    formula = kv_bytes_for("gpt2", "static", 1, AXIS_PROMPT + 20 - 1)
    assert f"- `{target}`: formula {formula:,} B, measured 12,345 B" in changed
    assert "Measured bytes that differ from the formula:" not in text


def test_missing_tables_fail_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert ex.main(["--tables", str(tmp_path / "none"), "--out", str(tmp_path / "x.md")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("explain: error: ") and err.count("\n") == 1 and "cells.csv" in err
    assert not (tmp_path / "x.md").exists()


def test_explain_imports_neither_torch_nor_matplotlib() -> None:
    code = ("import sys, kvbench.analysis.explain; "
            "print(sorted(m for m in ('torch', 'matplotlib') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ---------------------------------------------------------------------------------- contents

def test_formula_with_the_sweeps_bytes(axes: tuple[Sweep, str]) -> None:
    s, text = axes
    mem = section(text, 1)
    assert ("KV bytes = 2 × n_layer × batch × n_kv_head × tokens × head_dim × "
            "bytes per element") in mem
    ok_cached = [r for r in s.records if r["status"] == "ok" and r["cell"]["kv_mode"] != "none"]
    assert (f"Checked on every finished cached cell ({len(ok_cached)}): the formula above "
            f"reproduces the record's formula bytes in {len(ok_cached)}, and the bytes measured "
            f"from the cache's tensors equal the formula in {len(ok_cached)}.") in mem
    tokens = AXIS_PROMPT + max(AXIS_LENGTHS) - 1
    lines = mem.splitlines()
    for model, mode, kv, expanded in (
            ("gpt2", "static", None, f"2 × 12 × 1 × 12 × {tokens} × 64 × 4"),
            ("gpt2", "static-int8", None, f"2 × 12 × 1 × 12 × {tokens} × (64 + 4)"),
            ("gpt2-medium", "static", GQA_HEADS, f"2 × 24 × 1 × 4 × {tokens} × 64 × 4")):
        n = kv_bytes_for(model, mode, 1, tokens, n_kv_head=kv)
        weights = MODELS[model][3] * 4
        # the product, its value, the record's formula and measured bytes, the weights
        row = next(line for line in lines if f"`{expanded}`" in line
                   and line.startswith(f"| {model} | {mode} | fp32 |"))
        assert row.count(f"| {n:,} B ") == 3, row
        assert f"| {weights:,} B | {n / weights:.3g} |" in row
    # the largest gpt2-medium concat cache is at 20 tokens: its 50-token cell ran out of memory
    assert f"`2 × 24 × 1 × 16 × {AXIS_PROMPT + 20 - 1} × 64 × 4`" in mem
    # when the cache outgrows the weights: weights / bytes per token per sequence
    per_token = 2 * 12 * 12 * 64 * 4
    cross = MODELS["gpt2"][3] * 4 / per_token
    assert f"| gpt2 | static | fp32 | 12 | {per_token:,} B | {MODELS['gpt2'][3] * 4:,} B | " \
           f"{cross:,.0f} |" in mem


def test_speedups_are_the_tables_numbers(axes: tuple[Sweep, str]) -> None:
    s, text = axes
    part = section(text, 2)
    by_length = s.csv("speedup_by_length.csv")
    g = by_length[(by_length["model"] == "gpt2") & (by_length["kv_mode"] == "static")
                  & by_length["n_kv_head"].isna()].set_index("new_tokens")
    cells = " | ".join(f"{g.at[n, 'total_speedup']:.2f}× / {g.at[n, 'decode_speedup']:.2f}×"
                       for n in AXIS_LENGTHS)
    assert f"| static | gpt2 | all | {cells} | grows |" in part
    assert "| concat | gpt2-medium | all | 9" in part and "| not measured (oom) | – |" in part
    complete = by_length.groupby(["model", "kv_mode", by_length["n_kv_head"].fillna(0)])[
        "total_speedup"].count()
    n_rows = int((complete == len(AXIS_LENGTHS)).sum())
    assert n_rows == 7  # every line of the synthetic sweep but the one with the oom cell
    assert (f"Measured: of the {n_rows} rows with two or more finished pairs, the "
            f"whole-generation speedup along new_tokens grows in {n_rows}.") in part
    by_model = s.csv("speedup_by_model.csv")
    g = by_model[(by_model["kv_mode"] == "static-int8") & (by_model["new_tokens"] == 20)]
    cells = " | ".join(f"{r['total_speedup']:.2f}× / {r['decode_speedup']:.2f}×"
                       for _, r in g.iterrows())
    assert f"| static-int8 | all | 20 | {cells} | grows |" in part
    assert list(g["model"]) == list(AXIS_MODELS)
    best = s.csv("speedup.csv").dropna(subset=["decode_speedup"])
    best = best.sort_values("decode_speedup").iloc[-1]
    assert f"Largest decode speedup in the sweep: {best['decode_speedup']:.2f}× " \
           f"({best['cell.kv_mode']} at model={best['cell.model']}" in part


def test_when_the_cache_does_not_help_and_what_memory_costs(axes: tuple[Sweep, str]) -> None:
    s, text = axes
    part = section(text, 3)
    sp = s.csv("speedup.csv")
    static = sorted(sp[(sp["cell.kv_mode"] == "static")]["prefill_speedup"].dropna())
    assert f"  - static: median {pd.Series(static).median():.2f}× ({static[0]:.2f}×–" \
           f"{static[-1]:.2f}×, {len(static)} pairs)" in part
    assert "bound: none total / cached prefill" in part
    assert "Nowhere in this sweep" in part  # every synthetic cached cell is faster
    mem = section(text, 4)
    peak = 2_000_000 + 5000 * 1 * AXIS_PROMPT  # the factory's torch peak at batch 1
    cache = kv_bytes_for("gpt2", "static", 1, AXIS_PROMPT + 20 - 1)  # median of 20 and 50 ...
    cache = (cache + kv_bytes_for("gpt2", "static", 1, AXIS_PROMPT + 50 - 1)) / 2
    assert (f"| gpt2 | all | static | torch peak allocated | {ex._num(peak / 2**20)} MiB | "
            f"{ex._num(peak / 2**20)} MiB | {ex._num(cache / 2**20)} MiB | median 1.00× "
            f"(1.00×–1.00×, 2 pairs) |") in mem
    assert f"The prefill-only peak is {NOT_MEASURED}" in mem


def test_variants_section(axes: tuple[Sweep, str]) -> None:
    s, text = axes
    part = section(text, 5)
    rows = [line for line in part.splitlines() if line.startswith("| gpt2")]
    int8 = next(r for r in rows if r.startswith("| gpt2 | fp32 | static-int8 | 12 of 12 |"))
    assert "| 12/12 × (64 + 4) / (64 × 4) = 0.266 |" in int8
    assert f"| {INT8_LOGIT_DIFF * MODELS['gpt2'][4]:.3g} | 2 of 2 |" in int8
    gqa = next(r for r in rows if r.startswith("| gpt2-medium | fp32 | static | 4 of 16 |"))
    assert "| median 0.25 (0.25–0.25, 2 cells) | 4/16 = 0.25 |" in gqa
    medium_int8 = next(r for r in rows if r.startswith("| gpt2-medium | fp32 | static-int8 |"))
    assert medium_int8.endswith(f"| 1 of 2; differ from step {INT8_MISMATCH[2]} |")
    concat = next(r for r in rows if r.startswith("| gpt2-medium | fp32 | concat |"))
    assert "| 1 of 2 |" in concat  # the oom cell is counted, not dropped
    assert AXIS_OOM[0] == "gpt2-medium"


def test_claims_table_measured_or_not_measured(axes: tuple[Sweep, str]) -> None:
    s, text = axes
    # 002: 20 and 50 tokens measured, 100 and 500 not
    rows = {r[1].split(" new tokens")[0]: r for r in claim_rows(text, "002")
            if "new tokens" in r[1]}
    sp = s.csv("speedup.csv")
    for n in AXIS_LENGTHS:
        assert NOT_MEASURED not in " ".join(rows[str(n)])
        static = sp[(sp["cell.kv_mode"] == "static") & (sp["cell.new_tokens"] == n)]
        med = static["total_speedup"].median()
        assert f"static median {med:.2f}×" in rows[str(n)][2]
        lo, hi = ex.WRITEUP_002_LENGTH[n]
        verdict = "within" if lo <= med <= hi else ("below" if med < lo else "above")
        assert f"static {verdict}" in rows[str(n)][3]
    for n in (100, 500):
        assert rows[str(n)][2].startswith(NOT_MEASURED) and rows[str(n)][3] == NOT_MEASURED
    # 002's memory figure against the formula: 2 x 12 x 12 x 64 x 1000 x 2 bytes = 36.9 MB
    mem = next(r for r in claim_rows(text, "002") if "per 1000 tokens" in r[1])
    assert "`2 × 12 × 1 × 12 × 1000 × 64 × 2` = 36,864,000 B = 36.9 MB" in mem[2]
    assert mem[3].startswith("no: the write-up is off by ~12× (36.9 MB / 3 MB = 12.3)")
    assert "fp16 not measured in this sweep" in mem[2]  # the sweep ran fp32 only
    # 000: the per-token growth, by formula and as measured
    growth = next(r for r in claim_rows(text, "000") if "MB per token" in r[1])
    assert "= 73,728 B = 0.0737 MB per token per sequence" in growth[2]
    assert "measured here (gpt2, fp32): 73,728 B per token per sequence" in growth[2]
    assert growth[3] == "yes"
    # 001: one prompt length, no prefill-only peak on this synthetic GPU record
    for row in claim_rows(text, "001"):
        assert row[3] == NOT_MEASURED
    # 003: gpt2 and medium measured, large not; the trend measured
    rows003 = claim_rows(text, "003")
    by = {r[1].split(":")[0]: r for r in rows003}
    assert by["gpt2-large"][2] == f"{NOT_MEASURED} (no gpt2-large pair)"
    assert NOT_MEASURED not in by["gpt2"][2] and NOT_MEASURED not in by["gpt2-medium"][2]
    trend = next(r for r in rows003 if "grows with model size" in r[1])
    assert trend[3] == "yes"
    # 004: every baseline measured, counted
    (row004,) = claim_rows(text, "004")
    n_pairs = int(sp["decode_speedup"].notna().sum())
    assert f"every baseline here measured: {n_pairs} none/cached pairs" in row004[2]


def test_a_sweep_without_the_axes_says_not_measured(tmp_path: Path) -> None:
    s = Sweep(tmp_path, grid_records() + [make_record("none", 1, 8, model="gpt2-tiny",
                                                      dtype="bf16")])
    agg.aggregate(s.paths, s.tables)
    out = tmp_path / "explanation.md"
    ex.explain(s.tables, out)
    text = out.read_text()
    assert "Not measured in this sweep: it generates one length only (new_tokens = 5)." in text
    assert "Not measured in this sweep: it has one model only (gpt2-tiny" in text
    assert "Not measured in this sweep (no `static-int8` cell and no `n_kv_head` set)." in text
    # no gpt2 at all: 000's speedup and 003's models are not measured; 002's formula still stands
    assert claim_rows(text, "000")[0][3] == NOT_MEASURED
    assert all(r[3] == NOT_MEASURED for r in claim_rows(text, "003"))
    assert "36,864,000 B" in section(text, 6)
    # the decode growth with prompt length (8 -> 16) is measured here
    (grow, _) = claim_rows(text, "001")
    assert "(prompt 8→16)" in grow[2] and grow[3] == "yes"
    assert re.search(r"none median \d+\.\d\d×", grow[2])


def test_prefill_peak_claim_is_judged_when_a_gpu_measured_it(tmp_path: Path) -> None:
    recs = [make_record(m, 1, p) for m in ("none", "static") for p in (8, 16)]
    for rec in recs:  # what a GPU cell records: the peak up to the first token
        cached = rec["cell"]["kv_mode"] != "none"
        rec["memory"]["prefill_peak_allocated_bytes"] = 1_000_000 + (4096 if cached else 0)
    s = Sweep(tmp_path, recs)
    agg.aggregate(s.paths, s.tables)
    out = tmp_path / "explanation.md"
    ex.explain(s.tables, out)
    text = out.read_text()
    ratio = 1_004_096 / 1_000_000
    assert (f"During the prefill alone (torch's peak allocated up to the first token), cached / "
            f"none: static median {ratio:.2f}× ({ratio:.2f}×–{ratio:.2f}×, 2 pairs).") in text
    (_, prefill) = claim_rows(text, "001")
    assert prefill[2] == f"prefill peak allocated, cached / none: static median {ratio:.2f}× " \
                         f"({ratio:.2f}×–{ratio:.2f}×, 2 pairs)"
    assert prefill[3] == "yes"
