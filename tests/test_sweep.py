"""kvbench/core/sweep.py: a sweep's grid expanded into cells, its one-line config errors, a cell's flags and paths.
Plain functions, no Snakemake (tests/test_pipeline.py and tests/test_workflow.py drive the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kvbench.core.presets import KV_MODES
from kvbench.core.sweep import (
    ALL_HEADS,
    AXES,
    CELL_LOG_PATTERN,
    SETTINGS,
    SweepError,
    cell_flags,
    cell_path,
    cells,
    check,
    kv_head_count,
    sweep_settings,
)

TINY = {"model": ["tiny"], "prompt_len": [8], "new_tokens": [4]}


@pytest.fixture(scope="module")
def schema(repo):
    return repo / "workflow" / "schemas" / "config.schema.yaml"


def one_sweep(grid: dict, settings: dict | None = None) -> dict:
    return {"run": ["t"], "sweeps": {"t": {"grid": grid, **({"settings": settings} if settings else {})}}}


def test_every_shipped_sweep_passes_the_check(repo, schema):
    config = yaml.safe_load((repo / "config" / "config.yaml").read_text())
    check(config, schema)
    assert all(cells(sweep) for sweep in config["sweeps"].values())


def test_a_sweep_crosses_each_engine_with_the_kv_modes_it_runs(schema):
    grid = {**TINY, "engine": ["kvbench", "hf", "ct2"], "kv_mode": ["none", "concat", "static"]}
    got = sorted((c["engine"], c["kv_mode"]) for c in cells({"grid": grid}))
    assert got == [
        ("ct2", "concat"),
        ("hf", "concat"),
        ("hf", "none"),
        ("hf", "static"),
        ("kvbench", "concat"),
        ("kvbench", "none"),
        ("kvbench", "static"),
    ]
    check(one_sweep(grid), schema)
    only_static = {**grid, "engine": ["ct2"], "kv_mode": ["static"]}
    with pytest.raises(SweepError, match=r"^config: sweep 't': grid.kv_mode: engine ct2 runs concat only"):
        check(one_sweep(only_static), schema)


def test_an_axis_left_out_takes_its_default_and_cells_keep_the_grid_order():
    grid = {"model": ["tiny"], "batch": [2, 1], "kv_mode": ["static", "none"]}
    got = [(c["kv_mode"], c["batch"]) for c in cells({"grid": grid})]
    assert got == [("static", 2), ("static", 1), ("none", 2), ("none", 1)]
    assert {c["n_kv_head"] for c in cells({"grid": grid})} == {ALL_HEADS}
    assert cells({"grid": {}})[0]["kv_mode"] == KV_MODES[0] and len(cells({"grid": {}})) == len(AXES["kv_mode"])


BAD = [
    ({**TINY, "kv_mode": ["radix"]}, None, "grid.kv_mode.0: 'radix' is not one of none, concat, static"),
    ({**TINY, "batch": []}, None, "grid.batch is empty"),
    ({**TINY, "n_kv_head": [3]}, None, "grid.n_kv_head: 3 must divide tiny's n_head"),
    ({**TINY, "engine": ["hf"], "n_kv_head": [2]}, None, "grid.n_kv_head: engine hf runs the model's own K/V heads"),
    ({**TINY, "model": ["tiny-llama"], "engine": ["ct2"], "n_kv_head": [1]}, None, "(tiny-llama: 2): all or 2 only"),
    ({**TINY, "engine": ["llamacpp"], "kv_mode": ["static"], "n_kv_head": [2]}, None, "engine llamacpp runs the"),
    ({**TINY, "prompt_len": [60], "new_tokens": [8]}, None, "= 60 + 8 exceeds tiny's block_size 64"),
    (TINY, {"device": "tpu"}, "settings.device"),
]


IDS = ["value", "empty", "heads", "hf-heads", "ct2-heads", "llamacpp-heads", "block", "device"]


@pytest.mark.parametrize("grid,settings,message", BAD, ids=IDS)
def test_a_bad_sweep_is_one_line_naming_the_sweep_and_the_key(schema, grid, settings, message):
    with pytest.raises(SweepError) as err:
        check(one_sweep(grid, settings), schema)
    assert str(err.value).startswith("config: sweep 't': ") and message in str(err.value)
    assert "\n" not in str(err.value)


def test_a_run_naming_no_sweep_lists_the_defined_ones(schema):
    with pytest.raises(SweepError, match=r"^config: run: 'nope' is not a defined sweep \(defined: t\)$"):
        check({**one_sweep(TINY), "run": ["nope"]}, schema)


def test_all_heads_is_one_word_in_config_and_paths_and_no_flag():
    assert kv_head_count(ALL_HEADS) is None
    assert kv_head_count(2) == kv_head_count("2") == 2  # from the config, from a path's wildcard
    cell = {"engine": "kvbench", "model": "tiny", "kv_mode": "static", "n_kv_head": ALL_HEADS}
    assert "--n-kv-head" not in cell_flags(cell, sweep_settings({}))
    assert "--n-kv-head 2 " in cell_flags({**cell, "n_kv_head": "2"}, sweep_settings({}))
    assert cell_flags({**cell, "n_kv_head": 2}, {}) == cell_flags({**cell, "n_kv_head": "2"}, {})


def test_a_cells_log_sits_under_logs_with_its_records_path():
    cell = cells({"grid": {**TINY, "kv_mode": ["static"]}})[0]
    record = cell_path("t", cell)
    assert record == "results/t/cells/kvbench/tiny/fp32/static/b1-p8-n4-sdpa-kvall.json"
    log = CELL_LOG_PATTERN.format(sweep="t", **cell)
    assert log == "results/t/logs/cells/kvbench/tiny/fp32/static/b1-p8-n4-sdpa-kvall.log"


def test_threads_in_the_grid_name_each_cells_path_and_flag_over_the_settings(schema):
    threads = cells({"grid": {**TINY, "kv_mode": ["static"], "threads": [1, 4]}})
    base = "results/t/cells/kvbench/tiny/fp32/static/b1-p8-n4-sdpa-kvall"
    assert [cell_path("t", c) for c in threads] == [f"{base}-t1.json", f"{base}-t4.json"]
    assert CELL_LOG_PATTERN.format(sweep="t", **threads[1]).endswith("/static/b1-p8-n4-sdpa-kvall-t4.log")
    flags = cell_flags(threads[1], sweep_settings({"settings": {"threads": 2}})).split(" --")
    assert "threads 4" in flags and "threads 2" not in flags  # the grid's count, not the sweep's setting
    assert cell_flags(threads[0], {}) == cell_flags({**threads[0], "threads": 1}, {})  # a path's '-t1' or the grid's 1
    unset = cells({"grid": {**TINY, "kv_mode": ["static"]}})[0]  # no threads axis: the path and flags as before
    assert cell_path("t", unset) == f"{base}.json" and "--threads" not in cell_flags(unset, {})
    with pytest.raises(SweepError, match="grid.threads.0: 0 is less than the minimum of 1"):
        check(one_sweep({**TINY, "threads": [0]}), schema)


def test_sweep_compile_setting_compiles_the_listed_modes_only():
    cell = {"engine": "kvbench", "model": "tiny", "kv_mode": "static", "n_kv_head": ALL_HEADS}
    some = sweep_settings({"settings": {"compile": ["static"]}})
    assert cell_flags(cell, some).endswith("--compile")
    assert "--compile" not in cell_flags({**cell, "kv_mode": "none"}, some)
    assert "--compile" in cell_flags({**cell, "kv_mode": "none"}, sweep_settings({"settings": {"compile": True}}))
    # off: the flags are exactly those of a sweep that never named `compile` (its cells do not rerun)
    assert cell_flags(cell, sweep_settings({"settings": {"compile": False}})) == cell_flags(cell, sweep_settings({}))
    # a peer that is compiled C++ already (llama.cpp, CTranslate2) runs its static cells as they are
    assert "--compile" not in cell_flags({**cell, "engine": "llamacpp"}, some)
    assert "--compile" in cell_flags({**cell, "engine": "hf"}, some)


def test_every_cell_of_the_shipped_sweeps_gets_flags_its_engine_accepts():
    """What `make run SWEEP=vs-peers-cpu` once failed on: each compiled cell's engine has a compiled form."""

    from kvbench.core.presets import COMPILED_ENGINES

    config = yaml.safe_load((Path(__file__).resolve().parent.parent / "config" / "config.yaml").read_text())
    for name, sweep in config["sweeps"].items():
        for c in cells(sweep):
            if "--compile" in cell_flags(c, sweep_settings(sweep)).split():
                assert c["engine"] in COMPILED_ENGINES, (name, c)


