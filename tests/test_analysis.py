"""Tests of kvbench.analysis (tables, figures, bundle, publish) on synthetic schema-valid records.

CPU-only and torch-free: the records are made here by a small factory and validated against
workflow/schemas/record.schema.json, so a schema change that the analysis does not follow
fails here first.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import matplotlib
import pandas as pd
import pytest

from kvbench.analysis import aggregate as agg
from kvbench.analysis import bundle as bnd
from kvbench.analysis import figures as fig
from kvbench.analysis import publish as pub

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "workflow/schemas/record.schema.json").read_text())
VALIDATOR = jsonschema.Draft202012Validator(SCHEMA)

MODES = ("none", "concat", "static")
BATCHES = (1, 2)
PROMPTS = (8, 16)
NEW_TOKENS = 5
OOM_CELL = ("concat", 2, 16)  # the one cell of the grid that ran out of memory
N_LAYER, N_HEAD, N_EMBD = 2, 2, 64
DEVICE_NAME = "NVIDIA Test GPU 80GB"
SWEEP = "tiny"

# Per-mode cost model: (fixed ms, ms per context token per sequence). Odd thirds on purpose, so
# ratios are not round and a rounded speedup would fail the exact-equality assertions.
COST = {"none": (1.0 / 3.0, 0.05), "concat": (0.7, 0.004 / 3.0), "static": (0.6, 0.001),
        "static-int8": (0.55, 0.0007)}
# Model shapes: (n_layer, n_head, n_embd, n_params, cost scale of the per-context term).
MODELS = {"gpt2-tiny": (N_LAYER, N_HEAD, N_EMBD, 150_000, 1.0),
          "gpt2": (12, 12, 768, 124_439_808, 3.0),
          "gpt2-medium": (24, 16, 1024, 354_823_168, 7.0)}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
INT8_LOGIT_DIFF = 0.0123  # the synthetic int8 cache's logit error


# ---------------------------------------------------------------------------------- factory

def kv_bytes_for(model: str, kv_mode: str, batch: int, tokens: int, dtype: str = "fp32",
                 n_kv_head: int | None = None) -> int:
    """The KV-cache formula, written out independently of kvbench: 2 x layers x batch x kv heads
    x tokens x head_dim x bytes (int8: 1 byte per element + a 4-byte scale per token and head)."""
    n_layer, n_head, n_embd, _, _ = MODELS[model]
    head_dim, kv = n_embd // n_head, n_kv_head or n_head
    per_vector = head_dim + 4 if kv_mode == "static-int8" else head_dim * DTYPE_BYTES[dtype]
    return 2 * n_layer * batch * kv * tokens * per_vector


def make_record(kv_mode: str, batch: int, prompt_len: int, *, status: str = "ok",
                new_tokens: int = NEW_TOKENS, dtype: str = "fp32", model: str = "gpt2-tiny",
                device_name: str | None = DEVICE_NAME, n_kv_head: int | None = None,
                mismatch_step: int | None = None) -> dict[str, Any]:
    """One record exactly as record.schema.json describes it (non-ok: null sections)."""
    n_layer, n_head, n_embd, n_params, scale = MODELS[model]
    cell = {"model": model, "kv_mode": kv_mode, "batch": batch, "prompt_len": prompt_len,
            "new_tokens": new_tokens, "dtype": dtype, "attention": "sdpa", "device": "cuda:0",
            "prompt_source": "random", "seed": 1337, "warmup": 1, "iters": 3,
            "engine": "kvbench", "n_kv_head": n_kv_head, "compile": False, "checkpoint": None,
            "check_steps": 4}
    env = {"kvbench_version": "0.1.0", "git_commit": "0" * 40, "python": "3.11.9",
           "torch": "2.13.0", "cuda": "12.8", "driver": "570.1", "device_name": device_name,
           "cpu": "Test CPU", "host": "node1", "clocks_before": {"sm_mhz": 1980},
           "clocks_after": {"sm_mhz": 1980}, "throttle_reasons": [], "slurm_job_id": None,
           "container_image": None}
    rec: dict[str, Any] = {
        "schema_version": 1, "status": status, "error": None,
        "created_utc": "2025-01-01T00:00:00Z", "cell": cell, "model_info": None,
        "latency": None, "memory": None, "energy": None, "analytic": None, "check": None,
        "environment": env}
    kv_bytes = kv_bytes_for(model, kv_mode, batch, prompt_len + new_tokens - 1, dtype,
                            n_kv_head)
    weights = n_params * DTYPE_BYTES[dtype]
    if status == "oom":
        rec["error"] = "CUDA out of memory. Tried to allocate 2.00 MiB"
        rec["memory"] = {"torch_peak_allocated_bytes": 79 * 2**30,
                         "torch_peak_reserved_bytes": 80 * 2**30, "nvml_peak_used_bytes": None,
                         "rss_peak_bytes": None, "weights_bytes": weights,
                         "kv_cache_bytes_formula": kv_bytes, "kv_cache_bytes_measured": None}
        return rec
    if status != "ok":
        rec["error"] = f"{status}: synthetic"
        return rec
    fixed, per_ctx = COST[kv_mode]
    per_ctx *= scale
    steps = [fixed + per_ctx * batch * (prompt_len + s) for s in range(1, new_tokens)]
    decode = sum(steps) / len(steps)
    prefill = 0.25 + 0.01 * batch * prompt_len + (0.01 if kv_mode != "none" else 0.0)
    total = prefill + sum(steps)
    stats = lambda m: {"median": m, "min": m * 0.95, "max": m * 1.1}  # noqa: E731
    rec["model_info"] = {"n_layer": n_layer, "n_head": n_head, "n_kv_head": n_kv_head or n_head,
                         "n_embd": n_embd, "block_size": 128, "vocab_size": 512,
                         "n_params": n_params - (0 if n_kv_head is None else 1000 * n_kv_head)}
    rec["latency"] = {"prefill_ms": stats(prefill), "decode_ms_per_token": stats(decode),
                      "per_step_decode_ms": steps,
                      "decode_tokens_per_s": batch * len(steps) / (sum(steps) / 1000.0),
                      "total_generate_ms": stats(total), "decode_steps": len(steps)}
    cached = kv_mode != "none"
    rec["memory"] = {"torch_peak_allocated_bytes": 2_000_000 + 5000 * batch * prompt_len,
                     "torch_peak_reserved_bytes": 4_194_304, "nvml_peak_used_bytes": 500_000_000,
                     "rss_peak_bytes": 300_000_000, "weights_bytes": weights,
                     "kv_cache_bytes_formula": kv_bytes if cached else None,
                     "kv_cache_bytes_measured": kv_bytes if cached else None}
    rec["energy"] = {"decode_joules_per_token": 0.01 * batch, "method": "nvml_energy_counter"}
    floor = 0.2
    rec["analytic"] = {"decode_flops_per_token": 3.0e5 * batch,
                       "decode_bytes_per_token": 6.0e5 + kv_bytes, "floor_ms_per_token": floor,
                       "fraction_of_floor": floor / decode, "bandwidth_bytes_per_s": 3.0e12,
                       "bandwidth_source": "table", "suspect": False}
    rec["check"] = {"tokens_sha256": "ab" * 32, "matches_reference": True if cached else None}
    if kv_mode == "static-int8":  # a lossy cache: a logit error, the tokens may differ
        rec["check"].update({"reference_steps": 4, "first_mismatch_step": mismatch_step,
                             "max_logit_diff": INT8_LOGIT_DIFF * scale,
                             "matches_reference": mismatch_step is None})
    elif cached:
        rec["check"].update({"reference_steps": 4, "first_mismatch_step": None,
                             "max_logit_diff": 0.0})
    return rec


def cell_path(root: Path, rec: dict[str, Any]) -> Path:
    c = rec["cell"]
    kv = "" if c["n_kv_head"] is None else f"-kv{c['n_kv_head']}"
    return (root / "cells" / c["model"] / c["dtype"] / c["kv_mode"]
            / f"b{c['batch']}-p{c['prompt_len']}-n{c['new_tokens']}-{c['attention']}{kv}.json")


def write_records(root: Path, records: list[dict[str, Any]]) -> list[Path]:
    paths = []
    for rec in records:
        VALIDATOR.validate(rec)  # the factory must match the schema exactly
        p = cell_path(root, rec)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(rec, indent=1))
        paths.append(p)
    return paths


def grid_records(modes: tuple[str, ...] = MODES) -> list[dict[str, Any]]:
    return [make_record(m, b, p, status="oom" if (m, b, p) == OOM_CELL else "ok")
            for m in modes for b in BATCHES for p in PROMPTS]


# A second synthetic sweep over the axes of write-ups 002/003 and 002's extensions: two models,
# two generation lengths, every kv mode, and a grouped-query variant (none and static at 4 K/V
# heads). One oom cell, and one int8 cell whose greedy tokens diverge.
AXIS_MODELS = ("gpt2", "gpt2-medium")
AXIS_LENGTHS = (20, 50)
AXIS_MODES = ("none", "concat", "static", "static-int8")
AXIS_PROMPT = 16
GQA_HEADS = 4
AXIS_OOM = ("gpt2-medium", "concat", 50)
INT8_MISMATCH = ("gpt2-medium", 50, 3)  # model, new_tokens, first mismatching step


def axis_records() -> list[dict[str, Any]]:
    recs = []
    for model in AXIS_MODELS:
        for n in AXIS_LENGTHS:
            for mode in AXIS_MODES:
                mismatch = (INT8_MISMATCH[2] if mode == "static-int8"
                            and (model, n) == INT8_MISMATCH[:2] else None)
                recs.append(make_record(mode, 1, AXIS_PROMPT, new_tokens=n, model=model,
                                        status="oom" if (model, mode, n) == AXIS_OOM else "ok",
                                        mismatch_step=mismatch))
            recs += [make_record(mode, 1, AXIS_PROMPT, new_tokens=n, model=model,
                                 n_kv_head=GQA_HEADS) for mode in ("none", "static")]
    return recs


def by_coords(records: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {(r["cell"]["kv_mode"], r["cell"]["batch"], r["cell"]["prompt_len"]): r
            for r in records}


# ---------------------------------------------------------------------------------- fixtures

class Sweep:
    """One synthetic sweep laid out as the pipeline lays it out: results/<sweep>/{cells,...}."""

    def __init__(self, root: Path, records: list[dict[str, Any]]):
        self.dir = root / "results" / SWEEP
        self.records = records
        self.paths = write_records(self.dir, records)
        self.tables = self.dir / "tables"
        self.figures = self.dir / "figures"
        self.rendered: list[Path] = []  # what figures.render returned, when it ran

    def csv(self, name: str) -> pd.DataFrame:
        return pd.read_csv(self.tables / name)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("sweep"), grid_records())
    agg.aggregate(s.paths, s.tables)
    s.rendered = fig.render(s.tables, s.figures)
    return s


@pytest.fixture(scope="module")
def bundle_zip(sweep: Sweep, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tmp_path_factory.mktemp("cfg") / "config.yaml"
    cfg.write_text("sweeps:\n  tiny: {}\n")
    out = sweep.dir / "bundle.zip"
    bnd.build_bundle(sweep.dir, out, cfg, [])
    return out


def rewrite_zip(src: Path, dst: Path, change: dict[str, bytes | None],
                add: dict[str, bytes] | None = None) -> None:
    """Copy a zip, replacing (bytes) or dropping (None) members: a tampered bundle."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            if info.filename in change:
                if change[info.filename] is not None:
                    zout.writestr(info, change[info.filename])
            else:
                zout.writestr(info, zin.read(info))
        for name, data in (add or {}).items():
            zout.writestr(name, data)


