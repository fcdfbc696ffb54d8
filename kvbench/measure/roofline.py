"""The lower bound on a cached decode step: bytes to move / bandwidth vs FLOPs / peak rate.

A batch-1 decode step reads every weight once and the whole KV cache, and does little
arithmetic per byte, so on every device here it is bandwidth-bound. The floor divides by the
*read* bandwidth measured on the device (a reduction over 1 GiB: what streaming the weights
can reach), not the copy bandwidth (read + write, which no decode step does); the copy rate,
the matmul rate and the vendor's figure for known GPUs are recorded beside it. The probe is
cached per host, device and software version, so a sweep measures it once per host.
"""

from __future__ import annotations

import json
import math
import platform
import re
import sys
import time
from pathlib import Path

import torch

from kvbench.core import env_vars
from kvbench.core.record import write_atomic_text
from kvbench.measure.devices import synchronize
from kvbench.models.family import Config

# Vendor datasheet peak memory bandwidth (bytes/s), by a substring of the device name. For context only.
GPU_SPEC_BANDWIDTH = {
    "H200": 4.8e12,
    "H100 NVL": 3.9e12,
    "H100 PCIe": 2.0e12,
    "H100": 3.35e12,
    "A100-SXM4-80GB": 2.039e12,
    "A100 80GB PCIe": 1.935e12,
    "A100": 1.555e12,
    "L40S": 864e9,
    "A10": 600e9,
    "L4": 300e9,
    "T4": 320e9,
    "V100": 900e9,
    "RTX 4090": 1008e9,
}


def spec_bandwidth(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, bw in GPU_SPEC_BANDWIDTH.items():  # most specific keys come first
        if key in device_name:
            return bw
    return None


def decode_step_cost(
    cfg: Config, batch: int, context: float, kv_bytes_per_token: int, step_read_bytes: int
) -> tuple[float, float]:
    """(FLOPs, bytes) of one cached decode step for the whole batch at `context` keys per query.

    `kv_bytes_per_token` is one sequence's K and V for one position over every layer
    (presets.kv_cache_bytes); `step_read_bytes` the weights a step reads (`step_read_bytes`).
    """
    attention_flops = cfg.n_layer * 4 * cfg.n_head * cfg.head_dim * context  # q.K^T and att.V: 2 flops per MAC
    flops = batch * (2 * cfg.matmul_params + attention_flops)  # matmul_params: the family's (presets.py)
    nbytes = step_read_bytes + batch * kv_bytes_per_token * (context + 1)  # read the cache, write one position
    return float(flops), float(nbytes)


def step_read_bytes(model: torch.nn.Module) -> int:
    """Bytes of weights a decode step reads: all of them except lookup tables (GPT-2's positions, an
    untied token embedding), of which a step reads one row; a table tied to the LM head is read whole.

    Not memory.weights_bytes, which counts every parameter the model holds.
    """
    matrices = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Linear)}
    lookups = {id(m.weight) for m in model.modules() if isinstance(m, torch.nn.Embedding)} - matrices
    return sum(p.numel() * p.element_size() for p in model.parameters() if id(p) not in lookups)


LIMIT_KEYS = ("read_bandwidth_bytes_per_s", "copy_bandwidth_bytes_per_s", "peak_flops_per_s")
# What any device kvbench runs on can show, with room either side: bytes/s from a slow laptop's RAM
# (~1e9) to a GPU's HBM (H200: 4.8e12); FLOP/s from one CPU core in fp32 (~1e9) to a GPU's dense
# matmul (H100 bf16: ~1e15). A cached rate outside is not a measurement: it would set every later
# cell's floor, so it is discarded and the device measured again.
PLAUSIBLE = {
    "read_bandwidth_bytes_per_s": (1e8, 1e14),
    "copy_bandwidth_bytes_per_s": (1e8, 1e14),
    "peak_flops_per_s": (1e8, 1e17),
}


def _cache_path(device: torch.device, device_name: str, dtype: torch.dtype) -> Path:
    """One file per host, device, dtype and software: a new torch or kvbench measures again."""
    from kvbench import __version__

    key = f"{platform.node()}-{device.type}-{device_name}-{dtype}-torch{torch.__version__}-kvbench{__version__}"
    return env_vars.cache_dir() / f"probe-{re.sub(r'[^A-Za-z0-9.]+', '-', key).strip('-')}.json"


def _best_seconds(fn, device: torch.device, reps: int) -> float:
    fn()  # warm-up
    synchronize(device)
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return best


