"""The `tiny` sweep (cut to four cells) through a real single-node SLURM on this machine. Nothing about SLURM is mocked.

scripts/slurm-up.sh starts munged + slurmctld + slurmd (no accounting, one fake GPU) once per
session; scripts/slurm-down.sh stops them. Snakemake runs with the repository's SLURM profile
(workflow/profiles/slurm) minus its two container lines (tests/test_containers.py covers those),
so every cell is submitted with sbatch by snakemake-executor-plugin-slurm.

The tests share one workdir and run in order:
  1. the whole sweep, with one cell made to fail (a `kvbench` shim first on PATH exits 3 for that
     cell while a marker file exists): every other cell completes, each as its own SLURM job;
  2. the marker removed, a rerun schedules exactly the failed cell (one sbatch), then the tables,
     figures and bundle, which match a local aggregation of the same records.

Needs root (slurmd and munged) and apt (or the packages already installed); skips otherwise.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
VENV_BIN = Path(sys.executable).parent
SWEEP = "tiny"
# The tiny sweep cut to four cells in the test's copy of the config: a failure among several cells,
# two cells at a time on the node, a rerun of one; what SLURM proves does not grow with the grid.
SLURM_GRID = {"kv_mode": ["none", "static"], "batch": [1], "prompt_len": [8, 16]}

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

# Command-line settings the test cluster needs on top of the profile, and why:
TEST_CLUSTER_ARGS = [
    "--slurm-status-command",
    "squeue",  # no accounting: sacct cannot answer
    "--slurm-init-seconds-before-status-checks",
    "2",  # poll soon: cells take seconds, not hours
    "--slurm-no-account",  # no accounts without accounting
    "--latency-wait",
    "5",  # one machine, no shared-file-system lag
    "--max-threads",
    "1",  # 1 CPU per cell: two cells at a time on the 2-CPU
    # node (plumbing, not timings; halves the run)
    "--retries",
    "0",  # the injected failure should fail once, not twice
]


# ---- machine setup (shared with tests/test_containers.py, which imports these) ------------------


def machine_skip_reason(packages_needed: str = "slurm-wlm and munge") -> str | None:
    if sys.platform != "linux":
        return "needs Linux"
    if os.geteuid() != 0:
        return f"needs root (to install {packages_needed} and start their daemons)"
    installed = (
        subprocess.run([str(SCRIPTS / "install-system-deps.sh"), "--check"], capture_output=True).returncode == 0
    )
    if not installed and shutil.which("apt-get") is None:
        return f"{packages_needed} are not installed and there is no apt-get to install them"
    return None


# `make test` runs test files on two workers, and both this file and test_containers.py use the
# one local cluster: a setup lock serialises apt, slurm-up and slurm-down, and each user holds a
# shared "users" lock while it needs the cluster, so only the last one out stops it.
SETUP_LOCK, USERS_LOCK = Path("/tmp/kvbench-test-setup.lock"), Path("/tmp/kvbench-test-users.lock")


@contextlib.contextmanager
def locked(path: Path, mode: int):
    with open(path, "a") as f:
        fcntl.flock(f, mode)
        yield f


def install_system_deps() -> None:
    with locked(SETUP_LOCK, fcntl.LOCK_EX):
        p = subprocess.run([str(SCRIPTS / "install-system-deps.sh")], capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, f"scripts/install-system-deps.sh failed:\n{p.stdout}\n{p.stderr}"


def start_slurm() -> float:
    """Start the local cluster (idempotent); returns the seconds it took."""
    t0 = time.monotonic()
    with locked(SETUP_LOCK, fcntl.LOCK_EX):
        p = subprocess.run([str(SCRIPTS / "slurm-up.sh")], capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, f"scripts/slurm-up.sh failed:\n{p.stdout}\n{p.stderr}"
    return time.monotonic() - t0


def stop_slurm() -> None:
    subprocess.run([str(SCRIPTS / "slurm-down.sh")], capture_output=True, text=True, timeout=120)


@contextlib.contextmanager
def shared_cluster():
    """The local cluster, up while this test process (and any other) needs it."""
    with locked(USERS_LOCK, fcntl.LOCK_SH) as users:
        install_system_deps()
        try:
            yield start_slurm()
        finally:
            fcntl.flock(users, fcntl.LOCK_UN)
            with locked(SETUP_LOCK, fcntl.LOCK_EX):
                try:  # the last user out stops it
                    fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    stop_slurm()
                except BlockingIOError:
                    pass


@pytest.fixture(scope="session")
def slurm_cluster():
    reason = machine_skip_reason()
    if reason:
        pytest.skip(reason)
    with shared_cluster() as seconds:
        print(f"\nslurm-up took {seconds:.1f} s", file=sys.stderr)
        yield {"up_seconds": seconds}


# ---- workflow helpers -----------------------------------------------------------------------------


def copy_workflow(dst: Path) -> Path:
    """The workflow and package sources, without results or caches, into `dst`."""
    dst.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", ".snakemake", "results")
    for name in ("Snakefile", "workflow", "config", "kvbench", "envs", "pyproject.toml"):
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dst / name, ignore=ignore)
        elif src.exists():
            shutil.copy2(src, dst / name)
    return dst


def cut_sweep(workdir: Path) -> Path:
    """The copy's tiny sweep cut to SLURM_GRID (its other settings as shipped)."""
    path = workdir / "config/config.yaml"
    config = yaml.safe_load(path.read_text())
    config["sweeps"][SWEEP]["grid"].update(SLURM_GRID)
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return workdir


