import os
import sys
import time
from pathlib import Path

import pytest

# `make test` runs two workers on a two-core machine: torch's default of one OpenMP thread per core in
# each worker (and in every CLI it starts) puts twice as many spinning threads as cores, and a step
# of a tiny model then waits on a descheduled thread. One core's share per worker, unless set.
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, len(os.sched_getaffinity(0)) // _WORKERS)))

import torch  # noqa: E402  (after OMP_NUM_THREADS: torch reads it once, at import)

REPO = Path(__file__).resolve().parent.parent
# Probes (bandwidth, matmul rate) are cached per host; keep the tests' cache out of $HOME.
os.environ.setdefault("KVBENCH_CACHE_DIR", str(REPO / ".cache" / "test-probes"))
# Measured once per test session, as a sweep measures once per run (kvbench.measure.roofline.PROBE_SINCE_ENV).
os.environ.setdefault("KVBENCH_PROBE_SINCE", str(time.time()))


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO


@pytest.fixture(scope="session")
def kvbench_exe() -> list[str]:
    """Run the CLI with the interpreter running the tests, so no PATH setup is needed."""
    return [sys.executable, "-m", "kvbench.cli"]


@pytest.fixture()
def tiny_model():
    from kvbench.models.gpt2 import build_random, preset

    return build_random(preset("tiny"), "cpu", torch.float32, seed=0)


def pytest_collection_modifyitems(config, items):
    """Files holding slow tests first. `make test`'s two workers take whole files in collection order,
    so a long file reached last (test_slurm.py, alphabetically) runs alone while the other worker idles."""
    slow_files = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow_files)  # stable: each file keeps its own order