# ---------------------------------------------------------------------------------- factory

def test_factory_records_match_the_schema() -> None:
    for rec in grid_records() + [make_record("static", 1, 8, status="error"),
                                 make_record("static", 1, 8, status="unsupported")]:
        VALIDATOR.validate(rec)
    broken = make_record("static", 1, 8)
    del broken["latency"]["decode_steps"]
    with pytest.raises(jsonschema.ValidationError):
        VALIDATOR.validate(broken)


# ---------------------------------------------------------------------------------- tables

def test_cells_csv_has_one_flat_row_per_record_including_oom(sweep: Sweep) -> None:
    cells = sweep.csv("cells.csv")
    assert len(cells) == len(MODES) * len(BATCHES) * len(PROMPTS)
    assert {"cell.kv_mode", "latency.decode_ms_per_token.median", "memory.kv_cache_bytes_formula",
            "environment.device_name", "record"} <= set(cells.columns)
    assert "latency.per_step_decode_ms" not in cells.columns
    assert "latency" not in cells.columns  # the null section of the oom row leaves no column
    # records named as the bundle stores them under cells/, whatever the working directory
    assert cells["record"].iloc[0] == "gpt2-tiny/fp32/none/b1-p8-n5-sdpa.json"
    # grid order: baseline first, then batch, then prompt length
    order = list(zip(cells["cell.kv_mode"], cells["cell.batch"], cells["cell.prompt_len"]))
    assert order == [(m, b, p) for m in MODES for b in BATCHES for p in PROMPTS]
    recs = by_coords(sweep.records)
    for _, row in cells.iterrows():
        rec = recs[(row["cell.kv_mode"], row["cell.batch"], row["cell.prompt_len"])]
        assert row["status"] == rec["status"]
        if rec["status"] == "ok":
            assert row["latency.decode_ms_per_token.median"] == \
                rec["latency"]["decode_ms_per_token"]["median"]  # lossless
            assert row["latency.prefill_ms.max"] == rec["latency"]["prefill_ms"]["max"]
    oom = cells[cells["status"] == "oom"].iloc[0]
    assert (oom["cell.kv_mode"], oom["cell.batch"], oom["cell.prompt_len"]) == OOM_CELL
    assert pd.isna(oom["latency.decode_ms_per_token.median"])
    assert pd.isna(oom["latency.prefill_ms.median"])
    assert oom["memory.torch_peak_allocated_bytes"] == 79 * 2**30
    assert "out of memory" in oom["error"]


