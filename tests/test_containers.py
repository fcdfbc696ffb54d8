"""Container plumbing: a cell runs inside the kvbench image, and Snakemake's apptainer path runs it.

What this tests is the plumbing, not the production image. No registry image can be pulled here,
Docker's engine does not run and Apptainer cannot be installed, so scripts/build-images.sh builds
a CPU variant of the image from the same containers/Dockerfile with podman, on a Debian base made
with debootstrap, and exports it as an Apptainer sandbox; tests/standins/apptainer stands in for the
`apptainer` command over bubblewrap (see containers/README.md for what is and is not covered).

Evidence that a cell ran *inside* the image and not on the host: its record names the image
(environment.container_image, from the image's KVBENCH_CONTAINER_IMAGE) and was made by the
image's Python (Debian's), which differs from the test runner's.

Needs root (debootstrap, podman, bubblewrap as root) and apt (or the packages already installed);
skips otherwise. The first build takes about 5 minutes; later runs reuse it.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from test_slurm import (
    TEST_CLUSTER_ARGS,
    copy_workflow,
    install_system_deps,
    machine_skip_reason,
    run_snakemake,
    shared_cluster,
    slurm_profile,
    submitted_job_ids,
)

from kvbench.core import sweep as kvsweep

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"
APPTAINER = REPO / "tests" / "standins" / "apptainer"  # a test stand-in over bubblewrap, not Apptainer
VENV_BIN = Path(sys.executable).parent
IMAGE = "localhost/kvbench:cpu"
SWEEP = "tiny"

pytestmark = [pytest.mark.container, pytest.mark.slow]


@pytest.fixture(scope="session")
def image():
    """Build (or find up to date) the CPU test image and its Apptainer sandbox."""
    reason = machine_skip_reason("debootstrap, podman and bubblewrap")
    if reason:
        pytest.skip(reason)
    install_system_deps()
    t0 = time.monotonic()
    p = subprocess.run(
        [str(SCRIPTS / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "KVBENCH_TEST_IMAGE": IMAGE},
    )
    assert p.returncode == 0, f"scripts/build-images.sh failed:\n{p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    print(f"\nbuild-images took {time.monotonic() - t0:.0f} s", file=sys.stderr)
    sandbox = Path(p.stdout.strip().splitlines()[-1])
    assert (sandbox / ".singularity.d/env").is_dir(), p.stderr
    image_dir = Path(os.environ.get("KVBENCH_IMAGE_DIR", "/var/tmp/kvbench-images"))
    return {"name": IMAGE, "sandbox": sandbox, "containers_conf": image_dir / "containers.conf"}


@pytest.fixture(scope="module")
def standin_path(tmp_path_factory) -> str:
    """A PATH whose `apptainer` is the stand-in (Snakemake looks it up by that name)."""
    bin_dir = tmp_path_factory.mktemp("apptainer-bin")
    (bin_dir / "apptainer").symlink_to(APPTAINER)
    return f"{bin_dir}:{VENV_BIN}:{os.environ.get('PATH', '')}"


@pytest.fixture(scope="module")
def image_python(image) -> str:
    p = subprocess.run(
        [
            str(APPTAINER),
            "exec",
            str(image["sandbox"]),
            "python3",
            "-c",
            "import platform; print(platform.python_version())",
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    return p.stdout.strip()


def tiny_cell(index: int = 0) -> tuple[str, str]:
    """(record path, `kvbench cell` flags) of one cell of the tiny sweep in config/config.yaml."""
    sweep = yaml.safe_load((REPO / "config/config.yaml").read_text())["sweeps"][SWEEP]
    cell = kvsweep.cells(sweep)[index]
    return kvsweep.cell_path(SWEEP, cell), kvsweep.cell_flags(cell, kvsweep.sweep_settings(sweep))


def assert_ran_in_image(record: dict, image: dict, image_python: str) -> None:
    assert record["status"] == "ok", record.get("error")
    env = record["environment"]
    assert env["container_image"] == image["name"]
    assert env["python"] == image_python
    if image_python != platform.python_version():  # Debian's 3.11.2 vs the runner's
        assert env["python"] != platform.python_version()


def test_dockerfile_image_runs_a_cell_with_podman(image, image_python, tmp_path):
    """The image built from containers/Dockerfile, run the Docker way: non-root, kvbench on PATH."""
    env = {**os.environ, "CONTAINERS_CONF": str(image["containers_conf"])}
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o777)  # the image runs as its non-root user `kvbench`
    _, flags = tiny_cell()
    p = subprocess.run(
        [
            "podman",
            "run",
            "--rm",
            "--network",
            "none",
            "-v",
            f"{out}:/out",
            image["name"],
            "sh",
            "-c",
            f"id -un; command -v kvbench; kvbench cell {flags} --out /out/cell.json",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    user, exe = p.stdout.split()[:2]
    assert user == "kvbench" and exe == "/opt/kvbench/bin/kvbench"
    assert_ran_in_image(json.loads((out / "cell.json").read_text()), image, image_python)


def test_apptainer_standin_exec_runs_a_cell(image, image_python, tmp_path):
    """`apptainer exec` as Snakemake spells it, by hand: --home <cwd>, the sandbox, sh -c."""
    _, flags = tiny_cell(1)
    cmd = [
        str(APPTAINER),
        "--quiet",
        "--silent",
        "exec",
        "--home",
        str(tmp_path),
        "--nv",
        str(image["sandbox"]),
        "sh",
        "-c",
        f"kvbench cell {flags} --out cell.json",
    ]
    p = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr[-3000:]
    assert_ran_in_image(json.loads((tmp_path / "cell.json").read_text()), image, image_python)


def test_snakemake_apptainer_path_runs_a_cell(image, image_python, standin_path, tmp_path):
    """--software-deployment-method apptainer: Snakemake pulls docker://<image> and execs the cell in it."""
    workdir = copy_workflow(tmp_path / "wf")
    target, _ = tiny_cell(2)
    env = {**os.environ, "PATH": standin_path, "KVBENCH_CACHE_DIR": str(workdir / ".cache")}
    p = run_snakemake(
        workdir,
        [
            "--cores",
            "2",
            "--sdm",
            "apptainer",
            "--apptainer-args=--nv",
            "--config",
            f"run=[{SWEEP}]",
            f"container=docker://{image['name']}",
            "--",
            target,
        ],
        env,
        timeout=600,
    )
    output = p.stdout + p.stderr
    assert p.returncode == 0, output[-4000:]
    assert f"Pulling singularity image docker://{image['name']}" in output
    assert "Activating singularity image" in output
    pulled = list((workdir / ".snakemake/singularity").glob("*.simg"))
    assert len(pulled) == 1 and pulled[0].resolve() == image["sandbox"].resolve()
    assert_ran_in_image(json.loads((workdir / target).read_text()), image, image_python)


