"""`make gpu-check` sized for one short GPU slot: its step limits, its order, its rerun of only
what is missing, its archive. The steps are stand-ins here (tests/standins/gpu-check-step); the
script, its limits, its bookkeeping and its packing are the real ones."""

import os
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

SLOT_S = 9 * 60  # of a 15-minute slot, the node's start-up and the transfers take the rest
ORDER = ["setup", "benchmark", "gpu-tests", "sweep"]


@pytest.fixture()
def checkout(tmp_path, repo) -> Path:
    """The script in a folder of its own: it works where it lies, so results/ is the test's."""
    (tmp_path / "scripts").mkdir()
    shutil.copy2(repo / "scripts" / "gpu-check.sh", tmp_path / "scripts")
    return tmp_path


def _gpu_check(checkout: Path, repo: Path, fail: str = "") -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "GPU_CHECK_DEVICE": "Stand-in GPU 80GB",
        "GPU_CHECK_STUB": str(repo / "tests" / "standins" / "gpu-check-step"),
        "STUB_LOG": str(checkout / "stub.log"),
        "STUB_FAIL": fail,
    }
    return subprocess.run(
        [str(checkout / "scripts" / "gpu-check.sh")], capture_output=True, text=True, env=env, timeout=120
    )


def _ran(checkout: Path) -> list[str]:
    ran = (checkout / "stub.log").read_text().split()
    (checkout / "stub.log").unlink()
    return ran


def _steps(checkout: Path) -> dict[str, str]:
    lines = (checkout / "results" / "gpu-check-stand-in-gpu-80gb" / "steps.txt").read_text().splitlines()
    return dict(line.split(": ", 1) for line in lines)


def test_the_step_limits_fit_the_slot_and_the_evidence_comes_first(checkout, repo):
    p = _gpu_check(checkout, repo)
    assert p.returncode == 0, p.stdout + p.stderr
    assert _ran(checkout) == ORDER
    plan = re.search(r"plan: (.*) \(\+(\d+) s grace each\) = (\d+) s at most", p.stdout)
    limits = {name: int(s) for name, s in re.findall(r"([\w-]+) (\d+) s", plan.group(1))}
    assert list(limits) == ORDER
    worst = sum(limits.values()) + len(limits) * int(plan.group(2))
    assert worst == int(plan.group(3)) <= SLOT_S, p.stdout
    # Each step ran under the limit the plan gives.
    assert all(f"(limit {limits[n]} s)" in how for n, how in _steps(checkout).items()), _steps(checkout)


def test_a_second_run_after_a_partial_one_runs_only_what_is_missing_and_repacks(checkout, repo):
    first = _gpu_check(checkout, repo, fail="gpu-tests sweep")
    assert first.returncode == 1
    assert _ran(checkout) == ORDER
    steps = _steps(checkout)
    assert steps["benchmark"].startswith("ok") and steps["sweep"].startswith("failed (exit 1)"), steps
    archive = checkout / "results" / "gpu-check-stand-in-gpu-80gb.tar.gz"
    assert archive.stat().st_size < 16 * 2**20

    second = _gpu_check(checkout, repo)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _ran(checkout) == ["setup", "gpu-tests", "sweep"]  # setup: make's own no-op once done
    assert "benchmark: ok in an earlier run, not run again" in second.stdout
    assert all(how.startswith("ok") for how in _steps(checkout).values()), _steps(checkout)
    with tarfile.open(archive) as tar:
        steps_txt = tar.extractfile("gpu-check-stand-in-gpu-80gb/steps.txt").read().decode()
        names = tar.getnames()
    assert "sweep: ok" in steps_txt and "gpu-check-stand-in-gpu-80gb/benchmark.log" in names
