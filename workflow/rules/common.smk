# Config validation and the sweep -> cell helpers every rule uses.
import functools
import os
import sys
import time
from pathlib import Path

REPO = Path(workflow.basedir)
sys.path.insert(0, str(REPO))  # kvbench importable even without `pip install -e .`

from kvbench.core import code_inputs
from kvbench.core import record as kvrecord
from kvbench.core import sweep as kvsweep

# Jobs call `kvbench`: find it beside the Python running Snakemake (a venv's bin need not be on
# PATH for `.venv/bin/snakemake`). Jobs inherit this; inside a container its own PATH decides.
_bin = str(Path(sys.executable).parent)
_path = os.environ["PATH"]
if _bin not in _path.split(os.pathsep):
    os.environ["PATH"] = os.pathsep.join([_bin, _path])
# The bandwidth/matmul probe is measured once per host per run: a cell reuses one cached on its
# host since this run began (kvbench/measure/roofline.py). Cluster jobs re-read this file: keep the first value.
os.environ.setdefault("KVBENCH_PROBE_SINCE", str(time.time()))


envvars:
    "PATH",
    "KVBENCH_PROBE_SINCE",


# Validated once, against workflow/schemas/config.schema.yaml and what the schema cannot say (a
# head count that divides the model's, a prompt that fits its block), failing on one line that
# names the sweep, the key and what is allowed.
kvsweep.check(config, REPO / "workflow" / "schemas" / "config.schema.yaml")

SWEEPS = config["sweeps"]
PACKAGE = Path(kvsweep.__file__).parent.parent  # the kvbench the jobs run: this checkout's, or the installed one


def cell_code(wildcards):
    """A cell's code inputs (kvbench/core/code_inputs.py): the shared measurement code and its own engine's
    files, so editing one peer's engine re-measures only that peer's cells, and a plotting change none."""
    return code_inputs.cell_code(PACKAGE, wildcards.engine)


CONFIG_FILE = workflow.configfiles[0] if workflow.configfiles else "config/config.yaml"

# Names this run's list of records moved aside (workflow/rules/cells.smk, set_aside).
RUN_STAMP = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


def analysis_code(*names):
    """The analysis modules (and templates, data) a downstream rule runs, with every kvbench module they import,
    transitively (kvbench/core/code_inputs.py), and the command wrapper every analysis command runs under."""
    modules = [f"analysis/{n}" for n in (*names, "command.py") if n.endswith(".py")]
    others = [str(PACKAGE / "analysis" / n) for n in names if not n.endswith(".py")]
    return sorted({str(p) for p in code_inputs.module_files(PACKAGE, *modules)}) + others


def sweep_cells(sweep):
    return kvsweep.cells(SWEEPS[sweep])


@functools.cache
def damaged_records(sweep):
    """The sweep's damaged records (truncated, not a record, another schema_version), found when the
    DAG is built. Reading only: a dry run lists them, and the set_aside job of a real run moves them."""
    cells = Path("results") / sweep / "cells"
    found = kvrecord.damaged(cells)
    if workflow.dryrun:
        for path, reason in found.items():
            print(
                f"kvbench: damaged record {path} ({reason}): a run moves it to {kvrecord.aside(cells, path)} "
                "and measures its cell again",
                file=sys.stderr,
            )
    return found


def records(sweep):
    """The sweep's records: when some are damaged, the set_aside job moves them first and Snakemake
    then plans their cells again, in the same run."""
    if damaged_records(sweep):
        checkpoints.set_aside.get(sweep=sweep, stamp=RUN_STAMP)
    return [kvsweep.cell_path(sweep, c) for c in sweep_cells(sweep)]


def cell_records(wildcards):
    return records(wildcards.sweep)


def run_records(wildcards):
    return [path for sweep in config.get("run", []) for path in records(sweep)]


def settings(wildcards):
    return kvsweep.sweep_settings(SWEEPS[wildcards.sweep])


def cell_flags(wildcards):
    cell = {axis: getattr(wildcards, axis) for axis in kvsweep.AXES}
    return kvsweep.cell_flags(cell, settings(wildcards))


def visualize_flags(wildcards):
    # Write-up 000's dashboard (layer 5, head 0 of gpt2) for the sweep's first model, clamped to its size.
    from kvbench.core.presets import PRESETS

    model = kvsweep.sweep_axes(SWEEPS[wildcards.sweep])["model"][0]
    cfg = PRESETS[model]
    return (
        f"--model {model} --layer {min(5, cfg.n_layer - 1)} --head 0 --prompt-len 8 --new-tokens 16 "
        f"--seed {settings(wildcards)['seed']}"
    )


def on_gpu(wildcards):
    return settings(wildcards)["device"].startswith("cuda")


def cell_threads(wildcards):
    # On a CPU a cell gets every core so no two cells share one (their timings would lie);
    # on a GPU the `gpu` resource keeps cells apart and a few cores feed the device.
    explicit = settings(wildcards)["threads"]
    return explicit or (min(4, workflow.cores) if on_gpu(wildcards) else workflow.cores)


# One executing run per directory: cells claim every core, so a second sweep's cells would share them and both
# sweeps' timings would lie (Snakemake's own lock refuses only a run that writes the same files). The kernel
# drops an flock when its process ends, so a killed run leaves no stale lock. Dry runs never reach onstart.
onstart:
    import fcntl

    global _run_lock
    _run_lock = open(Path(".snakemake") / "kvbench-run.lock", "w")
    try:
        fcntl.flock(_run_lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        print(
            f"kvbench: refused: another snakemake is running a sweep in {os.getcwd()}; wait for it "
            f"(or stop it) and run again",
            file=sys.stderr,
        )
        raise SystemExit(1)  # one line, not a traceback; Snakemake still drops this run's own locks
