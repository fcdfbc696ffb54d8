"""The frame: records and cells.csv give one typed frame (whole numbers Int64, ordered
categoricals, models by parameter count), its per-step long form, and its pairs."""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from fixtures import (
    AXIS_MODES,
    GQA_HEADS,
    NEW_TOKENS,
    OOM_CELL,
    Sweep,
    axis_records,
    by_coords,
    grid_records,
    make_record,
    write_records,
)

from kvbench.analysis import aggregate as agg
from kvbench.analysis import explain as ex
from kvbench.analysis import frame as fr

WHOLE = (
    "cell.batch cell.prompt_len cell.new_tokens cell.n_kv_head n_params n_layer n_head n_embd block_size kv_heads "
    "head_dim elem_bytes tokens kv_formula peak_bytes memory.weights_bytes latency.decode_steps".split()
)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("sweep"), grid_records())
    agg.aggregate(s.paths, s.tables)
    return s


def test_records_and_cells_csv_give_one_typed_frame(tmp_path: Path) -> None:
    s = Sweep(tmp_path, axis_records())  # an oom cell (no model_info), grouped-query cells (n_kv_head set)
    agg.aggregate(s.paths, s.tables)
    direct, again = fr.from_records(s.paths), fr.read_cells(s.tables / "cells.csv")
    for df in (direct, again):
        assert {c: str(df[c].dtype) for c in WHOLE} == dict.fromkeys(WHOLE, "Int64")
        modes = [m for m in fr.KV_MODES if m in AXIS_MODES]  # the presets' order, those the sweep ran
        for c, order in (("cell.model", ["gpt2", "gpt2-medium"]), ("cell.kv_mode", modes)):
            assert df[c].cat.ordered and list(df[c].cat.categories) == order
        assert df["status"].cat.ordered and list(df["status"].cat.categories) == ["ok", "oom"]
    pd.testing.assert_frame_equal(direct[WHOLE + ["record", "cell.model"]], again[WHOLE + ["record", "cell.model"]])
    oom = direct[direct["status"] == "oom"].iloc[0]  # failed before its model was built: shape from a sibling
    assert (oom["n_layer"], oom["kv_heads"], oom["head_dim"]) == (24, 16, 64) and pd.isna(oom["model_info.n_layer"])
    gqa = direct["cell.n_kv_head"] == GQA_HEADS  # "all heads" is the empty setting, a count otherwise
    assert gqa.sum() == 8 and direct.loc[~gqa, "cell.n_kv_head"].isna().all()


def test_models_are_ordered_by_parameter_count_and_named_with_their_family(tmp_path: Path) -> None:
    recs = [
        make_record("none", 1, 8, model="gpt2-medium", family="gpt2"),
        make_record("none", 1, 8, model="gpt2", family="llama"),  # a family named by the record, whatever the name
        make_record("static", 1, 8, model="gpt2", status="oom"),
        make_record("none", 1, 8, model="gpt2-tiny"),  # a record without the field
    ]
    df = fr.from_records(write_records(tmp_path, recs))
    assert list(df["cell.model"].cat.categories) == ["gpt2-tiny", "gpt2", "gpt2-medium"]
    family = df.set_index(["cell.model", "cell.kv_mode"])["family"]
    assert family[("gpt2", "static")] == "llama" and pd.isna(family[("gpt2-tiny", "none")])  # oom: from its sibling
    assert ex.desc(df, "gpt2") == "gpt2 (llama, 124M params, 12 layers)"
    assert ex.desc(df, "gpt2-tiny") == "gpt2-tiny (0M params, 2 layers)"


def test_pairs_join_on_every_other_setting_and_fall_back_to_the_eager_none(tmp_path: Path) -> None:
    compiled = make_record("static", 1, 8)
    compiled["cell"]["compile"] = True
    recs = [
        make_record("none", 1, 8),
        compiled,  # no compiled none: paired with the eager one
        make_record("static", 1, 8, n_kv_head=1),  # no none at one K/V head: no pair
        make_record("static", 1, 8, engine="hf"),  # another engine's none is not its baseline
        make_record("none", 1, 8, engine="hf", status="oom"),
    ]
    p = fr.pairs(fr.from_records(write_records(tmp_path, recs)))
    got = sorted(zip(p["cell.engine"], p["cell.compile"], p["record_none"], p["none_status"].astype(str)))
    assert got == [
        ("hf", False, "hf/gpt2-tiny/fp32/none/b1-p8-n5-sdpa.json", "oom"),
        ("kvbench", True, "gpt2-tiny/fp32/none/b1-p8-n5-sdpa.json", "ok"),
    ]
    row = p[p["cell.engine"] == "kvbench"].iloc[0]
    assert row["decode_speedup"] == (
        recs[0]["latency"]["decode_ms_per_token"]["median"] / compiled["latency"]["decode_ms_per_token"]["median"]
    )
    assert pd.isna(p.loc[p["cell.engine"] == "hf", "decode_speedup"]).all()