def test_cells_csv_keeps_integers_integral(sweep: Sweep) -> None:
    text = pd.read_csv(sweep.tables / "cells.csv", dtype=str, keep_default_na=False)
    assert set(text["model_info.n_layer"]) == {"2", ""}  # "" for the oom row, never "2.0"
    assert set(text["latency.decode_steps"]) == {str(NEW_TOKENS - 1), ""}
    assert "e+" not in "".join(text["memory.torch_peak_allocated_bytes"])


def test_per_step_has_a_row_per_decode_step_with_cache_bytes(sweep: Sweep) -> None:
    per_step = sweep.csv("per_step.csv")
    ok = [r for r in sweep.records if r["status"] == "ok"]
    assert len(per_step) == len(ok) * (NEW_TOKENS - 1)
    assert {"cell.kv_mode", "cell.batch", "cell.prompt_len", "step", "context_tokens",
            "decode_ms", "kv_cache_bytes", "kv_cache_mib"} <= set(per_step.columns)
    recs = by_coords(sweep.records)
    oom_rows = per_step[(per_step["cell.kv_mode"] == OOM_CELL[0])
                        & (per_step["cell.batch"] == OOM_CELL[1])
                        & (per_step["cell.prompt_len"] == OOM_CELL[2])]
    assert oom_rows.empty
    for _, row in per_step.iterrows():
        rec = recs[(row["cell.kv_mode"], row["cell.batch"], row["cell.prompt_len"])]
        p, step = rec["cell"]["prompt_len"], int(row["step"])
        assert row["context_tokens"] == p + step
        assert row["decode_ms"] == rec["latency"]["per_step_decode_ms"][step - 1]
        formula = rec["memory"]["kv_cache_bytes_formula"]
        if formula is None:  # the none mode keeps no cache
            assert pd.isna(row["kv_cache_bytes"])
            continue
        per_token = formula / (p + NEW_TOKENS - 1)
        assert row["kv_cache_bytes"] == per_token * (p + step)
        assert row["kv_cache_mib"] == row["kv_cache_bytes"] / 2**20
    last = per_step[(per_step["cell.kv_mode"] == "static") & (per_step["step"] == NEW_TOKENS - 1)]
    for _, row in last.iterrows():  # the last step holds exactly what the formula counts
        rec = recs[("static", row["cell.batch"], row["cell.prompt_len"])]
        assert row["kv_cache_bytes"] == rec["memory"]["kv_cache_bytes_formula"]


