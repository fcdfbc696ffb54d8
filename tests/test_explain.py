"""explanation.md: section functions return DataFrames and numbers (asserted here); the template
lays them out. Synthetic records from tests/fixtures.py: gpt2 and gpt2-medium, 20 and 50 new
tokens, every kv mode including static-int8, and a grouped-query variant."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from fixtures import (
    AXIS_LENGTHS,
    AXIS_PROMPT,
    GQA_HEADS,
    INT8_LOGIT_DIFF,
    INT8_MISMATCH,
    MODELS,
    REPO,
    Sweep,
    axis_records,
    grid_records,
    kv_bytes_for,
    make_record,
)

from kvbench.analysis import aggregate as agg
from kvbench.analysis import explain as ex
from kvbench.analysis import frame as fr
from kvbench.core import record as kvrecord

NOT_MEASURED = "not measured in this sweep"


@pytest.fixture(scope="module")
def axes(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("explain"), axis_records())
    agg.aggregate(s.paths, s.tables)
    assert ex.main(["--tables", str(s.tables), "--out", str(s.dir / "explanation.md")]) == 0
    s.df = fr.read_cells(s.tables / "cells.csv")
    s.sp = agg.speedup_table(s.df)
    return s


def test_regenerates_byte_identically_from_cells_csv_alone(axes: Sweep, tmp_path: Path) -> None:
    only = tmp_path / "tables"
    only.mkdir()
    shutil.copy(axes.tables / "cells.csv", only / "cells.csv")
    out = tmp_path / "sub" / "explanation.md"
    proc = subprocess.run(
        [sys.executable, "-m", "kvbench.analysis.explain", "--tables", str(only), "--out", str(out)],
        cwd=REPO,
        env={"PYTHONHASHSEED": "999", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    text = (axes.dir / "explanation.md").read_text()
    # the same document but for the list of tables it names
    assert out.read_text().split("\n", 3)[3] == text.split("\n", 3)[3]
    assert text.startswith("# What the KV cache did in this sweep\n")
    assert "nan" not in text.lower().replace("nanogpt", "") and "shared/seeds" not in text
    assert "KV bytes = 2 × n_layer × batch × n_kv_head × tokens × head_dim × bytes per element" in text


def test_the_document_follows_the_tables(axes: Sweep, tmp_path: Path) -> None:
    cells = pd.read_csv(axes.tables / "cells.csv")
    target = "gpt2/fp32/static/b1-p16-n20-sdpa.json"
    cells["memory.kv_cache_bytes_measured"] = cells["memory.kv_cache_bytes_measured"].astype("Int64")
    cells.loc[cells["record"] == target, "memory.kv_cache_bytes_measured"] = 12345
    cells.to_csv(tmp_path / "cells.csv", index=False, lineterminator="\n")
    size = ex.cache_size(fr.read_cells(tmp_path / "cells.csv"))
    # the floor section names the read bandwidth the floor divides by, the copy beside it
    assert ex.floor(axes.df)["read_bw"] == "3,000 GB/s" and ex.floor(axes.df)["copy_bw"] == "2,000 GB/s"
    formula = kv_bytes_for("gpt2", "static", 1, AXIS_PROMPT + 20 - 1)
    assert size["differ"] == [f"`{target}`: formula {formula:,} B, measured 12,345 B"]
    assert ex.cache_size(axes.df)["differ"] == []


def test_missing_tables_fail_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert ex.main(["--tables", str(tmp_path / "none"), "--out", str(tmp_path / "x.md")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("explain: error: ") and err.count("\n") == 1 and "cells.csv" in err
    assert not (tmp_path / "x.md").exists()


def test_cache_size_section_checks_every_cell_against_kv_cache_bytes(axes: Sweep) -> None:
    size = ex.cache_size(axes.df)
    n_cached = sum(r["status"] == "ok" and r["cell"]["kv_mode"] != "none" for r in axes.records)
    assert (size["n"], size["agree_formula"], size["agree_measured"]) == (n_cached, n_cached, n_cached)
    big = size["largest"].set_index(["model", "kv_mode", "K/V heads"])
    tokens = AXIS_PROMPT + max(AXIS_LENGTHS) - 1
    for model, mode, kv, text in (
        ("gpt2", "static", 12, f"2 × 12 × 1 × 12 × {tokens} × 64 × 4"),
        ("gpt2", "static-int8", 12, f"2 × 12 × 1 × 12 × {tokens} × (64 + 4)"),
        ("gpt2-medium", "static", GQA_HEADS, f"2 × 24 × 1 × 4 × {tokens} × 64 × 4"),
    ):
        row, n = big.loc[(model, mode, kv)], kv_bytes_for(model, mode, 1, tokens, n_kv_head=None if kv != 4 else 4)
        assert row["formula"] == f"`{text}`" and row["= bytes"] == row["record: measured"] == f"{n:,} B"
        assert row["cache / weights"] == f"{n / (MODELS[model][3] * 4):.3g}"
    # the largest gpt2-medium concat cache is at 20 tokens: its 50-token cell ran out of memory
    assert big.loc[("gpt2-medium", "concat", 16), "tokens"] == AXIS_PROMPT + 20 - 1
    cross = size["crossover"].set_index(["model", "kv_mode", "K/V heads"]).loc[("gpt2", "static", 12)]
    assert cross["cache per token per sequence"] == f"{2 * 12 * 12 * 64 * 4:,} B"


def test_speedup_growth_tables_are_the_pair_tables(axes: Sweep) -> None:
    growth = ex.speedup_growth(axes.df, axes.sp)
    table, line = growth["by_length"]
    by_length = axes.csv("speedup_by_length.csv")
    g = by_length[
        (by_length["model"] == "gpt2") & (by_length["kv_mode"] == "static") & by_length["n_kv_head"].isna()
    ].set_index("new_tokens")
    row = table[(table["kv_mode"] == "static") & (table["model"] == "gpt2") & (table["n_kv_head"] == "all")].iloc[0]
    for n in AXIS_LENGTHS:
        assert row[f"new_tokens = {n}"] == f"{g.at[n, 'total_speedup']:.2f}× / {g.at[n, 'decode_speedup']:.2f}×"
    assert row["total speedup"] == "grows"
    oom = table[(table["kv_mode"] == "concat") & (table["model"] == "gpt2-medium")].iloc[0]
    assert (oom["new_tokens = 50"], oom["total speedup"]) == ("not measured (oom)", "–")
    assert (
        line == "Measured: of the 7 rows with two or more finished pairs, the whole-generation speedup along "
        "new_tokens grows in 7."
    )
    models = growth["by_model"][0]
    assert [c for c in models.columns if c.startswith("model = ")] == ["model = gpt2", "model = gpt2-medium"]


def test_when_the_cache_does_not_help(axes: Sweep) -> None:
    part = ex.not_helping(axes.df, axes.sp)
    static = axes.sp[axes.sp["cell.kv_mode"] == "static"]["prefill_speedup"].dropna().sort_values()
    assert part["prefill"]["static"] == (
        f"median {static.median():.2f}× ({static.iloc[0]:.2f}×–{static.iloc[-1]:.2f}×, {len(static)} pairs)"
    )
    assert part["lost"] == [] and part["any_pair"]  # every synthetic cached cell is faster
    assert set(part["short"]["new_tokens"]) == set(AXIS_LENGTHS)


def test_memory_section_states_peak_beyond_weights_beside_the_formula(axes: Sweep) -> None:
    mem = ex.memory_cost(axes.df)
    assert mem["beyond_sources"] == ["cuda_allocator"] and mem["beyond_axis"] == "new_tokens"
    row = mem["beyond"][
        (mem["beyond"]["kv_mode"] == "static")
        & (mem["beyond"]["model"] == "gpt2")
        & (mem["beyond"]["n_kv_head"] == "all")
    ].iloc[0]
    rec = next(
        r
        for r in axes.records
        if r["cell"]["model"] == "gpt2"
        and r["cell"]["kv_mode"] == "static"
        and r["cell"]["new_tokens"] == 20
        and r["cell"]["n_kv_head"] is None
    )
    m = rec["memory"]
    beyond = max(m["prefill_peak_allocated_bytes"], m["decode_peak_allocated_bytes"]) - m["weights_bytes"]
    assert row["new_tokens 20"] == f"{beyond / 2**20:.2f} ({m['kv_cache_bytes_formula'] / 2**20:.2f})"
    assert set(mem["prefill"]) == {"concat", "static", "static-int8"}  # prefill peaks measured on every cell


def test_variants_section(axes: Sweep) -> None:
    v = ex.variants(axes.df).set_index(["model", "kv_mode", "K/V heads"])
    int8 = v.loc[("gpt2", "static-int8", "12 of 12")]
    assert int8["formula's ratio"] == "12/12 × (64 + 4) / (64 × 4) = 0.266"
    assert (
        int8["max logit diff"] == f"{INT8_LOGIT_DIFF * MODELS['gpt2'][4]:.3g}"
        and int8["greedy tokens = none's"] == "2 of 2"
    )
    gqa = v.loc[("gpt2-medium", "static", "4 of 16")]
    assert (gqa["cache bytes / static all heads"], gqa["formula's ratio"]) == (
        "median 0.25 (0.25–0.25, 2 cells)",
        "4/16 = 0.25",
    )
    assert (
        v.loc[("gpt2-medium", "static-int8", "16 of 16"), "greedy tokens = none's"]
        == f"1 of 2; differ from step {INT8_MISMATCH[2]}"
    )
    assert v.loc[("gpt2-medium", "concat", "16 of 16"), "ok cells"] == "1 of 2"  # the oom cell counted, not dropped


def test_a_sweep_without_the_axes_says_not_measured(tmp_path: Path) -> None:
    s = Sweep(tmp_path, grid_records() + [make_record("none", 1, 8, model="gpt2-tiny", dtype="bf16")])
    agg.aggregate(s.paths, s.tables)
    df = fr.read_cells(s.tables / "cells.csv")
    growth = ex.speedup_growth(df, agg.speedup_table(df))
    assert growth["by_length"] is None and growth["by_model"] is None and ex.variants(df) is None
    ex.explain(s.tables, tmp_path / "explanation.md")
    text = (tmp_path / "explanation.md").read_text()
    assert "Not measured in this sweep: it generates one length only (new_tokens = 5)." in text


def test_explain_does_not_import_matplotlib() -> None:
    code = "import sys, kvbench.analysis.explain; print('matplotlib' in sys.modules)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr


def alloc_records() -> list[dict]:
    """static, concat and paged (blocks of 4 and 16) at batch 1 and 4, prompts spread or not, a shared
    prefix or not; MiB-round bytes, so each sentence's numbers are known here."""
    mib, recs = 2**20, []
    for batch in (1, 4):
        for spread in (0, 0.5):
            for prefix in (0, 4):
                for mode, blocks in (("static", None), ("concat", None), ("paged", 4), ("paged", 16)):
                    rec = make_record("static" if mode == "paged" else mode, batch, 16)
                    rec["cell"]["kv_mode"] = mode
                    rec["cell"].update({"prompt_spread": spread, "shared_prefix": prefix} if spread or prefix else {})
                    used = batch * 8 * (0.75 if spread else 1) * mib
                    reserved = batch * 8 * mib if blocks is None else used + batch * (0.5 if blocks == 4 else 1) * mib
                    decode = {None: 11.0 if mode == "concat" else 10.0, 4: 12.5, 16: 12.0}[blocks]
                    if (batch, spread, prefix, blocks) == (4, 0.5, 4, 16):
                        decode = 9.0  # the one point where paging decodes faster
                    rec["latency"]["decode_ms_per_token"] = {"median": decode, "min": decode, "max": decode}
                    rec["memory"].update(kv_bytes_reserved=int(reserved), kv_bytes_used=int(used))
                    if blocks is not None:
                        rec["cell"]["block_tokens"] = blocks
                        rec["memory"]["kv_cache_bytes_formula"] = rec["memory"]["kv_cache_bytes_measured"] = None
                    if blocks is not None and prefix:
                        rec["latency"].update(
                            prefill_ms_paged_same_batch={"median": 40.0, "min": 40.0, "max": 40.0},
                            prefill_ms_static_same_batch={"median": 60.0, "min": 60.0, "max": 60.0},
                            prefill_ms_saved_vs_static=20.0,
                        )
                    recs.append(rec)
    return recs


