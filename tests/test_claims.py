"""The write-ups' claims (data/claims.csv) checked against a sweep: measured here beside each, or
"not measured" with the reason."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from fixtures import AXIS_LENGTHS, Sweep, axis_records, grid_records, make_record

from kvbench.analysis import aggregate as agg
from kvbench.analysis import claims
from kvbench.analysis import frame as fr

NOT_MEASURED = "not measured in this sweep"
WRITEUPS = {
    "000": "nanoGPT-inference-optimization",
    "001": "nanoGPT Inference Benchmarking (KV Cache Focus)",
    "002": "KV-Cache Implementation Summary",
    "003": "nanoGPT + KV Cache",
    "004": "KV-Cache Benchmark Analysis: Is 6.7× Speedup Reasonable?",
}


@pytest.fixture(scope="module")
def axes(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("claims"), axis_records())
    agg.aggregate(s.paths, s.tables)
    s.df = fr.read_cells(s.tables / "cells.csv")
    s.sp = agg.speedup_table(s.df)
    return s


def claim_rows(df: pd.DataFrame, writeup: str) -> pd.DataFrame:
    table = claims.table(df, "dev")
    return table[table["write-up"] == WRITEUPS[writeup]]


def test_claims_cite_write_ups_by_title_and_say_not_measured(axes: Sweep) -> None:
    rows = claim_rows(axes.df, "002")
    by = {r["claim"].split(" new tokens")[0]: r for _, r in rows.iterrows() if "new tokens" in r["claim"]}
    for n in AXIS_LENGTHS:
        med = axes.sp[(axes.sp["cell.kv_mode"] == "static") & (axes.sp["cell.new_tokens"] == n)][
            "total_speedup"
        ].median()
        assert f"static median {med:.2f}×" in by[str(n)]["measured here"]
    for n in (100, 500):
        assert by[str(n)]["measured here"] == f"{NOT_MEASURED} (no pair at new_tokens = {n})"
        assert by[str(n)]["agrees?"] == NOT_MEASURED
    mem = rows[rows["claim"].str.contains("per 1000 tokens")].iloc[0]
    assert "`2 × 12 × 1 × 12 × 1000 × 64 × 2` = 36,864,000 B = 36.9 MB" in mem["measured here"]
    assert mem["agrees?"].startswith("no: the write-up is off by ~12× (36.9 MB / 3 MB = 12.3)")
    growth = claim_rows(axes.df, "000").iloc[1]
    assert "measured here (gpt2, fp32): 73,728 B per token per sequence" in growth["measured here"]
    assert growth["agrees?"] == "yes"
    prompt, prefill = claim_rows(axes.df, "001").itertuples(index=False)
    assert prompt[3] == NOT_MEASURED and prefill[3] == "yes"  # one prompt length; prefill peaks equal
    rows003 = claim_rows(axes.df, "003")
    assert rows003.iloc[2]["measured here"] == f"{NOT_MEASURED} (no pair at model = gpt2-large)"
    assert rows003.iloc[3]["agrees?"] == "yes"
    (row004,) = claim_rows(axes.df, "004").itertuples(index=False)
    assert (
        f"every baseline here measured: {int(axes.sp['decode_speedup'].notna().sum())} none/cached pairs" in row004[2]
    )


def test_a_sweep_without_the_axes_says_not_measured(tmp_path: Path) -> None:
    s = Sweep(tmp_path, grid_records() + [make_record("none", 1, 8, model="gpt2-tiny", dtype="bf16")])
    agg.aggregate(s.paths, s.tables)
    df = fr.read_cells(s.tables / "cells.csv")
    assert (claim_rows(df, "000").iloc[0]["agrees?"], claim_rows(df, "003")["agrees?"].unique().tolist()) == (
        NOT_MEASURED,
        [NOT_MEASURED],
    )
    grow = claim_rows(df, "001").iloc[0]
    assert "(prompt 8→16)" in grow["measured here"] and grow["agrees?"] == "yes"


def test_claimed_values_and_the_model_trend(axes: Sweep) -> None:
    assert claims.claimed("KV-Cache Implementation Summary", "new_tokens")["100"] == (10.0, 15.0)
    assert claims.claimed("no such write-up", "model") == {}
    measured, verdict = claims.model_trend(axes.df, axes.sp, "dev", None)
    # the synthetic cost model: the larger model gains more from every cache
    assert measured.startswith("median whole-generation speedup by model, smallest to largest: concat: ")
    assert "(grows)" in measured and "(falls)" not in measured and verdict == "yes"
    one = axes.sp[axes.sp["cell.model"] == "gpt2"]
    assert claims.model_trend(axes.df, one, "dev", None) == "one model"
