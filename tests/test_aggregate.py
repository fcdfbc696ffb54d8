"""Tables: aggregate, each table a selection of the one frame (exact values, grid order, stable bytes)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd
import pytest
from fixtures import (
    AXIS_LENGTHS,
    AXIS_MODELS,
    AXIS_MODES,
    AXIS_OOM,
    AXIS_PROMPT,
    BATCHES,
    ENGINES,
    GQA_HEADS,
    INT8_LOGIT_DIFF,
    INT8_MISMATCH,
    MODELS,
    MODES,
    OOM_CELL,
    PROMPTS,
    SWEEP,
    VALIDATOR,
    Sweep,
    axis_records,
    by_coords,
    engine_records,
    grid_records,
    kv_bytes_for,
    make_record,
    threads_records,
)

from kvbench.analysis import aggregate as agg
from kvbench.analysis import frame as fr

AXIS_TABLES = ("speedup_by_model.csv", "speedup_by_length.csv", "kv_variants.csv")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("sweep"), grid_records())
    agg.aggregate(s.paths, s.tables)
    return s


@pytest.fixture(scope="module")
def axis_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("axes"), axis_records())
    agg.aggregate(s.paths, s.tables)
    return s


def axis_key(cell: dict[str, Any]) -> tuple:
    return (cell["model"], cell["kv_mode"], cell["new_tokens"], cell["n_kv_head"])


def axis_lookup(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {axis_key(r["cell"]): r for r in records}


def kv_setting(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


# ---------------------------------------------------------------------------------- factory


def test_factory_records_match_the_schema() -> None:
    for rec in grid_records() + [
        make_record("static", 1, 8, status="error"),
        make_record("static", 1, 8, status="unsupported"),
    ]:
        VALIDATOR.validate(rec)
    broken = make_record("static", 1, 8)
    del broken["latency"]["decode_steps"]
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)


# ---------------------------------------------------------------------------------- tables


def test_cells_csv_has_one_flat_row_per_record_including_oom(sweep: Sweep) -> None:
    cells = sweep.csv("cells.csv")
    assert len(cells) == len(MODES) * len(BATCHES) * len(PROMPTS)
    assert {
        "cell.kv_mode",
        "latency.decode_ms_per_token.median",
        "memory.kv_cache_bytes_formula",
        "environment.device_name",
        "record",
    } <= set(cells.columns)
    assert "latency.per_step_decode_ms" not in cells.columns
    assert "latency" not in cells.columns  # the null section of the oom row leaves no column
    # records named as the bundle stores them under cells/, whatever the working directory
    assert cells["record"].iloc[0] == "gpt2-tiny/fp32/none/b1-p8-n5-sdpa.json"
    # grid order: baseline first, then batch, then prompt length
    order = list(zip(cells["cell.kv_mode"], cells["cell.batch"], cells["cell.prompt_len"]))
    assert order == [(m, b, p) for m in MODES for b in BATCHES for p in PROMPTS]
    recs = by_coords(sweep.records)
    for _, row in cells.iterrows():
        rec = recs[(row["cell.kv_mode"], row["cell.batch"], row["cell.prompt_len"])]
        assert row["status"] == rec["status"]
        if rec["status"] == "ok":
            assert (
                row["latency.decode_ms_per_token.median"] == rec["latency"]["decode_ms_per_token"]["median"]
            )  # lossless
            assert row["latency.prefill_ms.max"] == rec["latency"]["prefill_ms"]["max"]
    oom = cells[cells["status"] == "oom"].iloc[0]
    assert (oom["cell.kv_mode"], oom["cell.batch"], oom["cell.prompt_len"]) == OOM_CELL
    assert pd.isna(oom["latency.decode_ms_per_token.median"])
    assert pd.isna(oom["latency.prefill_ms.median"])
    assert oom["memory.torch_peak_allocated_bytes"] == 79 * 2**30
    assert "out of memory" in oom["error"]


def test_speedup_is_exactly_none_over_mode(sweep: Sweep) -> None:
    speedup = sweep.csv("speedup.csv")
    assert len(speedup) == (len(MODES) - 1) * len(BATCHES) * len(PROMPTS)
    assert set(speedup["cell.kv_mode"]) == {"concat", "static"}
    recs = by_coords(sweep.records)
    checked = 0
    for _, row in speedup.iterrows():
        key = (row["cell.kv_mode"], row["cell.batch"], row["cell.prompt_len"])
        mode, none = recs[key], recs[("none", key[1], key[2])]
        if key == OOM_CELL:
            assert row["status"] == "oom" and row["none_status"] == "ok"
            assert pd.isna(row["decode_speedup"]) and pd.isna(row["prefill_speedup"])
            assert row["none_decode_ms"] == none["latency"]["decode_ms_per_token"]["median"]
            continue
        for metric, field in (
            ("prefill", "prefill_ms"),
            ("decode", "decode_ms_per_token"),
            ("total", "total_generate_ms"),
        ):
            expected = none["latency"][field]["median"] / mode["latency"][field]["median"]
            assert row[f"{metric}_speedup"] == expected, (key, metric)  # exact, not approx
            assert row[f"{metric}_ms"] == mode["latency"][field]["median"]
        checked += 1
    assert checked == len(speedup) - 1
    # the cache must win on decode in this synthetic sweep, and not on prefill
    assert (speedup["decode_speedup"].dropna() > 1).all()
    assert (speedup["prefill_speedup"].dropna() < 1).all()


def test_speedup_row_kept_when_the_baseline_failed(tmp_path: Path) -> None:
    recs = [
        make_record("none", 1, 8, status="oom"),
        make_record("static", 1, 8),
        make_record("static", 2, 8),
    ]  # the last has no none partner at all
    s = Sweep(tmp_path, recs)
    agg.aggregate(s.paths, s.tables)
    speedup = s.csv("speedup.csv")
    assert len(speedup) == 1
    row = speedup.iloc[0]
    assert (row["status"], row["none_status"]) == ("ok", "oom")
    assert pd.isna(row["decode_speedup"]) and pd.isna(row["none_decode_ms"])
    assert row["decode_ms"] == recs[1]["latency"]["decode_ms_per_token"]["median"]


def test_tables_say_how_sure_each_timing_is(tmp_path: Path) -> None:
    records = grid_records()
    for rec in records:  # as a cell records them: a spread and a count beside each median
        for stats in (rec["latency"] or {}).values():
            if isinstance(stats, dict):
                stats.update(std=0.05 * stats["median"], n=3)
    s = Sweep(tmp_path, records)
    agg.aggregate(s.paths, s.tables)
    cells = s.csv("cells.csv")
    ok = cells["status"] == "ok"
    raw = pd.read_csv(s.tables / "cells.csv", dtype=str)
    for timing in ("prefill_ms", "decode_ms_per_token", "total_generate_ms"):
        assert set(raw.loc[ok, f"latency.{timing}.n"]) == {"3"}  # a count, never 3.0
        assert (cells.loc[ok, f"latency.{timing}.std"] == 0.05 * cells.loc[ok, f"latency.{timing}.median"]).all()
    table = s.csv("sweep_kv_static.csv")
    assert (table["timed_iters"] == 3).all()
    assert table["decode_std_ms"].tolist() == pytest.approx((0.05 * table["decode_ms_per_token"]).tolist(), rel=1e-5)


def test_sweep_tables_per_mode(sweep: Sweep) -> None:
    for mode in MODES:
        table = sweep.csv(f"sweep_kv_{mode}.csv")
        assert list(table.columns[:8]) == [
            "engine",
            "model",
            "dtype",
            "attention",
            "new_tokens",
            "batch",
            "prompt_len",
            "status",
        ]
        assert {
            "prefill_ms",
            "decode_ms_per_token",
            "decode_tokens_per_s",
            "peak_memory_mib",
            "peak_memory_source",
        } <= set(table.columns)
        assert len(table) == len(BATCHES) * len(PROMPTS)
        recs = by_coords(sweep.records)
        for _, row in table.iterrows():
            rec = recs[(mode, row["batch"], row["prompt_len"])]
            assert row["status"] == rec["status"]
            if rec["status"] != "ok":
                assert pd.isna(row["decode_ms_per_token"])
                continue
            assert row["decode_ms_per_token"] == pytest.approx(
                rec["latency"]["decode_ms_per_token"]["median"], rel=1e-5
            )
            assert row["decode_tokens_per_s"] == pytest.approx(rec["latency"]["decode_tokens_per_s"], rel=1e-5)
            assert row["peak_memory_mib"] == pytest.approx(
                rec["memory"]["torch_peak_allocated_bytes"] / 2**20, rel=1e-5
            )
            assert row["peak_memory_source"] == "torch_peak_allocated"


def test_peak_memory_falls_back_to_rss_on_cpu(tmp_path: Path) -> None:
    rec = make_record("static", 1, 8)
    rec["memory"]["torch_peak_allocated_bytes"] = None  # a CPU run: torch tracks nothing
    s = Sweep(tmp_path, [rec])
    agg.aggregate(s.paths, s.tables)
    row = s.csv("sweep_kv_static.csv").iloc[0]
    assert row["peak_memory_source"] == "rss_peak"
    assert row["peak_memory_mib"] == pytest.approx(300_000_000 / 2**20, rel=1e-5)


def test_aggregate_is_byte_identical_whatever_the_input_order_or_place(sweep: Sweep, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "results" / SWEEP / "cells"
    shutil.copytree(sweep.dir / "cells", moved)
    out = tmp_path / "tables"
    assert agg.main(["--records", str(moved), "--out", str(out)]) == 0  # a directory, via CLI
    names = sorted(p.name for p in sweep.tables.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (sweep.tables / name).read_bytes(), name
    out2 = tmp_path / "tables2"
    agg.aggregate(list(reversed(sweep.paths)), out2)
    for name in names:
        assert (out2 / name).read_bytes() == (sweep.tables / name).read_bytes(), name


def test_a_sweep_whose_grid_has_no_cell_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    # ct2 runs only its own cache (concat): crossed with static alone, the grid is empty
    config = tmp_path / "config.yaml"
    config.write_text("sweeps:\n  x:\n    grid: {engine: [ct2], kv_mode: [static]}\n")
    assert agg.main(["--sweep", "x", "--config", str(config), "--out", str(tmp_path / "t")]) == 1
    err = capsys.readouterr().err
    assert err == f"aggregate: error: no *.json records: sweep x's grid in {config} names none\n"


def test_a_threads_sweep_aggregates_with_the_threads_as_its_axis(tmp_path: Path) -> None:
    s = Sweep(tmp_path, threads_records())
    agg.aggregate(s.paths, s.tables)  # cells apart only in their threads are not twins
    cells = s.csv("cells.csv")
    assert sorted(cells["cell.threads"]) == [1, 1, 2, 2, 4, 4]
    assert fr.x_axis(fr.read_cells(s.tables / "cells.csv")) == "cell.threads"
    assert s.csv("speedup.csv")["cell.threads"].tolist() == [1, 2, 4]  # each cache beside its none at equal threads


def test_axis_tables_absent_when_their_axis_does_not_vary(sweep: Sweep) -> None:
    # the base sweep: one model, one length, no int8 cache, no n_kv_head
    for name in AXIS_TABLES:
        assert not (sweep.tables / name).exists(), name


def test_speedup_by_model_is_exact_and_ordered_by_parameters(axis_sweep: Sweep) -> None:
    table = axis_sweep.csv("speedup_by_model.csv")
    assert tuple(table.columns) == agg.AXIS_SPEEDUP_COLUMNS
    recs = axis_lookup(axis_sweep.records)
    # every cached cell of the sweep has its none partner: 2 models x 2 lengths x (3 modes + GQA)
    assert len(table) == len(AXIS_MODELS) * len(AXIS_LENGTHS) * 4
    # write-up 003's order: for each setting, the models by size, each model's modes together
    order = [(kv_setting(r["n_kv_head"]), r["new_tokens"], r["model"], r["kv_mode"]) for _, r in table.iterrows()]
    expected = [
        (kv, n, m, mode)
        for kv, modes in ((None, AXIS_MODES[1:]), (GQA_HEADS, ("static",)))
        for n in AXIS_LENGTHS
        for m in AXIS_MODELS
        for mode in modes
    ]
    assert order == expected
    for _, row in table.iterrows():
        key = (row["model"], row["kv_mode"], row["new_tokens"], kv_setting(row["n_kv_head"]))
        rec, none = recs[key], recs[(key[0], "none", key[2], key[3])]
        n_params = MODELS[row["model"]][3] - (0 if key[3] is None else 1000 * key[3])
        assert (row["n_params"], row["n_layer"]) == (n_params, MODELS[row["model"]][0])
        if (row["model"], row["kv_mode"], row["new_tokens"]) == AXIS_OOM:
            assert (row["status"], row["none_status"]) == ("oom", "ok")
            assert pd.isna(row["total_speedup"]) and pd.isna(row["decode_speedup"])
            continue
        total, none_total = (r["latency"]["total_generate_ms"]["median"] for r in (rec, none))
        decode, none_decode = (r["latency"]["decode_ms_per_token"]["median"] for r in (rec, none))
        assert row["total_speedup"] == none_total / total  # exact: from the ms values
        assert row["total_s"] == total / 1000.0 and row["none_total_s"] == none_total / 1000.0
        assert row["decode_speedup"] == none_decode / decode
        assert row["decode_ms_per_token"] == decode
    # the synthetic cost model makes the cache pay off more on the bigger model
    plain = table[table["n_kv_head"].isna() & table["total_speedup"].notna()]
    for (mode, n), g in plain.groupby(["kv_mode", "new_tokens"]):
        if len(g) == 2:
            assert list(g["model"]) == list(AXIS_MODELS)
            assert g["total_speedup"].is_monotonic_increasing, (mode, n)


def test_speedup_by_length_has_the_same_pairs_ordered_by_length(axis_sweep: Sweep) -> None:
    by_length = axis_sweep.csv("speedup_by_length.csv")
    by_model = axis_sweep.csv("speedup_by_model.csv")
    assert tuple(by_length.columns) == agg.AXIS_SPEEDUP_COLUMNS
    assert sorted(by_length["record"]) == sorted(by_model["record"])
    merged = by_length.merge(by_model, on="record", suffixes=("", "_m"))
    for col in ("total_speedup", "decode_speedup", "total_s"):
        same = merged[col].isna() & merged[f"{col}_m"].isna() | (merged[col] == merged[f"{col}_m"])
        assert same.all(), col
    # lines over new_tokens: model (by size), n_kv_head setting, mode; length ascending inside
    keys = [(r["model"], kv_setting(r["n_kv_head"]) or 0, r["kv_mode"]) for _, r in by_length.iterrows()]
    assert [k[0] for k in keys] == sorted((k[0] for k in keys), key=list(AXIS_MODELS).index)
    for _, g in by_length.groupby(["model", "kv_mode", by_length["n_kv_head"].fillna(0)]):
        assert list(g["new_tokens"]) == list(AXIS_LENGTHS)
        ok = g["decode_speedup"].dropna()
        assert ok.is_monotonic_increasing  # longer generations: larger per-token speedup here
    row = by_length[
        (by_length["model"] == "gpt2")
        & (by_length["kv_mode"] == "static")
        & by_length["n_kv_head"].isna()
        & (by_length["new_tokens"] == 50)
    ].iloc[0]
    recs = axis_lookup(axis_sweep.records)
    rec, none = recs[("gpt2", "static", 50, None)], recs[("gpt2", "none", 50, None)]
    assert row["decode_speedup"] == (
        none["latency"]["decode_ms_per_token"]["median"] / rec["latency"]["decode_ms_per_token"]["median"]
    )


def test_kv_variants_table_bytes_speed_and_logit_error(axis_sweep: Sweep) -> None:
    table = axis_sweep.csv("kv_variants.csv")
    assert tuple(table.columns) == agg.KV_VARIANT_COLUMNS
    assert len(table) == len(axis_sweep.records)  # one row per cell, none and oom included
    recs = axis_lookup(axis_sweep.records)
    tokens = {n: AXIS_PROMPT + n - 1 for n in AXIS_LENGTHS}
    for _, row in table.iterrows():
        kv_set = None if row["n_kv_head"] == MODELS[row["model"]][1] else int(row["n_kv_head"])
        rec = recs[(row["model"], row["kv_mode"], row["new_tokens"], kv_set)]
        assert row["n_head"] == MODELS[row["model"]][1]  # filled from a sibling for the oom cell
        if row["status"] != "ok":
            assert (row["model"], row["kv_mode"], row["new_tokens"]) == AXIS_OOM
            assert pd.isna(row["decode_ms_per_token"]) and pd.isna(row["kv_cache_bytes_measured"])
            continue
        if row["kv_mode"] == "none":
            assert pd.isna(row["kv_cache_bytes_formula"]) and pd.isna(row["decode_speedup"])
            continue
        expected = kv_bytes_for(row["model"], row["kv_mode"], 1, tokens[row["new_tokens"]], n_kv_head=kv_set)
        assert row["kv_cache_bytes_formula"] == expected == row["kv_cache_bytes_measured"]
        assert row["kv_cache_mib"] == expected / 2**20
        none = recs[(row["model"], "none", row["new_tokens"], kv_set)]
        assert row["decode_speedup"] == (
            none["latency"]["decode_ms_per_token"]["median"] / rec["latency"]["decode_ms_per_token"]["median"]
        )
        assert row["decode_tokens_per_s"] == rec["latency"]["decode_tokens_per_s"]
    plain = table[(table["kv_mode"] == "static") & (table["n_kv_head"] == table["n_head"])]
    for _, base in plain.iterrows():
        at = (table["model"] == base["model"]) & (table["new_tokens"] == base["new_tokens"])
        int8 = table[at & (table["kv_mode"] == "static-int8")].iloc[0]
        gqa = table[at & (table["kv_mode"] == "static") & (table["n_kv_head"] == GQA_HEADS)].iloc[0]
        # int8: (64 + 4) bytes per head vector instead of 64 x 4; GQA: 4 of n_head heads
        assert int8["kv_cache_bytes_measured"] * 64 * 4 == base["kv_cache_bytes_measured"] * 68
        assert gqa["kv_cache_bytes_measured"] * base["n_head"] == base["kv_cache_bytes_measured"] * GQA_HEADS
        assert int8["max_logit_diff"] == INT8_LOGIT_DIFF * MODELS[base["model"]][4]
        assert base["max_logit_diff"] == 0.0
    bad = table[table["matches_reference"].astype(str) == "False"]
    assert [(r["model"], r["new_tokens"], r["first_mismatch_step"]) for _, r in bad.iterrows()] == [INT8_MISMATCH]
    assert list(bad["kv_mode"]) == ["static-int8"]


def test_axis_tables_follow_the_sweep_and_stale_copies_go(axis_sweep: Sweep, tmp_path: Path) -> None:
    out = tmp_path / "tables"
    shutil.copytree(axis_sweep.tables, out)
    # one model, two lengths, no variant: only the length table stays
    recs = [
        r
        for r in axis_sweep.records
        if r["cell"]["model"] == "gpt2"
        and r["cell"]["kv_mode"] in ("none", "static")
        and r["cell"]["n_kv_head"] is None
    ]
    s = Sweep(tmp_path / "one-model", recs)
    agg.aggregate(s.paths, out)
    assert (out / "speedup_by_length.csv").is_file()
    assert not (out / "speedup_by_model.csv").exists()
    assert not (out / "kv_variants.csv").exists()
    assert len(pd.read_csv(out / "speedup_by_length.csv")) == len(AXIS_LENGTHS)


def test_a_third_engine_keeps_its_rows_and_pairs_within_its_engine(tmp_path: Path) -> None:
    recs = engine_records()
    s = Sweep(tmp_path, recs)
    agg.aggregate(s.paths, s.tables)
    by_model = s.csv("speedup_by_model.csv")
    assert sorted(set(by_model["engine"])) == sorted(ENGINES)
    assert len(by_model) == len(ENGINES) * len(AXIS_MODELS)  # one static row per engine and model
    ms = {
        (r["cell"]["engine"], r["cell"]["model"], r["cell"]["kv_mode"]): r["latency"]["decode_ms_per_token"]["median"]
        for r in recs
    }
    for _, row in by_model.iterrows():  # each engine's cache against its own none
        key = (row["engine"], row["model"])
        assert row["decode_speedup"] == ms[(*key, "none")] / ms[(*key, "static")]
    static = s.csv("sweep_kv_static.csv")
    assert sorted(static["engine"]) == sorted(ENGINES * len(AXIS_MODELS))
    ct2 = static[static["engine"] == "ct2"]
    assert set(ct2["peak_memory_source"]) == {"rss_peak"}  # no torch peak: the process RSS
    assert len(s.csv("speedup.csv")) == len(ENGINES) * len(AXIS_MODELS)