def slurm_profile(dst: Path, containers: bool) -> Path:
    """workflow/profiles/slurm as shipped, or without its container lines."""
    profile = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    if not containers:
        profile.pop("software-deployment-method", None)
        profile.pop("apptainer-args", None)
    dst.mkdir(parents=True, exist_ok=True)
    (dst / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dst


def sweep_cells(workdir: Path, sweep: str = SWEEP) -> list[str]:
    """The record paths of a sweep, computed by kvbench's own sweep code (no torch import)."""
    from kvbench.core import sweep as kvsweep

    config = yaml.safe_load((workdir / "config/config.yaml").read_text())
    return [kvsweep.cell_path(sweep, c) for c in kvsweep.cells(config["sweeps"][sweep])]


def run_snakemake(workdir: Path, args: list[str], env: dict, timeout: int = 1500) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def submitted_job_ids(output: str, rule: str = "cell") -> list[str]:
    """SLURM job ids of the jobs of `rule` that Snakemake submitted (their log path names the rule)."""
    return re.findall(rf"has been submitted with SLURM jobid (\d+) \(log: \S*/rule_{rule}/", output)


def scontrol_job(job_id: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True).stdout
    return dict(kv.split("=", 1) for kv in out.split() if "=" in kv)


def planned_jobs(output: str) -> dict[str, int]:
    """Snakemake's 'Job stats' table (rule -> count) from a dry run's output."""
    counts, in_table = {}, False
    for line in output.splitlines():
        if line.startswith("job ") and "count" in line:
            in_table = True
            continue
        if in_table:
            m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
            if m and m.group(1) != "total":
                counts[m.group(1)] = int(m.group(2))
            elif line.strip().startswith("total"):
                break
    return counts


# ---- the tests ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sweep_run(slurm_cluster, tmp_path_factory):
    """One SLURM run of the (cut) tiny sweep with one cell made to fail."""
    workdir = cut_sweep(copy_workflow(tmp_path_factory.mktemp("slurm-sweep")))
    profile = slurm_profile(workdir / "test-profile", containers=False)
    cells = sweep_cells(workdir)
    failing = cells[len(cells) // 2]
    marker = workdir / "FAIL-ONE-CELL"
    marker.touch()
    shim_dir = workdir / "shim"
    shim_dir.mkdir()
    shim = shim_dir / "kvbench"
    shim.write_text(
        "#!/bin/sh\n"
        "# Test shim: make one chosen cell fail while the marker file exists; else the real kvbench.\n"
        f'case " $* " in *" --out {failing} "*) [ -e {marker} ] && {{ echo "injected failure" >&2; exit 3; }} ;; esac\n'
        f'exec {VENV_BIN / "kvbench"} "$@"\n'
    )
    shim.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{shim_dir}:{VENV_BIN}:{os.environ.get('PATH', '')}",
        "KVBENCH_CACHE_DIR": str(workdir / ".cache"),
    }
    args = ["--workflow-profile", str(profile), *TEST_CLUSTER_ARGS, "--config", f"run=[{SWEEP}]"]
    t0 = time.monotonic()
    p = run_snakemake(workdir, args, env)
    seconds = time.monotonic() - t0
    print(f"\nSLURM sweep ({len(cells)} cells, one failing) took {seconds:.0f} s", file=sys.stderr)
    return {
        "workdir": workdir,
        "env": env,
        "args": args,
        "cells": cells,
        "failing": failing,
        "marker": marker,
        "proc": p,
        "output": p.stdout + p.stderr,
        "seconds": seconds,
    }


def test_sweep_on_slurm_every_cell_its_own_job_and_a_failure_leaves_the_rest(sweep_run):
    workdir, cells, failing = sweep_run["workdir"], sweep_run["cells"], sweep_run["failing"]
    output = sweep_run["output"]
    assert sweep_run["proc"].returncode != 0, "the injected failure should make snakemake exit non-zero"

    # The failed cell is reported, as a failed SLURM job, and wrote no record.
    assert "Error in rule cell" in output and failing in output, output[-4000:]
    assert re.search(r"SLURM-job '\d+' failed", output), output[-4000:]
    assert not (workdir / failing).exists()

    # Every other cell completed, each in its own SLURM job.
    ok = [c for c in cells if c != failing]
    records = {c: json.loads((workdir / c).read_text()) for c in ok if (workdir / c).exists()}
    assert set(records) == set(ok), f"missing records: {sorted(set(ok) - set(records))}"
    assert all(r["status"] == "ok" for r in records.values())
    job_ids = [r["environment"]["slurm_job_id"] for r in records.values()]
    assert all(job_ids), "a record has no environment.slurm_job_id: it did not run under SLURM"
    assert len(set(job_ids)) == len(job_ids), f"cells shared a SLURM job: {job_ids}"

    # They are the jobs Snakemake submitted (one sbatch per cell, the failing one included),
    # and SLURM saw them complete.
    submitted = submitted_job_ids(output)
    assert len(submitted) == len(cells) and set(job_ids) <= set(submitted)
    for job_id in job_ids:
        job = scontrol_job(job_id)
        assert job.get("JobState") == "COMPLETED", job
        assert job.get("WorkDir") == str(workdir), job
    failed_job = (set(submitted) - set(job_ids)).pop()
    assert scontrol_job(failed_job).get("JobState") == "FAILED"

    # Nothing downstream ran with a record missing.
    assert not (workdir / f"results/{SWEEP}/bundle.zip").exists()


def test_rerun_schedules_only_the_failed_cell_then_tables_and_figures(sweep_run, tmp_path):
    workdir, env, args = sweep_run["workdir"], sweep_run["env"], sweep_run["args"]
    failing = sweep_run["failing"]
    before = {
        c: json.loads((workdir / c).read_text())["environment"]["slurm_job_id"]
        for c in sweep_run["cells"]
        if c != failing
    }
    sweep_run["marker"].unlink()

    dry = run_snakemake(workdir, [*args, "-n"], env, timeout=300)
    assert dry.returncode == 0, dry.stdout[-3000:] + dry.stderr[-3000:]
    plan = planned_jobs(dry.stdout + dry.stderr)
    assert plan.get("cell") == 1, plan
    assert failing in dry.stdout + dry.stderr

    t0 = time.monotonic()
    p = run_snakemake(workdir, args, env)
    print(f"\nSLURM rerun of the failed cell + tables/figures took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    output = p.stdout + p.stderr
    assert p.returncode == 0, output[-4000:]
    submitted = submitted_job_ids(output)
    assert len(submitted) == 1, f"expected one cell submitted (the failed one), got {submitted}"
    record = json.loads((workdir / failing).read_text())
    assert record["status"] == "ok"
    assert record["environment"]["slurm_job_id"] == submitted[0]
    assert submitted[0] not in before.values()
    # The cells that had completed were not touched.
    for cell, job_id in before.items():
        assert json.loads((workdir / cell).read_text())["environment"]["slurm_job_id"] == job_id

    tables = workdir / f"results/{SWEEP}/tables"
    figures = workdir / f"results/{SWEEP}/figures"
    assert (workdir / f"results/{SWEEP}/bundle.zip").is_file()
    assert any(tables.iterdir()) and any(figures.iterdir())

    # "As in a local run": the same records aggregated by a local (non-SLURM) run give the same
    # tables, byte for byte, and the same figures.
    local = cut_sweep(copy_workflow(tmp_path / "local"))
    shutil.copytree(workdir / f"results/{SWEEP}/cells", local / f"results/{SWEEP}/cells")
    local_targets = [f"results/{SWEEP}/tables", f"results/{SWEEP}/figures"]  # what is compared below
    lp = run_snakemake(local, ["--cores", "2", "--config", f"run=[{SWEEP}]", "--", *local_targets], env, timeout=600)
    assert lp.returncode == 0, lp.stdout[-3000:] + lp.stderr[-3000:]
    assert "rule cell" not in lp.stdout + lp.stderr, "the local run re-measured cells"
    local_tables = local / f"results/{SWEEP}/tables"
    assert sorted(f.name for f in tables.iterdir()) == sorted(f.name for f in local_tables.iterdir())
    for f in tables.iterdir():
        if f.suffix == ".csv":
            assert f.read_bytes() == (local_tables / f.name).read_bytes(), f.name
    assert sorted(f.name for f in figures.iterdir()) == sorted(
        f.name for f in (local / f"results/{SWEEP}/figures").iterdir()
    )