def test_speedup_is_exactly_none_over_mode(sweep: Sweep) -> None:
    speedup = sweep.csv("speedup.csv")
    assert len(speedup) == (len(MODES) - 1) * len(BATCHES) * len(PROMPTS)
    assert set(speedup["cell.kv_mode"]) == {"concat", "static"}
    recs = by_coords(sweep.records)
    checked = 0
    for _, row in speedup.iterrows():
        key = (row["cell.kv_mode"], row["cell.batch"], row["cell.prompt_len"])
        mode, none = recs[key], recs[("none", key[1], key[2])]
        if key == OOM_CELL:
            assert row["status"] == "oom" and row["none_status"] == "ok"
            assert pd.isna(row["decode_speedup"]) and pd.isna(row["prefill_speedup"])
            assert row["none_decode_ms"] == none["latency"]["decode_ms_per_token"]["median"]
            continue
        for metric, field in (("prefill", "prefill_ms"), ("decode", "decode_ms_per_token"),
                              ("total", "total_generate_ms")):
            expected = none["latency"][field]["median"] / mode["latency"][field]["median"]
            assert row[f"{metric}_speedup"] == expected, (key, metric)  # exact, not approx
            assert row[f"{metric}_ms"] == mode["latency"][field]["median"]
        checked += 1
    assert checked == len(speedup) - 1
    # the cache must win on decode in this synthetic sweep, and not on prefill
    assert (speedup["decode_speedup"].dropna() > 1).all()
    assert (speedup["prefill_speedup"].dropna() < 1).all()


def test_speedup_row_kept_when_the_baseline_failed(tmp_path: Path) -> None:
    recs = [make_record("none", 1, 8, status="oom"), make_record("static", 1, 8),
            make_record("static", 2, 8)]  # the last has no none partner at all
    s = Sweep(tmp_path, recs)
    agg.aggregate(s.paths, s.tables)
    speedup = s.csv("speedup.csv")
    assert len(speedup) == 1
    row = speedup.iloc[0]
    assert (row["status"], row["none_status"]) == ("ok", "oom")
    assert pd.isna(row["decode_speedup"]) and pd.isna(row["none_decode_ms"])
    assert row["decode_ms"] == recs[1]["latency"]["decode_ms_per_token"]["median"]


def test_sweep_tables_per_mode(sweep: Sweep) -> None:
    for mode in MODES:
        table = sweep.csv(f"sweep_kv_{mode}.csv")
        assert list(table.columns[:7]) == ["model", "dtype", "attention", "new_tokens", "batch",
                                            "prompt_len", "status"]
        assert {"prefill_ms", "decode_ms_per_token", "decode_tokens_per_s", "peak_memory_mib",
                "peak_memory_source"} <= set(table.columns)
        assert len(table) == len(BATCHES) * len(PROMPTS)
        recs = by_coords(sweep.records)
        for _, row in table.iterrows():
            rec = recs[(mode, row["batch"], row["prompt_len"])]
            assert row["status"] == rec["status"]
            if rec["status"] != "ok":
                assert pd.isna(row["decode_ms_per_token"])
                continue
            assert row["decode_ms_per_token"] == pytest.approx(
                rec["latency"]["decode_ms_per_token"]["median"], rel=1e-5)
            assert row["decode_tokens_per_s"] == pytest.approx(
                rec["latency"]["decode_tokens_per_s"], rel=1e-5)
            assert row["peak_memory_mib"] == pytest.approx(
                rec["memory"]["torch_peak_allocated_bytes"] / 2**20, rel=1e-5)
            assert row["peak_memory_source"] == "torch_peak_allocated"


def test_peak_memory_falls_back_to_rss_on_cpu(tmp_path: Path) -> None:
    rec = make_record("static", 1, 8)
    rec["memory"]["torch_peak_allocated_bytes"] = None  # a CPU run: torch tracks nothing
    s = Sweep(tmp_path, [rec])
    agg.aggregate(s.paths, s.tables)
    row = s.csv("sweep_kv_static.csv").iloc[0]
    assert row["peak_memory_source"] == "rss_peak"
    assert row["peak_memory_mib"] == pytest.approx(300_000_000 / 2**20, rel=1e-5)


def test_summary_names_counts_best_speedup_and_oom(sweep: Sweep) -> None:
    text = (sweep.tables / "summary.md").read_text()
    assert text.startswith(f"# kvbench summary: {SWEEP}\n")
    assert "records: 12 (ok 11, oom 1)" in text
    speedup = sweep.csv("speedup.csv")
    best = speedup.loc[speedup["decode_speedup"].idxmax()]
    headline = f"Best decode speedup: **{best['decode_speedup']:.2f}×** ({best['cell.kv_mode']}"
    assert headline + " vs none at batch=" in text
    oom_section = text.split("## Cells not measured")[1]
    assert f"| oom | {OOM_CELL[0]} | batch={OOM_CELL[1]}, prompt_len={OOM_CELL[2]} |" in oom_section


def test_aggregate_is_byte_identical_whatever_the_input_order_or_place(
        sweep: Sweep, tmp_path: Path) -> None:
    moved = tmp_path / "elsewhere" / "results" / SWEEP / "cells"
    shutil.copytree(sweep.dir / "cells", moved)
    out = tmp_path / "tables"
    assert agg.main(["--records", str(moved), "--out", str(out)]) == 0  # a directory, via CLI
    names = sorted(p.name for p in sweep.tables.iterdir())
    assert names == sorted(p.name for p in out.iterdir())
    for name in names:
        assert (out / name).read_bytes() == (sweep.tables / name).read_bytes(), name
    out2 = tmp_path / "tables2"
    agg.aggregate(list(reversed(sweep.paths)), out2)
    for name in names:
        assert (out2 / name).read_bytes() == (sweep.tables / name).read_bytes(), name