def test_cells_csv_keeps_integers_integral(sweep: Sweep) -> None:
    text = pd.read_csv(sweep.tables / "cells.csv", dtype=str, keep_default_na=False)
    assert set(text["model_info.n_layer"]) == {"2", ""}  # "" for the oom row, never "2.0"
    assert set(text["latency.decode_steps"]) == {str(NEW_TOKENS - 1), ""}
    assert "e+" not in "".join(text["memory.torch_peak_allocated_bytes"])


def test_per_step_has_a_row_per_decode_step_with_cache_bytes(sweep: Sweep) -> None:
    per_step = sweep.csv("per_step.csv")
    ok = [r for r in sweep.records if r["status"] == "ok"]
    assert len(per_step) == len(ok) * (NEW_TOKENS - 1)
    assert {
        "cell.kv_mode",
        "cell.batch",
        "cell.prompt_len",
        "step",
        "context_tokens",
        "decode_ms",
        "kv_cache_bytes",
        "kv_cache_mib",
    } <= set(per_step.columns)
    recs = by_coords(sweep.records)
    oom_rows = per_step[
        (per_step["cell.kv_mode"] == OOM_CELL[0])
        & (per_step["cell.batch"] == OOM_CELL[1])
        & (per_step["cell.prompt_len"] == OOM_CELL[2])
    ]
    assert oom_rows.empty
    for _, row in per_step.iterrows():
        rec = recs[(row["cell.kv_mode"], row["cell.batch"], row["cell.prompt_len"])]
        p, step = rec["cell"]["prompt_len"], int(row["step"])
        assert row["context_tokens"] == p + step
        assert row["decode_ms"] == rec["latency"]["per_step_decode_ms"][step - 1]
        formula = rec["memory"]["kv_cache_bytes_formula"]
        if formula is None:  # the none mode keeps no cache
            assert pd.isna(row["kv_cache_bytes"])
            continue
        per_token = formula / (p + NEW_TOKENS - 1)
        assert row["kv_cache_bytes"] == per_token * (p + step)
        assert row["kv_cache_mib"] == row["kv_cache_bytes"] / 2**20
    last = per_step[(per_step["cell.kv_mode"] == "static") & (per_step["step"] == NEW_TOKENS - 1)]
    for _, row in last.iterrows():  # the last step holds exactly what the formula counts
        rec = recs[("static", row["cell.batch"], row["cell.prompt_len"])]
        assert row["kv_cache_bytes"] == rec["memory"]["kv_cache_bytes_formula"]


def test_aggregate_rejects_two_records_of_one_cell(tmp_path: Path) -> None:
    paths = write_records(tmp_path, [make_record("static", 1, 8)])
    twin = paths[0].with_name("copy.json")
    shutil.copy(paths[0], twin)
    with pytest.raises(ValueError, match="two records for one cell"):
        agg.aggregate(paths + [twin], tmp_path / "tables")
    assert agg.main(["--records", str(tmp_path / "missing"), "--out", str(tmp_path / "t")]) == 1


def test_a_paged_cells_kv_bytes_are_its_blocks_not_a_static_reservation(tmp_path: Path) -> None:
    from kvbench.core.record import write_atomic
    from kvbench.measure.cell import run_cell
    from kvbench.measure.spec import CellSpec

    paths = []
    for i, extra in enumerate(({"prompt_spread": 0.5, "shared_prefix": 8}, {})):
        spec = CellSpec(model="tiny", kv_mode="paged", device="cpu", batch=3, prompt_len=24, new_tokens=4)
        rec = run_cell(CellSpec(**{**vars(spec), "block_tokens": 4, "iters": 1, "warmup": 0, **extra}))
        write_atomic(tmp_path / f"r{i}.json", rec)
        paths.append(tmp_path / f"r{i}.json")
    df = fr.from_records(paths)
    counted = df["memory.kv_bytes_reserved"].astype(int).tolist()
    assert df["kv_formula"].astype(int).tolist() == counted == df["memory.kv_cache_bytes_formula"].astype(int).tolist()
    ragged = df[df["cell.prompt_spread"].notna()].iloc[0]
    per_token = 2 * ragged["n_layer"] * ragged["kv_heads"] * ragged["head_dim"] * 4
    assert ragged["kv_formula"] < 3 * 27 * per_token  # under the static formula's batch x (prompt + new - 1)
    blocks, rest = ex.formula_text(ragged).split(" blocks × ")  # explain writes out the blocks, not batch × tokens
    factors = [int(blocks), *map(int, rest.split(" × "))]
    assert factors[1] == 4 and math.prod(factors) == ragged["kv_formula"]
    long = fr.per_step(df[df["cell.prompt_spread"].notna()])
    by_step = [int(b) for b in ragged["memory.kv_bytes_reserved_by_step"].split(";")]
    assert long["kv_cache_bytes"].astype(int).tolist() == by_step[1:]
