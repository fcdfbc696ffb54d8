"""The workflow's own behaviour (Snakefile, workflow/rules, workflow/profiles/default) through the real
Snakemake in a copy: damaged records listed by a dry run and moved aside by a real run, and what the
default profile prints. tests/test_pipeline.py runs a whole sweep; tests/test_sweep.py the sweep module."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from test_pipeline import copy_workflow, snakemake, write_config

from kvbench.core import record as kvrecord
from kvbench.core.sweep import CELL_LOG_PATTERN, cell_path, cells

pytestmark = pytest.mark.skipif(
    shutil.which("kvbench") is None and not Path(sys.executable).with_name("kvbench").exists(),
    reason="kvbench is not installed (pip install -e .)",
)
SWEEP = {
    "grid": {"model": ["tiny"], "kv_mode": ["static"], "batch": [1], "prompt_len": [8], "new_tokens": [4]},
    "settings": {"device": "cpu", "warmup": 0, "iters": 1, "check_steps": 2},
}
CELL = cells(SWEEP)[0]
RECORD = cell_path("t", CELL)
TRUNCATED = '{"schema_version": 1, "status": "ok", "cel'


@pytest.fixture()
def workdir(tmp_path) -> Path:
    """A one-cell sweep whose record is truncated, and a copy of it damaged and moved aside before."""
    copy_workflow(tmp_path)
    write_config(tmp_path, SWEEP)
    record = tmp_path / RECORD
    record.parent.mkdir(parents=True)
    record.write_text(TRUNCATED)
    earlier = tmp_path / RECORD.replace("/cells/", "/damaged/")
    earlier.parent.mkdir(parents=True)
    earlier.write_text("earlier damage")
    return tmp_path


def test_a_dry_run_lists_the_damaged_records_and_moves_nothing(workdir):
    out = snakemake(workdir, "-n")
    text = out.stdout + out.stderr
    assert (
        f"kvbench: damaged record {RECORD} (not readable JSON" in text
        and f"a run moves it to {RECORD.replace('/cells/', '/damaged/')}.1 and measures its cell again" in text
    ), text[-3000:]
    assert "set_aside" in text  # the job that will move it, in the job counts
    assert (workdir / RECORD).read_text() == TRUNCATED
    results = workdir / "results"
    assert sorted(p.relative_to(workdir).as_posix() for p in results.rglob("*") if p.is_file()) == [
        RECORD,
        RECORD.replace("/cells/", "/damaged/"),  # the earlier copy, alone: nothing moved
    ]


@pytest.mark.slow
def test_a_run_moves_damaged_records_aside_and_measures_their_cells_again(workdir):
    # The tables as the target (`--until` drops the jobs a checkpoint adds: Snakemake would stop after the move).
    out = snakemake(workdir, "results/t/tables")
    text = out.stdout + out.stderr
    moved = workdir / (RECORD.replace("/cells/", "/damaged/") + ".1")
    assert moved.read_text() == TRUNCATED  # set aside, never deleted
    assert (workdir / RECORD.replace("/cells/", "/damaged/")).read_text() == "earlier damage"
    assert kvrecord.load(workdir / RECORD)["status"] == "ok"  # measured again, in the same run
    line = f"kvbench check-records: damaged record {RECORD} (not readable JSON"
    assert line in text, text[-3000:]
    [listing] = (workdir / "results/t/damaged").glob("moved-*.txt")
    assert listing.read_text().startswith(line)
    assert (workdir / "results/t/tables/cells.csv").is_file()
    again = snakemake(workdir, "-n", "results/t/tables")
    assert "Nothing to be done" in again.stdout + again.stderr, again.stdout + again.stderr


@pytest.mark.slow
@pytest.mark.skipif(torch.cuda.is_available(), reason="the failure is a cuda sweep on a machine without CUDA")
def test_a_failed_cell_prints_its_error_and_its_log_on_one_line(tmp_path):
    copy_workflow(tmp_path)
    write_config(tmp_path, {**SWEEP, "settings": {**SWEEP["settings"], "device": "cuda"}})
    out = snakemake(tmp_path, "--until", "cell", check=False)
    text = out.stdout + out.stderr
    log = CELL_LOG_PATTERN.format(sweep="t", **CELL)
    assert out.returncode != 0
    failed = [line for line in text.splitlines() if line.startswith("kvbench cell failed: ")]
    assert failed == [
        "kvbench cell failed: kvbench cell: error: device: 'cuda' requested but torch sees no CUDA device here "
        f"(use cpu or auto) (log: {log})"
    ], text[-3000:]
    assert (tmp_path / log).is_file()
    assert "input:" not in text and "Traceback" not in text