def test_aggregate_rejects_two_records_of_one_cell(tmp_path: Path) -> None:
    paths = write_records(tmp_path, [make_record("static", 1, 8)])
    twin = paths[0].with_name("copy.json")
    shutil.copy(paths[0], twin)
    with pytest.raises(ValueError, match="two records for one cell"):
        agg.aggregate(paths + [twin], tmp_path / "tables")
    assert agg.main(["--records", str(tmp_path / "missing"), "--out", str(tmp_path / "t")]) == 1


# ---------------------------------------------------------------------------------- figures

ALL_STEMS = {"decode_ms_per_token", "peak_memory", "prefill_decode_split", "speedup_heatmap",
             "per_token_latency", "floor_fraction"}


def png_text_keys(data: bytes) -> set[str]:
    """Keys of a PNG's tEXt/iTXt/zTXt chunks (where a 'Software' or date would hide)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    keys, pos = set(), 8
    while pos < len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            keys.add(data[pos + 8:pos + 8 + length].split(b"\0")[0].decode())
        pos += 12 + length
    return keys


def test_figures_written_as_png_and_svg(sweep: Sweep) -> None:
    expected = {sweep.figures / f"{s}.{ext}" for s in ALL_STEMS for ext in ("png", "svg")}
    assert set(sweep.rendered) == expected
    for path in expected:
        data = path.read_bytes()
        assert len(data) > 5000, path
        if path.suffix == ".png":
            assert "Software" not in png_text_keys(data)
        else:
            assert b"<dc:date>" not in data and b"Matplotlib v" not in data


def test_figures_are_byte_identical_across_renders(sweep: Sweep, tmp_path: Path) -> None:
    again = fig.render(sweep.tables, tmp_path / "again")
    assert [p.name for p in again] == [p.name for p in sweep.rendered]
    for p in sweep.rendered:
        assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes(), p.name


def red_marks(ax: Any) -> list[tuple[float, float]]:
    """Offsets of the red (#d62728, oom) markers drawn on a panel."""
    found = []
    for coll in ax.collections:
        colors = coll.get_facecolor()
        if len(colors) and matplotlib.colors.to_hex(colors[0]) == "#d62728":
            found += [tuple(o) for o in coll.get_offsets()]
    return found


def test_oom_cell_is_marked_at_the_top_edge_not_dropped(sweep: Sweep) -> None:
    with matplotlib.rc_context(fig.RC):
        figure = fig.decode_figure(sweep.csv("cells.csv"))
    panels = {ax.get_title(): ax for ax in figure.axes}
    # x = the prompt length in data units, y = 0.95 of the panel's height (its top edge)
    assert red_marks(panels["kv_mode = concat"]) == [(OOM_CELL[2], pytest.approx(0.95))]
    assert red_marks(panels["kv_mode = static"]) == []
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:len(BATCHES)] == [f"batch {b}" for b in BATCHES]
    assert "out of memory (not measured)" in labels


def test_figures_skip_what_has_no_data_and_stay_deterministic(tmp_path: Path) -> None:
    s = Sweep(tmp_path / "a", grid_records(modes=("concat", "static")))  # no none: no speedup
    agg.aggregate(s.paths, s.tables)
    s.figures.mkdir(parents=True)
    (s.figures / "speedup_heatmap.png").write_bytes(b"stale from an older sweep")
    first = fig.render(s.tables, s.figures)
    assert {p.stem for p in first} == ALL_STEMS - {"speedup_heatmap"}
    assert not (s.figures / "speedup_heatmap.png").exists()
    # a second render in a fresh interpreter with another hash seed: same bytes
    out = tmp_path / "b"
    env = {"PYTHONHASHSEED": "12345", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "kvbench.analysis.figures", "--tables",
                           str(s.tables), "--out", str(out)], cwd=REPO, env=env,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    for p in first:
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name


# ---------------------------------------------------------------------------------- bundle

def test_bundle_is_deterministic_complete_and_verifies(sweep: Sweep, bundle_zip: Path,
                                                       tmp_path: Path) -> None:
    assert bnd.verify_bundle(bundle_zip) == []
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sweeps:\n  tiny: {}\n")
    again = tmp_path / "again.zip"
    bnd.build_bundle(sweep.dir, again, cfg, [])
    assert again.read_bytes() == bundle_zip.read_bytes()
    with zipfile.ZipFile(bundle_zip) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        assert all(i.external_attr >> 16 == 0o100644 for i in infos)
        assert {"MANIFEST.sha256", "index.md", "environment.json", "bundle.json",
                "config/config.yaml", "tables/cells.csv", "tables/speedup.csv",
                "figures/decode_ms_per_token.png"} <= set(names)
        assert len([n for n in names if n.startswith("cells/")]) == len(sweep.records)
        manifest = zf.read("MANIFEST.sha256").decode().splitlines()
        assert [line.split("  ", 1)[1] for line in manifest] == \
            [n for n in names if n != "MANIFEST.sha256"]
        for line in manifest:
            digest, name = line.split("  ", 1)
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
        env = json.loads(zf.read("environment.json"))
        assert env["records"] == len(sweep.records)
        assert env["values"]["device_name"] == [{"value": DEVICE_NAME, "records": 12}]
        meta = json.loads(zf.read("bundle.json"))
        assert meta == {"sweep": SWEEP, "records": 12, "status_counts": {"ok": 11, "oom": 1}}
        index = zf.read("index.md").decode()
        assert "![decode_ms_per_token](figures/decode_ms_per_token.png)" in index
        assert "[tables/speedup.csv](tables/speedup.csv)" in index


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_bundle_manifest_passes_sha256sum(bundle_zip: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(bundle_zip) as zf:
        zf.extractall(tmp_path)
    proc = subprocess.run(["sha256sum", "--strict", "-c", "MANIFEST.sha256"], cwd=tmp_path,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "tables" / "cells.csv").write_text("changed\n")
    assert subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=tmp_path,
                          capture_output=True).returncode != 0