@pytest.fixture(scope="module")
def slurm_cluster():
    reason = machine_skip_reason()
    if reason:
        pytest.skip(reason)
    with shared_cluster():
        yield


def test_slurm_profile_runs_a_cell_in_the_container(image, image_python, standin_path, slurm_cluster, tmp_path):
    """The production path: workflow/profiles/slurm as shipped (apptainer, --nv), one cell as one SLURM job."""
    workdir = copy_workflow(tmp_path / "wf")
    profile = slurm_profile(workdir / "test-profile", containers=True)
    shipped = yaml.safe_load((REPO / "workflow/profiles/slurm/config.yaml").read_text())
    assert shipped["software-deployment-method"] == "apptainer" and "--nv" in shipped["apptainer-args"]
    target, _ = tiny_cell(3)
    env = {**os.environ, "PATH": standin_path, "KVBENCH_CACHE_DIR": str(workdir / ".cache")}
    p = run_snakemake(
        workdir,
        [
            "--workflow-profile",
            str(profile),
            *TEST_CLUSTER_ARGS,
            "--slurm-keep-successful-logs",
            "--config",
            f"run=[{SWEEP}]",
            f"container=docker://{image['name']}",
            "--",
            target,
        ],
        env,
        timeout=900,
    )
    output = p.stdout + p.stderr
    assert p.returncode == 0, output[-4000:]
    submitted = submitted_job_ids(output)
    assert len(submitted) == 1, output[-3000:]
    record = json.loads((workdir / target).read_text())
    assert_ran_in_image(record, image, image_python)
    assert record["environment"]["slurm_job_id"] == submitted[0]
    # The SLURM job itself (not the submitting snakemake) activated the image.
    logs = list((workdir / ".snakemake/slurm_logs").rglob(f"{submitted[0]}.log"))
    assert len(logs) == 1 and "Activating singularity image" in logs[0].read_text()
