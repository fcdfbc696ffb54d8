"""Faults a user will meet: Ctrl-C mid-sweep, a disk that fills while a record is written, and two
sweeps started in the same directory. The real Snakemake and the real `kvbench cell`, in a copy of the workflow.
Runs stop at the tables (`--until aggregate`): the faults are about cells and records, and the figures, GIF and
bundle downstream only read the tables (tests/test_pipeline.py runs them).
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_pipeline import REPO, SNAKEMAKE, SWEEP, copy_workflow, snakemake, write_config

from kvbench.core.record import validate

pytestmark = pytest.mark.slow
UNTIL_TABLES = ("--until", "aggregate")
CELLS = {(m, p) for m in SWEEP["grid"]["kv_mode"] for p in SWEEP["grid"]["prompt_len"]}  # 4 cells of 2-3 s each


GATED = Path(__file__).parent / "standins" / "gated-kvbench"  # a `kvbench` that holds every cell after the first


def start(workdir: Path, *args: str) -> tuple[subprocess.Popen, Path]:
    """Snakemake in the background, its cells run by the gated stand-in: the first cell runs and writes its
    record, every later one waits at the gate (returned) until the test opens it or signals the sweep."""
    gate = workdir / "gate"
    gate.mkdir()
    real = Path(sys.executable).with_name("kvbench")
    path = os.pathsep.join([str(GATED), str(real.parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "KVBENCH_GATE": str(gate), "KVBENCH_REAL": str(real)}
    # A session of its own, so a SIGINT to its process group reaches Snakemake and its jobs as Ctrl-C does.
    proc = subprocess.Popen(
        [*SNAKEMAKE, "--profile", str(REPO / "workflow/profiles/default"), *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env=env,
    )
    return proc, gate


def records(workdir: Path, sweep: str = "t") -> list[Path]:
    return sorted((workdir / "results" / sweep / "cells").rglob("*.json"))


def wait_at_the_gate(workdir: Path, proc: subprocess.Popen, gate: Path, timeout: float = 600) -> None:
    """Until the first cell's record is written and the second cell waits at the gate. Nothing races here: the
    sweep cannot move on until the test lets it; the timeout only ends a test that would otherwise hang."""
    deadline = time.monotonic() + timeout
    while not ((gate / "held").exists() and records(workdir)):
        if proc.poll() is not None:
            raise AssertionError(f"snakemake ended before a cell reached the gate:\n{proc.stdout.read()[-3000:]}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGTERM)
            raise AssertionError("no cell reached the gate within the timeout")
        time.sleep(0.05)


def assert_whole_records(workdir: Path, cells: set[tuple[str, int]] | None = None) -> None:
    """Every record there parses and is schema-valid; no temp file of an interrupted write is left beside them."""
    for path in records(workdir):
        validate(json.loads(path.read_text()))
    assert not [p for p in (workdir / "results").rglob("*") if p.name.endswith(".tmp")]
    if cells is not None:
        found = [json.loads(p.read_text()) for p in records(workdir)]
        assert {(r["cell"]["kv_mode"], r["cell"]["prompt_len"]) for r in found} == cells
        assert {r["status"] for r in found} == {"ok"}


def tables(workdir: Path) -> dict[str, bytes]:
    d = workdir / "results/t/tables"
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if not p.name.startswith(".")}


def test_ctrl_c_mid_sweep_then_snakemake_again_completes_the_sweep(tmp_path):
    copy_workflow(tmp_path)
    write_config(tmp_path, SWEEP)
    proc, gate = start(tmp_path, *UNTIL_TABLES)
    wait_at_the_gate(tmp_path, proc, gate)  # one record written, the second cell held
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C in the terminal: the whole foreground process group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out[-2000:]
    assert len(records(tmp_path)) == 1, "the interrupt lands after the first cell, before the second"
    assert_whole_records(tmp_path)
    assert not (tmp_path / "results/t/tables").exists()

    # Again, nothing else: the missing cells (and any the interrupt cut short) are measured.
    snakemake(tmp_path, *UNTIL_TABLES)
    assert_whole_records(tmp_path, CELLS)
    resumed = tables(tmp_path)
    assert len(resumed["cells.csv"].decode().strip().splitlines()) == 1 + len(CELLS)
    # The tables must be those of the complete record set, not of the records present before the interrupt.
    snakemake(tmp_path, "--forcerun", "aggregate", *UNTIL_TABLES)
    assert tables(tmp_path) == resumed


def test_a_disk_that_fills_while_the_record_is_written_leaves_no_record_and_one_line(tmp_path, kvbench_exe):
    out = tmp_path / "cells" / "r.json"  # a record is ~3 KB; a cell writes nothing else this large

    def file_size_limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    # SIGXFSZ is left at its default in the child (Popen restores it), as a shell with `ulimit -f` would.
    cell = "--model tiny --kv-mode static --prompt-len 8 --new-tokens 4 --warmup 0 --iters 1 --check-steps 2"
    argv = [*kvbench_exe, "cell", *cell.split(), "--device", "cpu", "--out", str(out)]
    p = subprocess.run(argv, check=False, preexec_fn=file_size_limit, capture_output=True, text=True, timeout=300)
    lines = p.stderr.strip().splitlines()
    assert p.returncode == 1, p.stderr  # not killed by SIGXFSZ (-25), not a crash
    assert "Traceback" not in p.stderr
    assert "measuring static" in lines[0]  # the cell was measured: the limit struck at the write
    assert lines[-1] == f"kvbench cell: error: out: cannot write {str(out)!r}: File too large", lines
    assert out.parent.is_dir() and list(out.parent.iterdir()) == []  # the writer ran and took its temp file away


def test_two_sweeps_in_one_directory_the_second_refuses_the_first_is_unharmed(tmp_path):
    copy_workflow(tmp_path)
    other = yaml.safe_load(yaml.safe_dump(SWEEP))
    other["grid"].update(kv_mode=["none"], prompt_len=[8])
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(
        yaml.safe_dump(
            {"run": ["t"], "container": None, "sweeps": {"t": SWEEP, "u": other}},
            sort_keys=False,
        )
    )
    first, gate = start(tmp_path, *UNTIL_TABLES)
    # Held at the gate (its locks held, its second cell waiting) while the others try: a running first sweep
    # cannot finish in between, however fast the machine.
    wait_at_the_gate(tmp_path, first, gate)
    try:
        # The same sweep: Snakemake's own lock (its files are locked) or ours refuses, before any job.
        same = snakemake(tmp_path, *UNTIL_TABLES, check=False)
        assert same.returncode != 0
        assert "LockException" in same.stderr or "kvbench: refused" in same.stderr, same.stderr[-2000:]
        assert "Finished jobid" not in same.stdout + same.stderr
        # Another sweep writes other files, so Snakemake alone would run it beside the first (timings of both
        # would lie); the workflow's run lock refuses it in one line.
        second = snakemake(tmp_path, "--config", "run=[u]", check=False)
        refusal = f"kvbench: refused: another snakemake is running a sweep in {tmp_path}; "
        refusal += "wait for it (or stop it) and run again"
        assert second.returncode == 1
        assert [line for line in second.stderr.splitlines() if "refused" in line or "Error" in line] == [refusal], (
            second.stderr[-2000:]
        )
        assert "Traceback" not in second.stderr and not (tmp_path / "results/u").exists()
        assert first.poll() is None, "both refusals must happen while the first sweep runs"
    finally:
        (gate / "open").touch()

    out, _ = first.communicate(timeout=600)
    assert first.returncode == 0, out[-3000:]
    assert_whole_records(tmp_path, CELLS)
    assert len(tables(tmp_path)["cells.csv"].decode().strip().splitlines()) == 1 + len(CELLS)
    # The refused runs left no lock behind: the other sweep's cell now runs.
    snakemake(tmp_path, "--config", "run=[u]", "--until", "cell")
    assert len(records(tmp_path, "u")) == 1
