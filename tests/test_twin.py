"""The GPU node's twin on this CPU: its versions, its offline setup, then the suite on them.

The node's image holds transformers 5.17.0, tokenizers 0.23.2, numpy 2.5.2 and torch 2.11 (CUDA)
on Python 3.12 (scripts/gpu-node-packages.txt). No CPU build of torch for Python 3.12 installs
here (the index's Linux torch wheels are CUDA builds, 0.5 GB plus ~3 GB of nvidia libraries; the
one CPU build at hand is torch 2.13.0+cpu for Python 3.11), so the twin is Python 3.11 with torch
2.13.0+cpu and the node's transformers, tokenizers, tiktoken and safetensors; numpy is the newest
for 3.11 (numpy 2.5 needs 3.12). The image is a venv, as the node's python3 is. Then, with no
index reachable, `make setup WHEELS=` from what `make gpu-wheels PY=3.11` fetched, and the tests
that need no GPU, SLURM or container on the twin.

Slow (minutes): `make test-twin` runs it (KVBENCH_TWIN=1); elsewhere it is skipped.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
TWIN = REPO / ".twin"
# The node's versions where a CPU build exists for the twin's Python; torch: the CPU build at hand.
NODE = ["torch==2.13.0+cpu", "transformers==5.17.0", "tokenizers==0.23.2", "tiktoken==0.14.0", "safetensors==0.8.0"]
# What else the image holds that kvbench (and the wheels' dependencies) use; versions from the pins.
IMAGE_TOO = "setuptools pandas seaborn matplotlib jinja2 psutil pyyaml tabulate rich nvidia-ml-py pytest pytest-xdist"
INNER = ["-m", "not gpu and not slurm and not container", "--ignore=tests/test_twin.py", "--ignore=tests/test_setup.py"]

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not os.environ.get("KVBENCH_TWIN"), reason="minutes long: make test-twin runs it"),
]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _image_python() -> Path:
    """The twin's image: built once (with an index), reused while its recipe is unchanged."""
    image = TWIN / "image"
    recipe = "\n".join([*NODE, IMAGE_TOO, (REPO / "requirements.txt").read_text()])
    stamp = image / "recipe.txt"
    if stamp.exists() and stamp.read_text() == recipe:
        return image / "bin" / "python"
    shutil.rmtree(image, ignore_errors=True)
    base = shutil.which("python3.11") or sys.executable
    subprocess.run([base, "-m", "venv", str(image)], check=True)
    node = {_norm(line.split("==")[0]) for line in NODE}
    listed = (REPO / "scripts" / "gpu-node-packages.txt").read_text().splitlines()
    held = {_norm(line.split("==")[0]) for line in listed if line and not line.startswith("#")}
    pins = [line for line in (REPO / "requirements.txt").read_text().splitlines() if line and line[0] != "#"]
    constraints = TWIN / "image-constraints.txt"
    # The pins stand for the image's versions nobody read off the node; the node's own override them.
    keep = [p for p in pins if _norm(p.split("==")[0]) in held - node - {"numpy", "huggingface-hub", "hf-xet"}]
    constraints.write_text("\n".join(keep) + "\n")
    extra = sorted(_norm(p.split("==")[0]) for p in keep)
    pip = [str(image / "bin" / "python"), "-m", "pip", "install", "-q", "-c", str(constraints)]
    subprocess.run([*pip, *NODE, *IMAGE_TOO.split(), *extra], check=True, timeout=1200)
    stamp.write_text(recipe)
    return image / "bin" / "python"


def _offline() -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "VIRTUAL_ENV"))}
    env.update(PIP_NO_INDEX="1", PIP_CONFIG_FILE=os.devnull)
    return env


def test_the_node_twin_sets_up_offline_from_gpu_wheels_and_passes_the_suite():
    image = _image_python()
    wheels = TWIN / "wheels"
    if not any(wheels.glob("*.whl")):
        make = ["make", "-C", str(REPO), "gpu-wheels", "PY=3.11", f"GPU_WHEELS={wheels}", f"PYTHON={sys.executable}"]
        subprocess.run(make, check=True, timeout=900)
    venv = TWIN / "venv"
    shutil.rmtree(venv, ignore_errors=True)
    setup = ["make", "-s", "-C", str(REPO), "setup", "NODE=1", f"PYTHON={image}", f"VENV={venv}", f"WHEELS={wheels}"]
    p = subprocess.run(setup, capture_output=True, text=True, env=_offline(), timeout=900)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]

    versions = (venv / "setup-versions.txt").read_text()
    assert "torch==2.13.0+cpu  # image" in versions and "transformers==5.17.0  # image" in versions, versions
    assert re.search(r"^snakemake==9\.\S+  # installed", versions, re.M), versions
    code = "import importlib.metadata as m, sys; print(*map(m.version, sys.argv[1:]))"
    py = str(venv / "bin" / "python")
    seen = subprocess.run([py, "-c", code, "tokenizers", "numpy"], capture_output=True, text=True)
    assert seen.stdout.split()[0] == "0.23.2", seen.stdout + seen.stderr

    suite = [py, "-m", "pytest", "-q", "-n", "2", "--dist", "loadfile", "-p", "no:cacheprovider"]
    only = os.environ.get("KVBENCH_TWIN_TESTS", "tests").split()  # a narrower run, for working on the twin
    p = subprocess.run([*suite, *INNER, *only], cwd=REPO, capture_output=True, text=True, env=_offline(), timeout=1800)
    print(p.stdout[-2000:])
    assert p.returncode == 0, p.stdout[-6000:] + p.stderr[-3000:]
