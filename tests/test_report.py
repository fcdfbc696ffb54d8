"""summary.md and the number formats every report shares: section functions return DataFrames and
numbers (asserted here), the template lays them out."""

from __future__ import annotations

import pandas as pd
import pytest
from fixtures import OOM_CELL, SWEEP, Sweep, grid_records, make_record

from kvbench.analysis import aggregate as agg
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp

OOM_MESSAGE = "CUDA out of memory. Tried to allocate 2.00 MiB"


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("report"), grid_records())
    agg.aggregate(s.paths, s.tables)
    s.df = fr.read_cells(s.tables / "cells.csv")
    return s


def test_summary_sections_name_counts_latency_best_speedup_and_the_oom(sweep: Sweep) -> None:
    part = rp.summary(sweep.df, SWEEP)
    assert (part["n"], part["statuses"]) == (12, "ok 11, oom 1")
    latency = part["latency"].set_index("kv_mode")
    cells = pd.read_csv(sweep.tables / "cells.csv")
    static = cells[(cells["cell.kv_mode"] == "static") & (cells["status"] == "ok")]
    assert latency.at["static", "ok cells"] == len(static)
    assert latency.at["static", "fastest ms/token"] == f"{static['latency.decode_ms_per_token.median'].min():.3f}"
    assert latency.at["concat", "ok cells"] == 3  # the oom cell is not a latency
    speedup = sweep.csv("speedup.csv")
    best = speedup.loc[speedup["decode_speedup"].idxmax()]
    assert part["best"]["speedup"] == f"{best['decode_speedup']:.2f}×" and part["best"]["mode"] == best["cell.kv_mode"]
    assert part["speedups"].set_index("kv_mode").at[best["cell.kv_mode"], "pairs"] == 3 + (
        best["cell.kv_mode"] != "concat"
    )
    failed = part["failed"].astype(str).values.tolist()
    assert failed == [
        [
            "oom",
            OOM_CELL[0],
            f"batch={OOM_CELL[1]}, prompt_len={OOM_CELL[2]}",
            "CUDA out of memory. Tried to allocate 2.00 MiB",
        ]
    ]
    text = (sweep.tables / "summary.md").read_text()  # the template lays exactly these out
    assert text.startswith(f"# kvbench summary: {SWEEP}\n") and rp.md(part["failed"]) in text


def test_a_kv_mode_with_no_finished_cell_keeps_its_row(tmp_path) -> None:
    s = Sweep(tmp_path, [make_record("none", 1, 8), make_record("static", 1, 8, status="oom")])
    agg.aggregate(s.paths, s.tables)
    latency = rp.summary(fr.read_cells(s.tables / "cells.csv"), None)["latency"].set_index("kv_mode")
    assert latency.loc["static"].tolist() == [0, "–", "–", "–", "–", "–"]


@pytest.mark.parametrize(
    "fn,value,text",
    [
        (rp.setting, 16, "16"),
        (rp.setting, pd.NA, "none"),
        (rp.setting, "sdpa", "sdpa"),
        (rp.num, 1234.5, "1,234"),
        (rp.num, 12.34, "12.3"),
        (rp.num, 0.01234, "0.0123"),
        (rp.x, 2.5, "2.50×"),
        (rp.x, None, "–"),
        (rp.heads, pd.NA, "all"),
        (rp.heads, 4, "4"),
        (rp.mib, 3 * 2**20, "3.00 MiB"),
    ],
)
def test_number_formats(fn, value, text) -> None:
    assert fn(value) == text


def test_spread_and_trend() -> None:
    assert rp.spread([2.0]) == "2.00×"
    assert rp.spread([1.0, 3.0, 2.0]) == "median 2.00× (1.00×–3.00×, 3 pairs)"
    assert rp.spread([]) == "–"
    assert (rp.trend([1, 2, None, 3]), rp.trend([3, 1]), rp.trend([1, 3, 2]), rp.trend([1])) == (
        "grows",
        "falls",
        "mixed",
        "–",
    )