def probe(device: torch.device, dtype: torch.dtype) -> dict:
    """Read bandwidth, copy bandwidth (read + write bytes / s) and matmul rate (FLOP/s) in `dtype`.

    The read is a reduction over 1 GiB, far larger than any cache level, so it streams from
    memory as a decode step streams its weights; the copy is kept beside it for reference.
    """
    n_bytes = 1 << 30
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    read = n_bytes / _best_seconds(src.sum, device, reps=5)
    half = src[: src.numel() // 2]  # copy 512 MiB into the other half: no second buffer needed
    rest = src[src.numel() // 2 :]
    copy = n_bytes / _best_seconds(lambda: rest.copy_(half), device, reps=3)
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3 / _best_seconds(lambda: a @ b, device, reps=5)
    return {
        "read_bandwidth_bytes_per_s": read,
        "copy_bandwidth_bytes_per_s": copy,
        "peak_flops_per_s": flops,
        "measured_at": time.time(),
    }


def _read_cache(path: Path) -> dict | None:
    """The cached limits, or None: missing, or damaged (then said, naming the file, and measured again)."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    except OSError as e:
        warn(f"probe cache {path} is unreadable ({e.strerror or e}); measuring the device again")
        return None
    try:
        cached = json.loads(text)
        limits = {k: float(cached[k]) for k in (*LIMIT_KEYS, "measured_at")}
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        warn(f"probe cache {path} is damaged ({type(e).__name__}); measuring the device again and rewriting it")
        return None
    if not all(math.isfinite(v) and v > 0 for v in limits.values()):
        warn(f"probe cache {path} holds a rate that is not a positive number; measuring the device again")
        return None
    if (why := implausible(limits)) is not None:
        warn(f"probe cache {path} holds an implausible {why}; discarding it and measuring the device again")
        return None
    return limits


def implausible(limits: dict) -> str | None:
    """What in cached limits no device can have shown (a rate outside PLAUSIBLE, a time yet to come), or None."""
    for key, (low, high) in PLAUSIBLE.items():
        if not low <= limits[key] <= high:
            return f"{key} {limits[key]:.3g} (expected {low:.0e} to {high:.0e})"
    if limits["measured_at"] > time.time() + 86400:  # a day of clock skew; later would be reused forever
        return f"measured_at {limits['measured_at']:.0f} (in the future)"
    return None


def warn(message: str) -> None:
    print(f"kvbench: {message}", file=sys.stderr, flush=True)


def device_limits(device: torch.device, device_name: str, dtype: torch.dtype) -> dict:
    """The best read bandwidth, copy bandwidth and matmul rate this host has shown for this device and dtype.

    Measured once per sweep per host (env_vars.PROBE_SINCE) and merged with the per-host cache by
    taking the maximum: a probe that ran while something else loaded the machine can only lower
    a measurement, and a floor must use the highest rate the device has shown.
    """
    path = _cache_path(device, device_name, dtype)
    cached = _read_cache(path)
    since = env_vars.probe_since()
    reused = cached is not None and since is not None and cached["measured_at"] >= since
    if reused:
        limits = cached
    else:
        limits = probe(device, dtype)
        if cached is not None:
            for key in LIMIT_KEYS:
                limits[key] = max(limits[key], cached[key])
        try:
            write_atomic_text(path, json.dumps(limits))
        except OSError as e:  # costs only a re-measurement next time
            warn(f"probe cache {path} cannot be written ({e.strerror or e}); the next cell measures the device again")
    return {
        "bandwidth_source": f"measured read (sum over 1 GiB, {device.type}, best on this host)",
        "read_bandwidth_bytes_per_s": limits["read_bandwidth_bytes_per_s"],
        "copy_bandwidth_bytes_per_s": limits["copy_bandwidth_bytes_per_s"],
        "peak_flops_per_s": limits["peak_flops_per_s"],
        "peak_flops_source": f"measured {dtype} matmul ({device.type}, best on this host)",
        "bandwidth_spec_bytes_per_s": spec_bandwidth(device_name),
        "probe_reused": reused,
    }


def analyse(
    cfg: Config,
    batch: int,
    prompt_len: int,
    new_tokens: int,
    kv_bytes_per_token: int,
    step_read_bytes: int,
    limits: dict,
    measured_ms: float | None,
    held: int | None = None,
) -> dict:
    """The floor of a cached decode step, and how close `measured_ms` came to it.

    The floor divides by the read bandwidth (the record's `bandwidth_bytes_per_s` is that rate,
    named for the floor it sets). For kv_mode 'none' the floor is still the cached step's: it says
    what recomputing gives up. The bytes are the mode's own (kv_bytes_per_token: 8-bit codes and scales, nibbles
    and group parameters), over the positions it holds (`held`: a sliding window's), so each mode is measured
    against its own limit.
    """
    context = prompt_len + new_tokens / 2  # mean keys per query over the decode steps
    if held is not None:  # a cache that holds at most `held` positions (sliding: sinks + window) reads no more
        context = min(context, held)
    flops, nbytes = decode_step_cost(cfg, batch, context, kv_bytes_per_token, step_read_bytes)
    read = limits["read_bandwidth_bytes_per_s"]
    floor_ms = 1e3 * max(nbytes / read, flops / limits["peak_flops_per_s"])
    fraction = floor_ms / measured_ms if measured_ms else None
    return {
        "decode_flops_per_token": flops,
        "decode_bytes_per_token": nbytes,
        "floor_ms_per_token": floor_ms,
        "fraction_of_floor": fraction,
        "bandwidth_bytes_per_s": read,
        "bandwidth_source": limits["bandwidth_source"],
        "peak_flops_per_s": limits["peak_flops_per_s"],
        "peak_flops_source": limits["peak_flops_source"],
        "bandwidth_spec_bytes_per_s": limits.get("bandwidth_spec_bytes_per_s"),
        "read_bandwidth_bytes_per_s": read,
        "copy_bandwidth_bytes_per_s": limits.get("copy_bandwidth_bytes_per_s"),
        "probe_reused": limits.get("probe_reused"),
        "suspect": bool(fraction is not None and fraction > 1.0),
    }
