"""The real Snakemake on a small tiny-model sweep, in a copy of the workflow under a temp dir.

The tests share one workdir and run in order: a full run, then edits that each must rerun
exactly the jobs they affect (asserted from the dry-run's planned job list).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("kvbench") is None and not Path(sys.executable).with_name("kvbench").exists(),
        reason="kvbench is not installed (pip install -e .)",
    ),
]

SWEEP = {
    "description": "pipeline test sweep",
    "grid": {
        "model": ["tiny"],
        "dtype": ["fp32"],
        "kv_mode": ["none", "static"],
        "batch": [1],
        "prompt_len": [8, 16],
        "new_tokens": [4],
        "attention": ["sdpa"],
    },
    "settings": {"device": "cpu", "warmup": 0, "iters": 1, "seed": 0, "check_steps": 2},
}


def write_config(workdir: Path, sweep: dict, run=("t",)) -> None:
    (workdir / "config").mkdir(exist_ok=True)
    (workdir / "config" / "config.yaml").write_text(
        yaml.safe_dump({"run": list(run), "container": None, "sweeps": {"t": sweep}}, sort_keys=False)
    )


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    # As a user runs `.venv/bin/snakemake` without activating the venv: its bin is not on PATH,
    # and the workflow must still find `kvbench` for its jobs.
    venv_bin = str(Path(sys.executable).parent)
    env_path = os.pathsep.join(d for d in os.environ.get("PATH", "").split(os.pathsep) if d != venv_bin)
    p = subprocess.run(
        [*SNAKEMAKE, "--profile", str(REPO / "workflow/profiles/default"), *args],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=900,
        env={**os.environ, "PATH": env_path},
    )
    if check and p.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def planned(workdir: Path) -> set[tuple[str, str]]:
    """(rule, first output) of every job a dry run would execute."""
    out = snakemake(workdir, "-n", "--quiet", "host")  # the profile's verbose view: every job's block
    jobs, rule = set(), None
    for line in (out.stdout + out.stderr).splitlines():
        if m := re.match(r"^(?:local)?rule (\w+):", line.strip()):
            rule = m.group(1)
            if rule == "all":
                jobs.add(("all", ""))
        elif rule and line.strip().startswith("output:"):
            jobs.add((rule, line.split(":", 1)[1].strip().split(",")[0]))
            rule = None
    return jobs


def downstream() -> set[tuple[str, str]]:
    return {
        ("aggregate", "results/t/tables"),
        ("figures", "results/t/figures"),
        ("explain", "results/t/explanation.md"),
        ("bundle", "results/t/bundle.zip"),
        ("all", ""),
    }


def cell(mode: str, prompt: int, batch: int = 1) -> tuple[str, str]:
    return ("cell", f"results/t/cells/kvbench/tiny/fp32/{mode}/b{batch}-p{prompt}-n4-sdpa-kvall.json")


def copy_workflow(d: Path, with_package: bool = True) -> None:
    """The workflow (and package) copied, so touching code in a test never touches the repo."""
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copy(REPO / "Snakefile", d / "Snakefile")
    for sub in ("workflow", "envs") + (("kvbench",) if with_package else ()):
        shutil.copytree(REPO / sub, d / sub, ignore=ignore, symlinks=True)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("pipeline")
    copy_workflow(d)
    write_config(d, SWEEP)
    return d


def test_full_run_produces_records_tables_figures_and_a_verified_bundle(workdir):
    assert planned(workdir) == (
        {cell(m, p) for m in ("none", "static") for p in (8, 16)}
        | downstream()
        | {("visualize", "results/t/kv_attention.gif")}
    )
    out = snakemake(workdir)
    records = sorted((workdir / "results/t/cells").rglob("*.json"))
    assert len(records) == 4
    # The default profile prints one line per finished cell and Snakemake's progress, not each job's block.
    lines = (out.stdout + out.stderr).splitlines()
    assert len([line for line in lines if line.startswith("kvbench cell kvbench tiny fp32 ")]) == 4
    assert "10 of 10 steps (100%) done" in lines
    assert not [line for line in lines if line.lstrip().startswith(("input:", "output:", "reason:"))]
    tables = workdir / "results/t/tables"
    for name in ("cells.csv", "per_step.csv", "speedup.csv", "summary.md", "sweep_kv_none.csv", "sweep_kv_static.csv"):
        assert (tables / name).stat().st_size > 0, name
    pngs = sorted(p.name for p in (workdir / "results/t/figures").glob("*.png"))
    assert {
        "decode_ms_per_token.png",
        "peak_memory.png",
        "prefill_decode_split.png",
        "speedup_heatmap.png",
        "per_token_latency.png",
    } <= set(pngs)
    from kvbench.analysis.bundle import verify_bundle

    bundle = workdir / "results/t/bundle.zip"
    assert verify_bundle(bundle) == []
    names = zipfile.ZipFile(bundle).namelist()
    assert "MANIFEST.sha256" in names and "tables/cells.csv" in names and "figures/speedup_heatmap.png" in names
    assert sum(n.startswith("cells/") for n in names) == 4
    assert "extra/explanation.md" in names and "extra/kv_attention.gif" in names
    explanation = (workdir / "results/t/explanation.md").read_text()
    assert "2 × n_layer × batch × n_kv_head × tokens × head_dim × bytes" in explanation


def plain_words(caption: str, n: int = 4) -> str:
    """The first n consecutive words of a caption with no markup on them, as the report renders them."""
    for line in caption.split("-#}")[-1].splitlines():  # after a Jinja comment, which is not rendered
        words = line.split()
        for i in range(len(words) - n + 1):
            if all(w.isalpha() for w in words[i : i + n]):
                return " ".join(words[i : i + n])
    raise AssertionError(f"no {n} plain words in {caption[:200]!r}")


def test_the_report_holds_every_output_with_its_caption(workdir):
    snakemake(workdir, "--report", "report.zip")
    with zipfile.ZipFile(workdir / "report.zip") as z:
        names = z.namelist()
        html = z.read("report/report.html").decode()
    outputs = ("cells.csv", "summary.md", "decode_ms_per_token.png", "explanation.md", "kv_attention.gif")
    for name in (*outputs, "bundle.zip"):
        assert any(n.endswith("/" + name) for n in names), name
    for caption in ("workflow", "tables", "figures", "explanation", "kv_attention", "bundle"):
        assert plain_words((REPO / "workflow/report" / f"{caption}.rst").read_text()) in html, caption


def test_nothing_changed_nothing_runs(workdir):
    assert planned(workdir) == set()


def test_a_new_prompt_length_adds_only_its_cells(workdir):
    sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
    sweep["grid"]["prompt_len"] = [8, 16, 24]
    write_config(workdir, sweep)
    assert planned(workdir) == {cell("none", 24), cell("static", 24)} | downstream()
    snakemake(workdir)
    assert planned(workdir) == set()


def test_changing_iters_reruns_the_sweeps_cells(workdir):
    sweep = yaml.safe_load(yaml.safe_dump(SWEEP))
    sweep["grid"]["prompt_len"] = [8, 16, 24]
    sweep["settings"]["iters"] = 2
    write_config(workdir, sweep)
    assert planned(workdir) == {cell(m, p) for m in ("none", "static") for p in (8, 16, 24)} | downstream()
    # The plan is what this proves; running it would re-measure six cells that the full run already
    # proved run. Back to the settings the records were made with, nothing is left to run.
    sweep["settings"]["iters"] = 1
    write_config(workdir, sweep)
    assert planned(workdir) == set()


def test_a_deleted_record_reruns_that_cell_alone(workdir):
    (workdir / cell("static", 16)[1]).unlink()
    assert planned(workdir) == {cell("static", 16)} | downstream()
    snakemake(workdir)


def edit_code(path: Path) -> None:
    # Snakemake compares small inputs by checksum, so a bare `touch` is (rightly) not a change.
    path.write_text(path.read_text() + "\n# edited by a test\n")


def test_changing_plotting_code_reruns_no_cell(workdir):
    edit_code(workdir / "kvbench/analysis/figures.py")
    assert planned(workdir) == {("figures", "results/t/figures"), ("bundle", "results/t/bundle.zip"), ("all", "")}
    snakemake(workdir)


def test_changing_another_engines_code_reruns_no_cell_of_this_one(workdir):
    # The sweep's cells are engine kvbench's: editing a peer's engine (llama.cpp's, or the hf model that ct2 and
    # llama.cpp convert) leaves them measured; editing kvbench's own engine file re-measures them.
    edit_code(workdir / "kvbench/engines/llamacpp.py")
    edit_code(workdir / "kvbench/engines/hf.py")
    assert planned(workdir) == set()
    edit_code(workdir / "kvbench/engines/kvbench.py")
    assert {j for j in planned(workdir) if j[0] == "cell"} == {
        cell(m, p) for m in ("none", "static") for p in (8, 16, 24)
    }


def test_changing_measurement_code_reruns_every_cell(workdir):
    edit_code(workdir / "kvbench/engines/generate.py")
    assert {j for j in planned(workdir) if j[0] == "cell"} == {
        cell(m, p) for m in ("none", "static") for p in (8, 16, 24)
    }


def test_figures_are_byte_identical_for_the_same_tables(workdir, tmp_path):
    """Drawn again here, from the tables the last run's figures job (`kvbench figures`, another process) drew."""
    from kvbench.analysis.figures import render

    again, drawn = tmp_path / "again", workdir / "results/t/figures"
    render(workdir / "results/t/tables", again)
    files = sorted(p.name for p in again.iterdir())
    assert files and files == sorted(p.name for p in drawn.iterdir() if p.name != ".snakemake_timestamp")
    for name in files:
        assert (again / name).read_bytes() == (drawn / name).read_bytes(), name


