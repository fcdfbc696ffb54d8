import os
import sys
import time
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
# Probes (bandwidth, matmul rate) are cached per host; keep the tests' cache out of $HOME.
os.environ.setdefault("KVBENCH_CACHE_DIR", str(REPO / ".cache" / "test-probes"))
# Measured once per test session, as a sweep measures once per run (kvbench.roofline.PROBE_SINCE_ENV).
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
    from kvbench.model import build_random, preset

    return build_random(preset("tiny"), "cpu", torch.float32, seed=0)
