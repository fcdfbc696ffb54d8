"""Sweeps: a named grid of cell axes plus fixed settings, expanded into cells.

The Snakefile calls `check` when it parses the config, so a bad sweep stops the run before
any job starts with one message naming the sweep, the key and what is allowed. Nothing
here imports torch: parsing the DAG of a 1,000-cell sweep must stay fast.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from kvbench.core.presets import (
    COMPILED_ENGINES,
    ENGINE_KV_MODES,
    KV_MODE_OPTIONS,
    KV_MODES,
    OWN_KV_HEADS_ENGINES,
    PRESETS,
)

# The n_kv_head a config and a cell's path say for plain multi-head attention (as many K/V heads as
# query heads); `kvbench cell` and the record take a count instead (`kv_head_count`).
ALL_HEADS = "all"
# Grid axes in the order they appear in a cell's path; every axis has a default.
AXES: dict[str, object] = {
    "engine": ["kvbench"],
    "model": ["gpt2"],
    "dtype": ["fp32"],
    "kv_mode": list(KV_MODES),
    "batch": [1],
    "prompt_len": [128],
    "new_tokens": [32],
    "attention": ["sdpa"],
    "n_kv_head": [ALL_HEADS],
    "threads": [None],  # torch's CPU threads (and a peer engine's own); None: as many as the job holds
    # How a batch is laid out and paged (kvbench/caches/ragged.py, kv_cache_paged.py); None: the cell's default.
    "prompt_spread": [None],
    "shared_prefix": [None],
    "block_tokens": [None],
}
# Axes a path names only when the grid sets them (as threads): the axis, its part's prefix (…-s0.5-x8-k16.json).
LAYOUT_PARTS = {"prompt_spread": "-s", "shared_prefix": "-x", "block_tokens": "-k"}
# What every cell of a sweep shares (its `settings:`), with the defaults a sweep may leave out.
SETTINGS: dict[str, object] = {
    "device": "auto",
    "warmup": 1,
    "iters": 3,
    "seed": 0,
    "check_steps": 16,
    "threads": None,
    "block_size": None,
    "compile": False,
    # The approximate caches' settings (a cell of another kv mode ignores them); None: the cell's default.
    "window": None,
    "sinks": None,
    "kv_group_size": None,
}
# Settings that only schedule a job (resources), not change what it measures.
JOB_SETTINGS = ("mem_mb", "runtime")
CELL_PATTERN = (
    "results/{sweep}/cells/{engine}/{model}/{dtype}/{kv_mode}/"
    "b{batch}-p{prompt_len}-n{new_tokens}-{attention}-kv{n_kv_head}{threads}{prompt_spread}{shared_prefix}{block_tokens}.json"
)
# A path names its threads only when the grid sets them (…-kvall-t4.json): other paths stay as they were.
THREADS_PART = "-t"
# Each cell's stderr, beside its record's path: results/<sweep>/logs/cells/.../<cell>.log
CELL_LOG_PATTERN = CELL_PATTERN.replace("/cells/", "/logs/cells/", 1).removesuffix(".json") + ".log"


class SweepError(ValueError):
    pass


def _schema_errors(config: dict, schema_path: Path) -> list[str]:
    import jsonschema
    import yaml

    schema = yaml.safe_load(schema_path.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    out = []
    for e in sorted(validator.iter_errors(config), key=lambda e: [str(p) for p in e.path]):
        path = list(e.path)
        if len(path) >= 2 and path[0] == "sweeps":
            where = f"sweep {path[1]!r}: " + (".".join(str(p) for p in path[2:]) or "<sweep>")
        else:
            where = ".".join(str(p) for p in path) or "<config>"
        out.append(f"config: {where}: {_short(e)}")
    return out


def _short(e) -> str:
    """jsonschema's message, with the allowed values spelled out for enums."""
    if e.validator == "enum":
        return f"{e.instance!r} is not one of {', '.join(map(str, e.validator_value))}"
    if e.validator == "additionalProperties":
        allowed = ", ".join(e.schema.get("properties", {}))
        return f"{e.message} (allowed: {allowed})"
    return e.message


def kv_head_count(n_kv_head: int | str) -> int | None:
    """The `--n-kv-head` of a config or path value: None (the model's own head count) for `all`."""
    return None if str(n_kv_head) == ALL_HEADS else int(n_kv_head)


def sweep_axes(sweep: dict) -> dict[str, list]:
    return {axis: list(sweep.get("grid", {}).get(axis, default)) for axis, default in AXES.items()}


def sweep_settings(sweep: dict) -> dict:
    return {**SETTINGS, **sweep.get("settings", {})}


