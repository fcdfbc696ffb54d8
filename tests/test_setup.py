"""Setting up where a GPU is: offline from a folder of wheels, reusing the image's CUDA torch;
and `make gpu-check` refusing, in one line, a machine without CUDA."""

import os
import shutil
import subprocess
import sys

import pytest


def _system_python() -> str:
    """A Python with no torch of its own (the venv's would bring the pinned CPU build along)."""
    for candidate in ("python3.11", "python3"):
        path = shutil.which(
            candidate, path=os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
        )
        if path:
            return path
    pytest.skip("no system python3")


@pytest.mark.slow
def test_offline_setup_reuses_the_images_cuda_torch_and_installs_every_other_pin(tmp_path, repo):
    # On a machine with an index (here: this one), fill the folder as the README says.
    pins = [
        line
        for line in (repo / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#") and not line.startswith(("torch==", "triton==", "nvidia-"))
    ]
    (tmp_path / "req.txt").write_text("\n".join(pins) + "\n")
    wheels = tmp_path / "wheels"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-r", str(tmp_path / "req.txt"), "-w", str(wheels)],
        check=True,
        timeout=600,
    )

    # The GPU node: no index, no pip configuration, and a Python whose torch is a CUDA build
    # (a stand-in distribution, since no CUDA torch can be installed here).
    venv = tmp_path / "venv"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull, PYTHONPATH=str(repo / "tests" / "standins" / "cuda-torch"))
    p = subprocess.run(
        ["make", "-C", str(repo), "setup", f"VENV={venv}", f"WHEELS={wheels}", f"PYTHON={_system_python()}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "setup: reusing torch 2.11.0+cu128" in p.stdout
    assert "include-system-site-packages = true" in (venv / "pyvenv.cfg").read_text()
    assert not any(line.startswith("torch==") for line in (venv / "requirements.txt").read_text().splitlines())
    assert not list(venv.glob("lib/python3*/site-packages/torch")), "a second torch was installed"
    check = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import snakemake, pandas, seaborn, jinja2, jsonschema, importlib.metadata as m;"
            "print(m.version('kvbench'), m.version('torch'))",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert check.returncode == 0 and check.stdout.split() == ["0.1.0", "2.11.0"], check.stderr


def test_gpu_check_without_cuda_exits_2_with_one_line(repo):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    p = subprocess.run(
        [str(repo / "scripts" / "gpu-check.sh")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHON": sys.executable},
    )
    assert p.returncode == 2
    assert p.stdout == "" and p.stderr.count("\n") == 1 and "sees no CUDA device" in p.stderr, p.stderr
    assert not list((repo / "results").glob("gpu-check-*")), "nothing is written on a machine without CUDA"