def test_lint_is_clean(workdir):
    p = subprocess.run([*SNAKEMAKE, "--lint"], cwd=workdir, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Lints for" not in p.stdout + p.stderr


BAD_CONFIGS = [
    ("run: [t]\nsweeps: {t: {grid: {kv_mode: [none, static]}\n", "yaml"),  # malformed YAML
    (
        "run: [t]\nsweeps: {t: {grid: {kv_mode: [radix]}}}\n",
        "config: sweep 't': grid.kv_mode.0: 'radix' is not one of none, concat, static",
    ),
    ("run: [t]\nsweeps: {t: {grid: {colour: [red]}}}\n", "config: sweep 't': grid: Additional properties"),
    ("run: [t]\nsweeps: {t: {grid: {batch: []}}}\n", "config: sweep 't': grid.batch is empty"),
    (
        "run: [t]\nsweeps: {t: {grid: {model: [tiny], prompt_len: [60], new_tokens: [8]}}}\n",
        "config: sweep 't': grid.prompt_len + grid.new_tokens = 60 + 8 exceeds tiny's block_size 64",
    ),
    ("run: [nope]\nsweeps: {t: {grid: {model: [tiny]}}}\n", "config: run: 'nope' is not a defined sweep"),
    ("run: [t]\nsweeps: {t: {grid: {model: [tiny]}, settings: {device: tpu}}}\n", "config: sweep 't': settings.device"),
]


@pytest.mark.parametrize("text,message", BAD_CONFIGS, ids=["yaml", "value", "axis", "empty", "block", "run", "device"])
def test_bad_config_fails_fast_with_its_message_and_no_job(tmp_path, text, message):
    copy_workflow(tmp_path, with_package=False)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text(text)
    p = snakemake(tmp_path, check=False)
    out = p.stdout + p.stderr
    assert p.returncode != 0
    assert message.lower() in out.lower(), out[-2000:]
    assert not (tmp_path / "results").exists()
