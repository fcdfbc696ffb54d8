"""The record factory every analysis test uses: synthetic records exactly as record.schema.json
describes them (a stand-in for measured cells: the analysis never needs torch), laid out as the
pipeline lays them out."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import jsonschema
import pandas as pd

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
COST = {"none": (1.0 / 3.0, 0.05), "concat": (0.7, 0.004 / 3.0), "static": (0.6, 0.001), "static-int8": (0.55, 0.0007)}
# Model shapes: (n_layer, n_head, n_embd, n_params, cost scale of the per-context term).
MODELS = {
    "gpt2-tiny": (N_LAYER, N_HEAD, N_EMBD, 150_000, 1.0),
    "gpt2": (12, 12, 768, 124_439_808, 3.0),
    "gpt2-medium": (24, 16, 1024, 354_823_168, 7.0),
}
DTYPE_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
INT8_LOGIT_DIFF = 0.0123  # the synthetic int8 cache's logit error

# ---------------------------------------------------------------------------------- factory


def kv_bytes_for(
    model: str, kv_mode: str, batch: int, tokens: int, dtype: str = "fp32", n_kv_head: int | None = None
) -> int:
    """The KV-cache formula, written out independently of kvbench: 2 x layers x batch x kv heads
    x tokens x head_dim x bytes (int8: 1 byte per element + a 4-byte scale per token and head)."""
    n_layer, n_head, n_embd, _, _ = MODELS[model]
    head_dim, kv = n_embd // n_head, n_kv_head or n_head
    per_vector = head_dim + 4 if kv_mode == "static-int8" else head_dim * DTYPE_BYTES[dtype]
    return 2 * n_layer * batch * kv * tokens * per_vector


def make_record(
    kv_mode: str,
    batch: int,
    prompt_len: int,
    *,
    status: str = "ok",
    new_tokens: int = NEW_TOKENS,
    dtype: str = "fp32",
    model: str = "gpt2-tiny",
    device_name: str | None = DEVICE_NAME,
    n_kv_head: int | None = None,
    mismatch_step: int | None = None,
    engine: str = "kvbench",
    family: str | None = None,
) -> dict[str, Any]:
    """One record exactly as record.schema.json describes it (non-ok: null sections)."""
    n_layer, n_head, n_embd, n_params, scale = MODELS[model]
    cell = {
        "model": model,
        "kv_mode": kv_mode,
        "batch": batch,
        "prompt_len": prompt_len,
        "new_tokens": new_tokens,
        "dtype": dtype,
        "attention": "sdpa",
        "device": "cuda:0",
        "prompt_source": "random",
        "seed": 1337,
        "warmup": 1,
        "iters": 3,
        "engine": engine,
        "n_kv_head": n_kv_head,
        "compile": False,
        "checkpoint": None,
        "check_steps": 4,
    }
    env = {
        "kvbench_version": "0.1.0",
        "git_commit": "0" * 40,
        "python": "3.11.9",
        "torch": "2.13.0",
        "cuda": "12.8",
        "driver": "570.1",
        "device_name": device_name,
        "cpu": "Test CPU",
        "host": "node1",
        "clocks_before": {"sm_mhz": 1980},
        "clocks_after": {"sm_mhz": 1980},
        "throttle_reasons": [],
        "slurm_job_id": None,
        "container_image": None,
    }
    rec: dict[str, Any] = {
        "schema_version": 1,
        "status": status,
        "error": None,
        "created_utc": "2025-01-01T00:00:00Z",
        "cell": cell,
        "model_info": None,
        "latency": None,
        "memory": None,
        "energy": None,
        "analytic": None,
        "check": None,
        "environment": env,
    }
    kv_bytes = kv_bytes_for(model, kv_mode, batch, prompt_len + new_tokens - 1, dtype, n_kv_head)
    weights = n_params * DTYPE_BYTES[dtype]
    if status == "oom":
        rec["error"] = "CUDA out of memory. Tried to allocate 2.00 MiB"
        rec["memory"] = {
            "torch_peak_allocated_bytes": 79 * 2**30,
            "torch_peak_reserved_bytes": 80 * 2**30,
            "nvml_peak_used_bytes": None,
            "rss_peak_bytes": None,
            "weights_bytes": weights,
            "kv_cache_bytes_formula": kv_bytes,
            "kv_cache_bytes_measured": None,
        }
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
    rec["model_info"] = {
        "n_layer": n_layer,
        "n_head": n_head,
        "n_kv_head": n_kv_head or n_head,
        "n_embd": n_embd,
        "block_size": 128,
        "vocab_size": 512,
        "n_params": n_params - (0 if n_kv_head is None else 1000 * n_kv_head),
    }
    if family is not None:  # optional in the schema: records of either kind must read alike
        rec["model_info"]["family"] = family
    rec["latency"] = {
        "prefill_ms": stats(prefill),
        "decode_ms_per_token": stats(decode),
        "per_step_decode_ms": steps,
        "decode_tokens_per_s": batch * len(steps) / (sum(steps) / 1000.0),
        "total_generate_ms": stats(total),
        "decode_steps": len(steps),
    }
    cached = kv_mode != "none"
    activations = 40_000 * batch * (prompt_len + new_tokens) * (4 if kv_mode == "none" else 1)
    rec["memory"] = {
        "prefill_peak_allocated_bytes": weights + 30_000 * batch * prompt_len,
        "decode_peak_allocated_bytes": weights + activations + (kv_bytes if cached else 0),
        "peak_method": "cuda_allocator",
        "torch_peak_allocated_bytes": 2_000_000 + 5000 * batch * prompt_len,
        "torch_peak_reserved_bytes": 4_194_304,
        "nvml_peak_used_bytes": 500_000_000,
        "rss_peak_bytes": 300_000_000,
        "weights_bytes": weights,
        "kv_cache_bytes_formula": kv_bytes if cached else None,
        "kv_cache_bytes_measured": kv_bytes if cached else None,
    }
    rec["energy"] = {"decode_joules_per_token": 0.01 * batch, "method": "nvml_energy_counter"}
    floor = 0.2
    rec["analytic"] = {
        "decode_flops_per_token": 3.0e5 * batch,
        "decode_bytes_per_token": 6.0e5 + kv_bytes,
        "floor_ms_per_token": floor,
        "fraction_of_floor": floor / decode,
        "bandwidth_bytes_per_s": 3.0e12,  # the floor's bandwidth: the read bandwidth
        "bandwidth_source": "measured read",
        "read_bandwidth_bytes_per_s": 3.0e12,
        "copy_bandwidth_bytes_per_s": 2.0e12,
        "suspect": False,
    }
    rec["check"] = {"tokens_sha256": "ab" * 32, "matches_reference": True if cached else None}
    if kv_mode == "static-int8":  # a lossy cache: a logit error, the tokens may differ
        rec["check"].update(
            {
                "reference_steps": 4,
                "first_mismatch_step": mismatch_step,
                "max_logit_diff": INT8_LOGIT_DIFF * scale,
                "matches_reference": mismatch_step is None,
            }
        )
    elif cached:
        rec["check"].update({"reference_steps": 4, "first_mismatch_step": None, "max_logit_diff": 0.0})
    return rec


def cell_path(root: Path, rec: dict[str, Any]) -> Path:
    c = rec["cell"]
    kv = "" if c["n_kv_head"] is None else f"-kv{c['n_kv_head']}"
    kv += "" if c.get("threads") is None else f"-t{c['threads']}"
    engine = () if c["engine"] == "kvbench" else (c["engine"],)
    return (
        root.joinpath("cells", *engine)
        / c["model"]
        / c["dtype"]
        / c["kv_mode"]
        / f"b{c['batch']}-p{c['prompt_len']}-n{c['new_tokens']}-{c['attention']}{kv}.json"
    )


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
    return [
        make_record(m, b, p, status="oom" if (m, b, p) == OOM_CELL else "ok")
        for m in modes
        for b in BATCHES
        for p in PROMPTS
    ]


def peers_records() -> list[dict[str, Any]]:
    """vs-peers' shape: engine setups side by side along the batch at one prompt; hf's static cell at batch 4 oom."""
    recs = []
    for engine, mode, compiled in (("kvbench", "static", True), ("kvbench", "concat", False), ("hf", "static", True),
                                   ("llamacpp", "static", False), ("ct2", "concat", False)):  # fmt: skip
        for b in (1, 2, 4):
            rec = make_record(mode, b, 64, engine=engine, status="oom" if (engine, b) == ("hf", 4) else "ok")
            rec["cell"]["compile"] = compiled
            recs.append(rec)
    return recs


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
                mismatch = INT8_MISMATCH[2] if mode == "static-int8" and (model, n) == INT8_MISMATCH[:2] else None
                recs.append(
                    make_record(
                        mode,
                        1,
                        AXIS_PROMPT,
                        new_tokens=n,
                        model=model,
                        status="oom" if (model, mode, n) == AXIS_OOM else "ok",
                        mismatch_step=mismatch,
                    )
                )
            recs += [
                make_record(mode, 1, AXIS_PROMPT, new_tokens=n, model=model, n_kv_head=GQA_HEADS)
                for mode in ("none", "static")
            ]
    return recs


def by_coords(records: list[dict[str, Any]]) -> dict[tuple[str, int, int], dict[str, Any]]:
    return {(r["cell"]["kv_mode"], r["cell"]["batch"], r["cell"]["prompt_len"]): r for r in records}


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


# Three engines side by side (the vs-hf / vs-peers sweeps): kvbench, hf and ct2 (CTranslate2,
# whose records carry no phase peaks, peak_method null and the KV bytes by formula only).
ENGINES = ("kvbench", "hf", "ct2")


def engine_records() -> list[dict[str, Any]]:
    recs = []
    for engine in ENGINES:
        for model in AXIS_MODELS:
            for mode in ("none", "static"):
                rec = make_record(mode, 1, AXIS_PROMPT, new_tokens=AXIS_LENGTHS[0], model=model, engine=engine)
                if engine == "ct2":
                    rec["memory"].update(
                        prefill_peak_allocated_bytes=None, decode_peak_allocated_bytes=None, peak_method=None
                    )
                    rec["memory"].update(kv_cache_bytes_measured=None, torch_peak_allocated_bytes=None)
                recs.append(rec)
    return recs


# A threads sweep (threads-cpu): none and static at 1, 2 and 4 CPU threads, otherwise one cell.
THREADS = (1, 2, 4)


def threads_records() -> list[dict[str, Any]]:
    recs = []
    for threads in THREADS:
        for mode in ("none", "static"):
            rec = make_record(mode, 1, PROMPTS[0])
            rec["cell"]["threads"] = rec["environment"]["torch_threads"] = threads
            recs.append(rec)
    return recs


def rewrite_zip(src: Path, dst: Path, change: dict[str, bytes | None], add: dict[str, bytes] | None = None) -> None:
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


def broken_links(page: Path) -> list[str]:
    """The relative link and image targets of a markdown page that name no file or folder beside it."""
    import re

    targets = re.findall(r"\]\(([^)\s]+)\)", page.read_text())
    local = [t.split("#")[0] for t in targets if not re.match(r"^[a-z]+://|^#|^mailto:", t)]
    return [t for t in local if t and not (page.parent / t).exists()]