def test_the_explanation_says_what_paging_saves_costs_and_when_static_wins(tmp_path: Path) -> None:
    cells, paths = tmp_path / "results" / "alloc" / "cells", []
    for i, rec in enumerate(alloc_records()):  # one file each: the fixtures' paths do not name spread or prefix
        paths.append(cells / f"{i}.json")
        kvrecord.write_atomic(paths[-1], rec)
    agg.aggregate(paths, tmp_path / "tables")
    ex.explain(tmp_path / "tables", tmp_path / "explanation.md")
    text = (tmp_path / "explanation.md").read_text()
    assert "### Paged blocks against static preallocation: ragged batches and a shared prefix" in text
    assert (
        "- gpt2-tiny fp32 batch 4, spread 0.5, shared prefix 0: static reserves 32.00 MiB for 24.00 MiB of real "
        "tokens (waste 25%); `paged-4` reserves 26.00 MiB (waste 8%), 6.00 MiB less (19% of static's reservation)."
    ) in text
    assert (
        "- gpt2-tiny fp32 batch 4, waste as the spread grows (0 → 0.5): concat 0% → 25%; paged-16 11% → 14%; " in text
    )
    assert (
        "- `paged-4`: +2.50 ms/token against static (median over 8 grid points, +2.50 to +2.50), 1.25× static's" in text
    )
    assert "- `paged-16`: +2.00 ms/token against static (median over 8 grid points, -1.00 to +2.00)" in text
    assert (
        "`paged-4` batch 4, spread 0.5, shared prefix 4: prefill 40.0 ms against static's 60.0 ms, +20.0 ms (+33%)"
        in text
    )
    assert (
        "Of 8 grid points, static decodes faster than every paged block size at 7 and a paged cache is as fast" in text
    )
    assert "- batch 1, spread 0, shared prefix 0 (static wastes 0%, decodes 2.00 ms/token faster)" in text
    trade = text.split("memory traded for time")[1]
    assert "- batch 4, spread 0.5, shared prefix 0 (static wastes 25%, decodes 2.00 ms/token faster)" in trade
    assert "Greedy tokens equal the `none` model's in 32 of 32 cells." in text


def test_a_sweep_without_paged_says_allocation_not_measured(axes: Sweep) -> None:
    text = (axes.dir / "explanation.md").read_text()
    assert "Not measured in this sweep (no `paged` cell recording its KV bytes reserved and used)." in text
