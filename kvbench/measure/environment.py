"""Enough about where a cell ran to reproduce it, and to distrust it."""

from __future__ import annotations

import platform
import socket
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

import kvbench
from kvbench.core import env_vars
from kvbench.measure import nvml


def cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def git_commit() -> str | None:
    """The commit of the kvbench source tree, or what the container/job was built from."""
    if commit := env_vars.get(env_vars.GIT_COMMIT):
        return commit
    src = Path(kvbench.__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


# The package each peer engine runs (kvbench's own runs on torch, recorded beside it).
ENGINE_PACKAGES = {"hf": "transformers", "ct2": "ctranslate2", "llamacpp": "llama_cpp_python"}


def engine_version(engine: str) -> str | None:
    """The installed version of the package `engine` runs, or None (ours, or not installed)."""
    package = ENGINE_PACKAGES.get(engine)
    if package is None:
        return None
    try:
        return f"{package} {metadata.version(package)}"
    except metadata.PackageNotFoundError:
        return None


def collect(device: torch.device, engine: str = "kvbench") -> dict:
    """Static facts; the cell adds clocks_before/after and throttle reasons around its timing."""
    return {
        "engine_version": engine_version(engine),
        "kvbench_version": kvbench.__version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "driver": nvml.driver_version() if device.type == "cuda" else None,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": cpu_name(),
        "host": socket.gethostname(),
        "clocks_before": None,
        "clocks_after": None,
        "throttle_reasons": None,
        "slurm_job_id": env_vars.get(env_vars.SLURM_JOB_ID),
        "container_image": env_vars.container_image(),
        "torch_threads": torch.get_num_threads(),
        "argv": sys.argv[1:],
    }