def cells(sweep: dict) -> list[dict]:
    """Every cell of a sweep, in a stable order. An engine crosses only the kv modes it runs (ct2 has one
    cache, its own), so one grid holds every engine side by side."""
    axes = sweep_axes(sweep)
    axes["threads"] = ["" if t is None else f"{THREADS_PART}{t}" for t in axes["threads"]]  # as a path says them
    for axis, part in LAYOUT_PARTS.items():
        axes[axis] = ["" if v is None else f"{part}{v}" for v in axes[axis]]
    grid = (dict(zip(axes, values)) for values in itertools.product(*axes.values()))
    out = [c for c in grid if c["engine"] not in ENGINE_KV_MODES or c["kv_mode"] in ENGINE_KV_MODES[c["engine"]]]
    for c in out:  # only paged has blocks: another mode's cell is one cell whatever the block size
        if c["kv_mode"] != "paged":
            c["block_tokens"] = ""
        if c["batch"] == 1:  # one sequence has no other to differ from or share with: the plain cell
            c["prompt_spread"] = c["shared_prefix"] = ""
    return list({cell_path("", c): c for c in out}.values())


def check(config: dict, schema_path: Path) -> None:
    """Raise SweepError naming the sweep, the key and what is allowed, for the first problem found."""
    errors = _schema_errors(config, schema_path)
    if errors:
        raise SweepError(errors[0])
    sweeps = config["sweeps"]
    for name in config.get("run", []):
        if name not in sweeps:
            raise SweepError(f"config: run: {name!r} is not a defined sweep (defined: {', '.join(sweeps)})")
    for name, sweep in sweeps.items():
        for axis, values in sweep_axes(sweep).items():
            if not values:
                raise SweepError(f"config: sweep {name!r}: grid.{axis} is empty")
        block_override = sweep_settings(sweep)["block_size"]
        for engine in sweep_axes(sweep)["engine"]:
            if not set(sweep_axes(sweep)["kv_mode"]) & set(ENGINE_KV_MODES.get(engine, KV_MODES)):
                raise SweepError(
                    f"config: sweep {name!r}: grid.kv_mode: engine {engine} runs "
                    f"{', '.join(ENGINE_KV_MODES[engine])} only, and the grid has none of them"
                )
        for cell in cells(sweep):
            kv_heads = kv_head_count(cell["n_kv_head"])
            own = PRESETS[cell["model"]].kv_heads
            if cell["engine"] in OWN_KV_HEADS_ENGINES and kv_heads not in (None, own):
                raise SweepError(
                    f"config: sweep {name!r}: grid.n_kv_head: engine {cell['engine']} runs the model's own K/V "
                    f"heads ({cell['model']}: {own}): {ALL_HEADS} or {own} only"
                )
            n_head = PRESETS[cell["model"]].n_head
            if kv_heads is not None and n_head % kv_heads:
                raise SweepError(
                    f"config: sweep {name!r}: grid.n_kv_head: {kv_heads} must divide {cell['model']}'s n_head {n_head}"
                )
            block = block_override or PRESETS[cell["model"]].block_size
            if cell["prompt_len"] + cell["new_tokens"] > block:
                raise SweepError(
                    f"config: sweep {name!r}: grid.prompt_len + grid.new_tokens = {cell['prompt_len']} + "
                    f"{cell['new_tokens']} exceeds {cell['model']}'s block_size {block}"
                )


def thread_count(threads: int | str | None) -> int | None:
    """A cell's threads as its path says them ('-t4'; '': as many as the job holds) as a count."""
    return None if threads in (None, "") else int(str(threads).removeprefix(THREADS_PART))


def cell_path(sweep_name: str, cell: dict) -> str:
    return CELL_PATTERN.format(sweep=sweep_name, **cell)


def cell_flags(cell: dict, settings: dict) -> str:
    """The `kvbench cell` flags of one cell: every setting that changes its result."""
    kv_heads = kv_head_count(cell["n_kv_head"])
    # A mode's own settings (a window, a group size) go to its cells only: another mode's cell would ignore them.
    own = KV_MODE_OPTIONS.get(cell["kv_mode"], ())
    others = [k for options in KV_MODE_OPTIONS.values() for k in options if k not in own]
    merged = {
        **{k: v for k, v in cell.items() if k not in ("n_kv_head", "threads", *LAYOUT_PARTS)},
        **{k: str(cell[k]).removeprefix(p) for k, p in LAYOUT_PARTS.items() if cell.get(k) not in (None, "")},
        **({} if kv_heads is None else {"n_kv_head": kv_heads}),  # all heads: no flag, the model's own count
        **{k: v for k, v in settings.items() if v is not None and k not in (*JOB_SETTINGS, "compile", *others)},
    }
    if (threads := thread_count(cell.get("threads"))) is not None:  # the grid's over the settings'
        merged["threads"] = threads
    flags = [f"--{k.replace('_', '-')} {merged[k]}" for k in sorted(merged)]
    if compiled(cell, settings):  # absent when off, so a sweep without `compile` keeps its flags (no rerun)
        flags.append("--compile")
    return " ".join(flags)


def compiled(cell: dict, settings: dict) -> bool:
    """`compile: true` compiles every cell, a list of kv modes only those modes' cells; of the engines that have a
    compiled form (a peer that is compiled C++ already runs as it is beside them)."""
    setting = settings.get("compile", False)
    chosen = setting is True or (isinstance(setting, list) and cell["kv_mode"] in setting)
    return chosen and cell.get("engine", "kvbench") in COMPILED_ENGINES