def test_tampered_bundle_fails_verification(bundle_zip: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed.zip"
    rewrite_zip(bundle_zip, changed, {"tables/speedup.csv": b"kv_mode,decode_speedup\nstatic,99\n"})
    assert bnd.verify_bundle(changed) == ["tables/speedup.csv: sha256 differs from the manifest"]
    dropped = tmp_path / "dropped.zip"
    rewrite_zip(bundle_zip, dropped, {"figures/peak_memory.png": None})
    assert bnd.verify_bundle(dropped) == [
        "figures/peak_memory.png: in the manifest but not in the archive"]
    added = tmp_path / "added.zip"
    rewrite_zip(bundle_zip, added, {}, add={"tables/extra.csv": b"a\n1\n"})
    assert bnd.verify_bundle(added) == ["tables/extra.csv: in the archive but not in the manifest"]
    no_manifest = tmp_path / "no_manifest.zip"
    rewrite_zip(bundle_zip, no_manifest, {"MANIFEST.sha256": None})
    assert bnd.verify_bundle(no_manifest) == ["MANIFEST.sha256: missing"]
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"plain text")
    assert len(bnd.verify_bundle(not_zip)) == 1
    assert bnd.main(["--verify", str(changed)]) == 1
    assert bnd.main(["--verify", str(bundle_zip)]) == 0


# ---------------------------------------------------------------------------------- publish

