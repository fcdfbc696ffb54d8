"""The lower bound on a cached decode step: bytes to move / bandwidth vs FLOPs / peak rate.

A batch-1 decode step reads every weight once and the whole KV cache, and does little
arithmetic per byte, so on every device here it is bandwidth-bound. The bandwidth and
matmul rate are *measured* on the device (a large copy, a large matmul), cached per host
and device so a sweep measures them once; the vendor's figure for known GPUs is recorded
beside the measurement, never used in its place.
"""

from __future__ import annotations

import json
import os
import platform
import re
import time
from pathlib import Path

import torch

from kvbench.devices import synchronize
from kvbench.model import GPTConfig

# Vendor datasheet peak memory bandwidth (bytes/s), by a substring of the device name. For context only.
GPU_SPEC_BANDWIDTH = {
    "H200": 4.8e12, "H100 NVL": 3.9e12, "H100 PCIe": 2.0e12, "H100": 3.35e12,
    "A100-SXM4-80GB": 2.039e12, "A100 80GB PCIe": 1.935e12, "A100": 1.555e12,
    "L40S": 864e9, "A10": 600e9, "L4": 300e9, "T4": 320e9, "V100": 900e9, "RTX 4090": 1008e9,
}


def spec_bandwidth(device_name: str | None) -> float | None:
    if not device_name:
        return None
    for key, bw in GPU_SPEC_BANDWIDTH.items():  # most specific keys come first
        if key in device_name:
            return bw
    return None


def decode_step_cost(cfg: GPTConfig, batch: int, context: float, kv_element_bytes: float,
                     weights_bytes: int) -> tuple[float, float]:
    """(FLOPs, bytes) of one cached decode step for the whole batch at `context` keys per query."""
    C, L, hd, kvh = cfg.n_embd, cfg.n_layer, cfg.head_dim, cfg.kv_heads
    matmul_params = L * (C * (C + 2 * kvh * hd) + C * C + 8 * C * C) + C * cfg.vocab_size
    attention_flops = L * 4 * C * context  # q.K^T and att.V: 2 flops per multiply-add each
    flops = batch * (2 * matmul_params + attention_flops)
    kv_per_token = 2 * L * kvh * hd * kv_element_bytes
    nbytes = weights_bytes + batch * kv_per_token * (context + 1)  # read the cache, write one position
    return float(flops), float(nbytes)


def weights_read_per_step(model: torch.nn.Module) -> int:
    """Bytes of weights a decode step reads: all of them except the position table (one row used)."""
    return sum(p.numel() * p.element_size() for n, p in model.named_parameters() if not n.endswith("wpe.weight"))


def _cache_path(device: torch.device, device_name: str, dtype: torch.dtype) -> Path:
    root = Path(os.environ.get("KVBENCH_CACHE_DIR", Path.home() / ".cache" / "kvbench"))
    slug = re.sub(r"[^A-Za-z0-9]+", "-", f"{platform.node()}-{device.type}-{device_name}-{dtype}").strip("-")
    return root / f"probe-{slug}.json"


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


def measure(device: torch.device, dtype: torch.dtype) -> dict:
    """Copy bandwidth (read + write bytes / s) and matmul rate (FLOP/s) in `dtype`."""
    n_bytes = (1 << 30) if device.type == "cuda" else (256 << 20)
    src = torch.empty(n_bytes // 4, dtype=torch.float32, device=device).fill_(1.0)
    dst = torch.empty_like(src)
    bw = 2 * n_bytes / _best_seconds(lambda: dst.copy_(src), device, reps=5)
    del src, dst
    n = 4096 if device.type == "cuda" else 1024
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    flops = 2 * n**3 / _best_seconds(lambda: a @ b, device, reps=5)
    return {"bandwidth_bytes_per_s": bw, "peak_flops_per_s": flops}


def device_limits(device: torch.device, device_name: str, dtype: torch.dtype) -> dict:
    """The best copy bandwidth and matmul rate ever measured for this device and dtype on this host.

    Measured again in every cell (well under a second) and merged with the per-host cache by
    taking the maximum: a probe that ran while something else loaded the machine can only
    lower a measurement, and a floor must use the highest rate the device has shown.
    """
    path = _cache_path(device, device_name, dtype)
    limits = measure(device, dtype)
    try:
        cached = json.loads(path.read_text())
        for key in ("bandwidth_bytes_per_s", "peak_flops_per_s"):
            limits[key] = max(limits[key], float(cached[key]))
    except (OSError, json.JSONDecodeError, KeyError, TypeError, ValueError):
        pass
    limits["bandwidth_source"] = f"measured copy ({device.type}, best on this host)"
    limits["peak_flops_source"] = f"measured {dtype} matmul ({device.type}, best on this host)"
    limits["bandwidth_spec_bytes_per_s"] = spec_bandwidth(device_name)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(limits))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only home only costs a re-measurement next time
    return limits


def analyse(cfg: GPTConfig, batch: int, prompt_len: int, new_tokens: int, kv_element_bytes: float,
            weights_bytes: int, limits: dict, measured_ms: float | None) -> dict:
    """The floor of a cached decode step, and how close `measured_ms` came to it.

    For kv_mode 'none' the floor is still the cached step's: it says what recomputing gives up.
    """
    context = prompt_len + new_tokens / 2  # mean keys per query over the decode steps
    flops, nbytes = decode_step_cost(cfg, batch, context, kv_element_bytes, weights_bytes)
    floor_ms = 1e3 * max(nbytes / limits["bandwidth_bytes_per_s"], flops / limits["peak_flops_per_s"])
    fraction = floor_ms / measured_ms if measured_ms else None
    return {
        "decode_flops_per_token": flops,
        "decode_bytes_per_token": nbytes,
        "floor_ms_per_token": floor_ms,
        "fraction_of_floor": fraction,
        "bandwidth_bytes_per_s": limits["bandwidth_bytes_per_s"],
        "bandwidth_source": limits["bandwidth_source"],
        "peak_flops_per_s": limits["peak_flops_per_s"],
        "peak_flops_source": limits["peak_flops_source"],
        "bandwidth_spec_bytes_per_s": limits.get("bandwidth_spec_bytes_per_s"),
        "suspect": bool(fraction is not None and fraction > 1.0),
    }
