"""scripts/llamacpp-cmake-args.sh: which CMAKE_ARGS make llamacpp builds llama.cpp with.

CI once failed because a CPU machine carried nvcc without cuBLAS or a GPU, and the build asked for CUDA.
The stand-in nvcc and nvidia-smi below are shell stubs on PATH; they exist only in these tests.
"""

import os
import stat
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "llamacpp-cmake-args.sh"
ONLY = "-DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF"  # no multimodal or HTTPS library, on every build


def _stub(bin_dir: Path, name: str, output: str = "", rc: int = 0) -> None:
    path = bin_dir / name
    path.write_text(f"#!/bin/sh\nprintf '%s' '{output}'\nexit {rc}\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


def _args(bin_dir: Path, **env: str) -> subprocess.CompletedProcess:
    # PATH holds the stubs and the basics the script needs (bash, grep), nothing with a real nvcc
    base = {"PATH": f"{bin_dir}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root")}
    return subprocess.run(["bash", str(SCRIPT)], env={**base, **env}, capture_output=True, text=True)


@pytest.fixture
def bin_dir(tmp_path: Path) -> Path:
    d = tmp_path / "bin"
    d.mkdir()
    return d


def test_nvcc_without_a_gpu_builds_for_the_cpu(bin_dir):
    _stub(bin_dir, "nvcc")
    _stub(bin_dir, "nvidia-smi", rc=9)  # toolkit present, no driver or GPU: CI's case
    out = _args(bin_dir, CMAKE_ARGS="-DGGML_NATIVE=ON")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{ONLY} -DGGML_NATIVE=ON"  # the caller's own last


def test_nvcc_and_a_listed_gpu_build_with_cuda(bin_dir):
    _stub(bin_dir, "nvcc")
    _stub(bin_dir, "nvidia-smi", output="GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-x)\n")
    out = _args(bin_dir)
    assert out.stdout.strip() == f"{ONLY} -DGGML_CUDA=on"


def test_a_gpu_without_nvcc_builds_for_the_cpu(bin_dir):
    _stub(bin_dir, "nvidia-smi", output="GPU 0: NVIDIA H100\n")
    assert _args(bin_dir).stdout.strip() == ONLY


@pytest.mark.parametrize(("force", "expected"), [("1", f"{ONLY} -DGGML_CUDA=on"), ("0", ONLY)])
def test_the_choice_can_be_forced(bin_dir, force, expected):
    _stub(bin_dir, "nvcc")
    _stub(bin_dir, "nvidia-smi", output="GPU 0: NVIDIA H100\n")
    assert _args(bin_dir, KVBENCH_LLAMACPP_CUDA=force).stdout.strip() == expected


def test_a_bad_force_value_is_one_line(bin_dir):
    out = _args(bin_dir, KVBENCH_LLAMACPP_CUDA="yes")
    assert out.returncode == 2
    assert out.stderr.strip() == "KVBENCH_LLAMACPP_CUDA: 'yes' is not one of auto, 0, 1"
