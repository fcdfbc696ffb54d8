"""Tests of kvbench.analysis (tables, figures, bundle, publish) on synthetic schema-valid records.

CPU-only and torch-free: the records are made here by a small factory and validated against
workflow/schemas/record.schema.json, so a schema change that the analysis does not follow
fails here first.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import shutil
import subprocess
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
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
COST = {"none": (1.0 / 3.0, 0.05), "concat": (0.7, 0.004 / 3.0), "static": (0.6, 0.001)}


# ---------------------------------------------------------------------------------- factory

def make_record(kv_mode: str, batch: int, prompt_len: int, *, status: str = "ok",
                new_tokens: int = NEW_TOKENS, dtype: str = "fp32", model: str = "gpt2-tiny",
                device_name: str | None = DEVICE_NAME) -> dict[str, Any]:
    """One record exactly as record.schema.json describes it (non-ok: null sections)."""
    cell = {"model": model, "kv_mode": kv_mode, "batch": batch, "prompt_len": prompt_len,
            "new_tokens": new_tokens, "dtype": dtype, "attention": "sdpa", "device": "cuda:0",
            "prompt_source": "random", "seed": 1337, "warmup": 1, "iters": 3,
            "engine": "kvbench", "n_kv_head": None, "compile": False, "checkpoint": None,
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
    bytes_per_token = 2 * N_LAYER * N_EMBD * 4 * batch  # K and V, fp32, whole batch
    kv_bytes = bytes_per_token * (prompt_len + new_tokens - 1)
    if status == "oom":
        rec["error"] = "CUDA out of memory. Tried to allocate 2.00 MiB"
        rec["memory"] = {"torch_peak_allocated_bytes": 79 * 2**30,
                         "torch_peak_reserved_bytes": 80 * 2**30, "nvml_peak_used_bytes": None,
                         "rss_peak_bytes": None, "weights_bytes": 1_000_000,
                         "kv_cache_bytes_formula": kv_bytes, "kv_cache_bytes_measured": None}
        return rec
    if status != "ok":
        rec["error"] = f"{status}: synthetic"
        return rec
    fixed, per_ctx = COST[kv_mode]
    steps = [fixed + per_ctx * batch * (prompt_len + s) for s in range(1, new_tokens)]
    decode = sum(steps) / len(steps)
    prefill = 0.25 + 0.01 * batch * prompt_len + (0.01 if kv_mode != "none" else 0.0)
    total = prefill + sum(steps)
    stats = lambda m: {"median": m, "min": m * 0.95, "max": m * 1.1}  # noqa: E731
    rec["model_info"] = {"n_layer": N_LAYER, "n_head": N_HEAD, "n_kv_head": N_HEAD,
                         "n_embd": N_EMBD, "block_size": 128, "vocab_size": 512,
                         "n_params": 150_000}
    rec["latency"] = {"prefill_ms": stats(prefill), "decode_ms_per_token": stats(decode),
                      "per_step_decode_ms": steps,
                      "decode_tokens_per_s": batch * len(steps) / (sum(steps) / 1000.0),
                      "total_generate_ms": stats(total), "decode_steps": len(steps)}
    cached = kv_mode != "none"
    rec["memory"] = {"torch_peak_allocated_bytes": 2_000_000 + 5000 * batch * prompt_len,
                     "torch_peak_reserved_bytes": 4_194_304, "nvml_peak_used_bytes": 500_000_000,
                     "rss_peak_bytes": 300_000_000, "weights_bytes": 600_000,
                     "kv_cache_bytes_formula": kv_bytes if cached else None,
                     "kv_cache_bytes_measured": kv_bytes if cached else None}
    rec["energy"] = {"decode_joules_per_token": 0.01 * batch, "method": "nvml_energy_counter"}
    floor = 0.2
    rec["analytic"] = {"decode_flops_per_token": 3.0e5 * batch,
                       "decode_bytes_per_token": 6.0e5 + kv_bytes, "floor_ms_per_token": floor,
                       "fraction_of_floor": floor / decode, "bandwidth_bytes_per_s": 3.0e12,
                       "bandwidth_source": "table", "suspect": False}
    rec["check"] = {"tokens_sha256": "ab" * 32, "matches_reference": True if cached else None}
    return rec


def cell_path(root: Path, rec: dict[str, Any]) -> Path:
    c = rec["cell"]
    return (root / "cells" / c["model"] / c["dtype"] / c["kv_mode"]
            / f"b{c['batch']}-p{c['prompt_len']}-n{c['new_tokens']}-{c['attention']}.json")


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