def test_publish_copies_unpacks_is_idempotent_and_refuses_a_different_bundle(
        sweep: Sweep, bundle_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = tmp_path / "published"
    dest = pub.publish(bundle_zip, root)
    assert dest == root / "nvidia-test-gpu-80gb" / SWEEP
    assert (dest / "bundle.zip").read_bytes() == bundle_zip.read_bytes()
    assert (dest / "figures" / "decode_ms_per_token.png").is_file()
    assert (dest / "tables" / "speedup.csv").read_bytes() == \
        (sweep.tables / "speedup.csv").read_bytes()
    assert (dest / "index.md").is_file() and not (dest / "cells").exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp left
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}

    assert pub.publish(bundle_zip, root) == dest  # the same bundle again: a no-op
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before

    other = tmp_path / "other.zip"
    note = tmp_path / "note.txt"
    note.write_text("a different bundle\n")
    bnd.build_bundle(sweep.dir, other, None, [note])
    assert bnd.verify_bundle(other) == []
    with pytest.raises(pub.PublishError, match="refusing to overwrite"):
        pub.publish(other, root)
    assert (dest / "bundle.zip").read_bytes() == bundle_zip.read_bytes()
    capsys.readouterr()
    assert pub.main([str(other), "--dest", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("publish: error: refusing to overwrite") and err.count("\n") == 1
    assert pub.main([str(other), "--dest", str(root), "--device", "Other Box"]) == 0
    assert (root / "other-box" / SWEEP / "bundle.zip").read_bytes() == other.read_bytes()


def test_publish_names_cpu_runs_by_cpu_and_refuses_broken_bundles(tmp_path: Path) -> None:
    s = Sweep(tmp_path / "cpu", [make_record("static", 1, 8, device_name=None)])
    agg.aggregate(s.paths, s.tables)
    zpath = s.dir / "bundle.zip"
    bnd.build_bundle(s.dir, zpath, None, [])
    assert pub.publish(zpath, tmp_path / "pub") == tmp_path / "pub" / "test-cpu" / SWEEP
    broken = tmp_path / "broken.zip"
    rewrite_zip(zpath, broken, {"tables/cells.csv": b"x\n"})
    with pytest.raises(pub.PublishError, match="does not verify"):
        pub.publish(broken, tmp_path / "pub2")
    assert not (tmp_path / "pub2").exists()


# ------------------------------------------------------- speedup by model / length, kv variants

NEW_STEMS = ("speedup_vs_model", "speedup_vs_new_tokens", "kv_variants")
AXIS_TABLES = ("speedup_by_model.csv", "speedup_by_length.csv", "kv_variants.csv")


@pytest.fixture(scope="module")
def axis_sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("axes"), axis_records())
    agg.aggregate(s.paths, s.tables)
    s.rendered = fig.render(s.tables, s.figures, only=NEW_STEMS)
    return s


def axis_key(cell: dict[str, Any]) -> tuple:
    return (cell["model"], cell["kv_mode"], cell["new_tokens"], cell["n_kv_head"])


def axis_lookup(records: list[dict[str, Any]]) -> dict[tuple, dict[str, Any]]:
    return {axis_key(r["cell"]): r for r in records}


def kv_setting(value: Any) -> int | None:
    return None if pd.isna(value) else int(value)


def test_axis_tables_absent_when_their_axis_does_not_vary(sweep: Sweep) -> None:
    # the base sweep: one model, one length, no int8 cache, no n_kv_head
    for name in AXIS_TABLES:
        assert not (sweep.tables / name).exists(), name


def test_speedup_by_model_is_exact_and_ordered_by_parameters(axis_sweep: Sweep) -> None:
    table = axis_sweep.csv("speedup_by_model.csv")
    assert tuple(table.columns) == agg.AXIS_SPEEDUP_COLUMNS
    recs = axis_lookup(axis_sweep.records)
    # every cached cell of the sweep has its none partner: 2 models x 2 lengths x (3 modes + GQA)
    assert len(table) == len(AXIS_MODELS) * len(AXIS_LENGTHS) * 4
    # write-up 003's order: for each setting, the models by size, each model's modes together
    order = [(kv_setting(r["n_kv_head"]), r["new_tokens"], r["model"], r["kv_mode"])
             for _, r in table.iterrows()]
    expected = [(kv, n, m, mode) for kv, modes in ((None, AXIS_MODES[1:]), (GQA_HEADS, ("static",)))
                for n in AXIS_LENGTHS for m in AXIS_MODELS for mode in modes]
    assert order == expected
    for _, row in table.iterrows():
        key = (row["model"], row["kv_mode"], row["new_tokens"], kv_setting(row["n_kv_head"]))
        rec, none = recs[key], recs[(key[0], "none", key[2], key[3])]
        n_params = MODELS[row["model"]][3] - (0 if key[3] is None else 1000 * key[3])
        assert (row["n_params"], row["n_layer"]) == (n_params, MODELS[row["model"]][0])
        if (row["model"], row["kv_mode"], row["new_tokens"]) == AXIS_OOM:
            assert (row["status"], row["none_status"]) == ("oom", "ok")
            assert pd.isna(row["total_speedup"]) and pd.isna(row["decode_speedup"])
            continue
        total, none_total = (r["latency"]["total_generate_ms"]["median"] for r in (rec, none))
        decode, none_decode = (r["latency"]["decode_ms_per_token"]["median"] for r in (rec, none))
        assert row["total_speedup"] == none_total / total  # exact: from the ms values
        assert row["total_s"] == total / 1000.0 and row["none_total_s"] == none_total / 1000.0
        assert row["decode_speedup"] == none_decode / decode
        assert row["decode_ms_per_token"] == decode
    # the synthetic cost model makes the cache pay off more on the bigger model
    plain = table[table["n_kv_head"].isna() & table["total_speedup"].notna()]
    for (mode, n), g in plain.groupby(["kv_mode", "new_tokens"]):
        if len(g) == 2:
            assert list(g["model"]) == list(AXIS_MODELS)
            assert g["total_speedup"].is_monotonic_increasing, (mode, n)


def test_speedup_by_length_has_the_same_pairs_ordered_by_length(axis_sweep: Sweep) -> None:
    by_length = axis_sweep.csv("speedup_by_length.csv")
    by_model = axis_sweep.csv("speedup_by_model.csv")
    assert tuple(by_length.columns) == agg.AXIS_SPEEDUP_COLUMNS
    assert sorted(by_length["record"]) == sorted(by_model["record"])
    merged = by_length.merge(by_model, on="record", suffixes=("", "_m"))
    for col in ("total_speedup", "decode_speedup", "total_s"):
        same = merged[col].isna() & merged[f"{col}_m"].isna() | (merged[col] == merged[f"{col}_m"])
        assert same.all(), col
    # lines over new_tokens: model (by size), n_kv_head setting, mode; length ascending inside
    keys = [(r["model"], kv_setting(r["n_kv_head"]) or 0, r["kv_mode"])
            for _, r in by_length.iterrows()]
    assert [k[0] for k in keys] == sorted((k[0] for k in keys), key=list(AXIS_MODELS).index)
    for _, g in by_length.groupby(["model", "kv_mode", by_length["n_kv_head"].fillna(0)]):
        assert list(g["new_tokens"]) == list(AXIS_LENGTHS)
        ok = g["decode_speedup"].dropna()
        assert ok.is_monotonic_increasing  # longer generations: larger per-token speedup here
    row = by_length[(by_length["model"] == "gpt2") & (by_length["kv_mode"] == "static")
                    & by_length["n_kv_head"].isna() & (by_length["new_tokens"] == 50)].iloc[0]
    recs = axis_lookup(axis_sweep.records)
    rec, none = recs[("gpt2", "static", 50, None)], recs[("gpt2", "none", 50, None)]
    assert row["decode_speedup"] == (none["latency"]["decode_ms_per_token"]["median"]
                                     / rec["latency"]["decode_ms_per_token"]["median"])


def test_kv_variants_table_bytes_speed_and_logit_error(axis_sweep: Sweep) -> None:
    table = axis_sweep.csv("kv_variants.csv")
    assert tuple(table.columns) == agg.KV_VARIANT_COLUMNS
    assert len(table) == len(axis_sweep.records)  # one row per cell, none and oom included
    recs = axis_lookup(axis_sweep.records)
    tokens = {n: AXIS_PROMPT + n - 1 for n in AXIS_LENGTHS}
    for _, row in table.iterrows():
        kv_set = None if row["n_kv_head"] == MODELS[row["model"]][1] else int(row["n_kv_head"])
        rec = recs[(row["model"], row["kv_mode"], row["new_tokens"], kv_set)]
        assert row["n_head"] == MODELS[row["model"]][1]  # filled from a sibling for the oom cell
        if row["status"] != "ok":
            assert (row["model"], row["kv_mode"], row["new_tokens"]) == AXIS_OOM
            assert pd.isna(row["decode_ms_per_token"]) and pd.isna(row["kv_cache_bytes_measured"])
            continue
        if row["kv_mode"] == "none":
            assert pd.isna(row["kv_cache_bytes_formula"]) and pd.isna(row["decode_speedup"])
            continue
        expected = kv_bytes_for(row["model"], row["kv_mode"], 1, tokens[row["new_tokens"]],
                                n_kv_head=kv_set)
        assert row["kv_cache_bytes_formula"] == expected == row["kv_cache_bytes_measured"]
        assert row["kv_cache_mib"] == expected / 2**20
        none = recs[(row["model"], "none", row["new_tokens"], kv_set)]
        assert row["decode_speedup"] == (none["latency"]["decode_ms_per_token"]["median"]
                                         / rec["latency"]["decode_ms_per_token"]["median"])
        assert row["decode_tokens_per_s"] == rec["latency"]["decode_tokens_per_s"]
    plain = table[(table["kv_mode"] == "static") & (table["n_kv_head"] == table["n_head"])]
    for _, base in plain.iterrows():
        at = ((table["model"] == base["model"]) & (table["new_tokens"] == base["new_tokens"]))
        int8 = table[at & (table["kv_mode"] == "static-int8")].iloc[0]
        gqa = table[at & (table["kv_mode"] == "static") & (table["n_kv_head"] == GQA_HEADS)].iloc[0]
        # int8: (64 + 4) bytes per head vector instead of 64 x 4; GQA: 4 of n_head heads
        assert int8["kv_cache_bytes_measured"] * 64 * 4 == base["kv_cache_bytes_measured"] * 68
        assert gqa["kv_cache_bytes_measured"] * base["n_head"] == \
            base["kv_cache_bytes_measured"] * GQA_HEADS
        assert int8["max_logit_diff"] == INT8_LOGIT_DIFF * MODELS[base["model"]][4]
        assert base["max_logit_diff"] == 0.0
    bad = table[table["matches_reference"].astype(str) == "False"]
    assert [(r["model"], r["new_tokens"], r["first_mismatch_step"]) for _, r in bad.iterrows()] \
        == [INT8_MISMATCH]
    assert list(bad["kv_mode"]) == ["static-int8"]


def test_axis_tables_follow_the_sweep_and_stale_copies_go(axis_sweep: Sweep,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "tables"
    shutil.copytree(axis_sweep.tables, out)
    # one model, two lengths, no variant: only the length table stays
    recs = [r for r in axis_sweep.records if r["cell"]["model"] == "gpt2"
            and r["cell"]["kv_mode"] in ("none", "static") and r["cell"]["n_kv_head"] is None]
    s = Sweep(tmp_path / "one-model", recs)
    agg.aggregate(s.paths, out)
    assert (out / "speedup_by_length.csv").is_file()
    assert not (out / "speedup_by_model.csv").exists()
    assert not (out / "kv_variants.csv").exists()
    assert len(pd.read_csv(out / "speedup_by_length.csv")) == len(AXIS_LENGTHS)
    # figures follow their tables: the stale model and variants figures are removed
    figs = tmp_path / "figures"
    shutil.copytree(axis_sweep.figures, figs)
    written = fig.render(out, figs, only=NEW_STEMS)
    assert {p.name for p in written} == {"speedup_vs_new_tokens.png", "speedup_vs_new_tokens.svg"}
    assert sorted(p.name for p in figs.iterdir()) == ["speedup_vs_new_tokens.png",
                                                      "speedup_vs_new_tokens.svg"]


def test_new_figures_are_drawn_deterministic_and_rerender_byte_identical(
        axis_sweep: Sweep, tmp_path: Path) -> None:
    expected = {axis_sweep.figures / f"{s}.{ext}" for s in NEW_STEMS for ext in ("png", "svg")}
    assert set(axis_sweep.rendered) == expected
    for path in expected:
        data = path.read_bytes()
        assert len(data) > 5000, path
        if path.suffix == ".png":
            assert "Software" not in png_text_keys(data)
        else:
            assert b"<dc:date>" not in data and b"Matplotlib v" not in data
    out = tmp_path / "again"
    env = {"PYTHONHASHSEED": "4242", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "kvbench.analysis.figures", "--tables",
                           str(axis_sweep.tables), "--out", str(out), "--only", *NEW_STEMS],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted(p.name for p in expected)
    for p in expected:
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    with pytest.raises(ValueError, match="unknown figure"):
        fig.render(axis_sweep.tables, out, only=["no_such_figure"])


def test_speedup_vs_model_orders_models_by_size_and_marks_the_oom(axis_sweep: Sweep) -> None:
    table = axis_sweep.csv("speedup_by_model.csv").iloc[::-1]  # medium first: order must not care
    with matplotlib.rc_context(fig.RC):
        figure = fig.speedup_vs_model_figure(table)
    ticks = [t.get_text() for t in figure.axes[0].get_xticklabels()]
    assert ticks == ["gpt2\n124M params\n12 layers", "gpt2-medium\n355M params\n24 layers"]
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "whole generation (total time)\nn_kv_head=all, new_tokens=20"
    oom_panel = titles.index("whole generation (total time)\nn_kv_head=all, new_tokens=50")
    assert red_marks(figure.axes[oom_panel]) == [(1.0, pytest.approx(0.95))]  # gpt2-medium
    assert sum(len(red_marks(ax)) for ax in figure.axes) == 2  # total and per-token panels
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:3] == ["concat vs none", "static vs none", "static-int8 vs none"]
    assert "write-up 003: T4 GPU, whole generation (claimed)" in labels
    with matplotlib.rc_context(fig.RC):
        assert fig.speedup_vs_model_figure(table[table["model"] == "gpt2"]) is None
        assert fig.speedup_vs_new_tokens_figure(None) is None
        assert fig.kv_variants_figure(None) is None