def test_job_settings_schedule_the_job_and_change_no_flag():
    cell = {"engine": "kvbench", "model": "tiny", "kv_mode": "static", "n_kv_head": ALL_HEADS}
    plain = cell_flags(cell, sweep_settings({}))
    assert cell_flags(cell, sweep_settings({"settings": {"mem_mb": 64000, "runtime": 5}})) == plain
    assert cell_flags(cell, sweep_settings({"settings": {"iters": 7}})) != plain


def test_layout_axes_name_a_path_part_only_when_the_grid_sets_them():
    grid = {**TINY, "batch": [2], "prompt_len": [16], "new_tokens": [8], "kv_mode": ["static", "paged"]}
    grid.update(prompt_spread=[0.5], block_tokens=[16, 64])
    made = cells({"grid": grid})
    paths = sorted(cell_path("s", c) for c in made)
    assert [p.rsplit("/", 2)[-2:] for p in paths] == [
        ["paged", "b2-p16-n8-sdpa-kvall-s0.5-k16.json"],
        ["paged", "b2-p16-n8-sdpa-kvall-s0.5-k64.json"],
        ["static", "b2-p16-n8-sdpa-kvall-s0.5.json"],  # one static cell, whatever the block size
    ]
    flags = cell_flags(next(c for c in made if c["block_tokens"] == "-k64"), SETTINGS)
    assert "--block-tokens 64" in flags and "--prompt-spread 0.5" in flags and "--shared-prefix" not in flags


def test_a_peer_engine_takes_the_model_s_own_k_v_heads_as_a_count(schema):
    grid = {**TINY, "model": ["tiny-llama"], "engine": ["hf", "ct2"], "kv_mode": ["concat"], "n_kv_head": [2]}
    check(one_sweep(grid), schema)  # tiny-llama has 2 K/V heads: the count is the model itself, nothing faked


def test_a_batch_of_one_is_one_cell_whatever_the_spread_or_shared_prefix():
    grid = {**TINY, "batch": [1, 2], "prompt_len": [16], "new_tokens": [8], "kv_mode": ["static"]}
    grid.update(prompt_spread=[0, 0.5], shared_prefix=[0, 4])
    names = sorted(cell_path("s", c).rsplit("/", 1)[-1] for c in cells({"grid": grid}))
    assert names[0] == "b1-p16-n8-sdpa-kvall.json" and len(names) == 1 + 4  # batch 2: every spread and prefix
    assert "--prompt-spread" not in cell_flags(cells({"grid": grid})[0], SETTINGS)
