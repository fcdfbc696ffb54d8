"""Setting up where a GPU is: offline from a folder of wheels, keeping the image's own packages;
and `make gpu-check` refusing, in one line, a machine without CUDA.

The GPU image is a stand-in: a venv (as on the node, whose python3 is a venv's) holding a CUDA
torch stand-in and metadata-only stand-ins of the packages such an image has (tests/standins).
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from standins import dists

# The image: every package kvbench asks for but Snakemake and jsonschema (as on the node), and a
# tabulate older than pyproject's range.
IMAGE = {
    "numpy": "2.5.2",
    "pandas": "3.0.0",
    "transformers": "5.17.0",
    "tokenizers": "0.23.2",
    "tiktoken": "0.14.0",
    "safetensors": "0.8.0",
    "seaborn": "0.13.2",
    "matplotlib": "3.10.0",
    "nvidia-ml-py": "13.580.82",
    "psutil": "7.0.0",
    "jinja2": "3.1.6",
    "pytest": "9.0.0",
    "tabulate": "0.8.10",
}
# The wheels: what the image lacks, a tabulate in range, and newer numpy/pandas/transformers/torch
# that must stay in the folder.
WHEELS = {
    "snakemake": ("9.27.1", ("attrs>=22.2",)),
    "snakemake-executor-plugin-slurm": ("2.8.0", ()),
    "jsonschema": ("4.26.0", ("attrs>=22.2",)),
    "attrs": ("26.1.0", ()),
    "tabulate": ("0.10.0", ()),
    "numpy": ("2.6.0", ()),
    "pandas": ("3.1.1", ()),
    "transformers": ("5.23.0", ()),
    "torch": ("2.13.0", ()),
}
INSTALLED = {"snakemake", "snakemake-executor-plugin-slurm", "jsonschema", "attrs", "tabulate", "kvbench"}


def _system_python() -> str:
    """A Python with no torch of its own (the venv's would bring the pinned CPU build along)."""
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if ".venv" not in p)
    found = shutil.which("python3", path=path)
    if not found:
        pytest.skip("no system python3")
    return found


def _site(python: Path) -> Path:
    code = "import sysconfig; print(sysconfig.get_paths()['purelib'])"
    return Path(subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout.strip())


def _modern_setuptools(site: Path) -> None:
    """The image's setuptools builds wheels itself (the venv's bundled one needs the wheel package)."""
    import setuptools

    for old in [*site.glob("setuptools*"), *site.glob("pkg_resources"), *site.glob("_distutils_hack")]:
        shutil.rmtree(old)
    ours = Path(setuptools.__file__).parent.parent
    for path in [*ours.glob("setuptools*"), ours / "_distutils_hack"]:
        shutil.copytree(path, site / path.name)


@pytest.fixture(scope="module")
def image(tmp_path_factory, repo) -> Path:
    """The node's python3: a venv with a CUDA torch stand-in and the image's packages (read only)."""
    node = tmp_path_factory.mktemp("image")
    subprocess.run([_system_python(), "-m", "venv", str(node)], check=True, timeout=300)
    site = _site(node / "bin" / "python")
    shutil.copytree(repo / "tests" / "standins" / "cuda-torch", site, dirs_exist_ok=True)
    _modern_setuptools(site)
    for name, version in IMAGE.items():
        dists.install(site, name, version)
    return node / "bin" / "python"


@pytest.fixture()
def offline() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    return env


def _setup(repo: Path, python: Path, venv: Path, wheels: Path, env: dict) -> subprocess.CompletedProcess:
    args = ["make", "-s", "-C", str(repo), "setup", f"VENV={venv}", f"WHEELS={wheels}", f"PYTHON={python}"]
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=600)


def _setup_lines(stderr: str) -> list[str]:
    """What setup said, without make's own closing line."""
    return [line for line in stderr.splitlines() if not line.startswith("make")]


def _own_packages(venv: Path) -> set[str]:
    site = _site(venv / "bin" / "python")
    names = {p.name.split("-")[0].replace("_", "-").lower() for p in site.glob("*.dist-info")}
    return names - {"pip", "setuptools"}


@pytest.mark.slow
def test_setup_on_a_cuda_image_installs_only_what_it_lacks(tmp_path, repo, image, offline):
    wheels = tmp_path / "wheels"
    for name, (version, requires) in WHEELS.items():
        dists.wheel(wheels, name, version, requires)
    venv = tmp_path / "venv"
    p = _setup(repo, image, venv, wheels, offline)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert re.search(r"^setup: reusing torch 2\.11\.0 and \d+ more packages", p.stdout, re.M), p.stdout

    # Nothing the image satisfies went into the venv; the out-of-range tabulate did, from the wheel.
    assert _own_packages(venv) == INSTALLED
    code = "import importlib.metadata as m, torch, sys; print(*map(m.version, sys.argv[1:]), torch.version.cuda)"
    seen = subprocess.run(
        [str(venv / "bin" / "python"), "-c", code, "numpy", "pandas", "transformers", "torch", "tabulate", "kvbench"],
        capture_output=True,
        text=True,
        env=offline,
    )
    assert seen.stdout.split() == ["2.5.2", "3.0.0", "5.17.0", "2.11.0", "0.10.0", "0.1.0", "12.8"], seen.stderr
    versions = (venv / "setup-versions.txt").read_text()
    assert "numpy==2.5.2  # image" in versions and "snakemake==9.27.1  # installed" in versions, versions


@pytest.mark.slow
def test_setup_keeps_the_images_numpy_even_when_a_wheel_wants_a_newer_one(tmp_path, repo, image, offline):
    wheels = tmp_path / "wheels"
    for name, (version, requires) in WHEELS.items():
        dists.wheel(wheels, name, version, ("numpy>=2.6",) if name == "snakemake" else requires)
    p = _setup(repo, image, tmp_path / "venv", wheels, offline)
    assert p.returncode != 0
    said = _setup_lines(p.stderr)
    assert len(said) == 1 and said[0].startswith("setup: error: ") and "numpy" in said[0], p.stderr
    assert not list(_site(tmp_path / "venv" / "bin" / "python").glob("numpy*")), "the image's numpy was replaced"


@pytest.mark.slow
def test_setup_names_a_missing_package_with_no_wheel_in_one_line(tmp_path, repo, image, offline):
    wheels = tmp_path / "wheels"
    for name, (version, requires) in WHEELS.items():
        if name != "snakemake":
            dists.wheel(wheels, name, version, requires)
    p = _setup(repo, image, tmp_path / "venv", wheels, offline)
    assert p.returncode != 0
    said = _setup_lines(p.stderr)
    assert len(said) == 1 and "snakemake<10,>=9.0" in said[0] and "make gpu-wheels" in said[0], p.stderr
    assert not (tmp_path / "venv").exists(), "refused before any work"


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
