"""Which kernel multiplies each decode matrix on this CPU, as measured on this CPU.

Two candidates for a float32 linear layer at decode batch sizes: kvbench's small-batch kernel
(kvbench/kernels/small_batch_linear.cpp) and oneDNN's inner product on its packed weight
(decode_linear.py). Neither wins everywhere: on the 2-core Xeon the kernel streamed gpt2's matrices at
1.0 of the read probe at batch 2-8 where oneDNN reached 0.65-0.9, and the two were level at batch 1.
So each (out, in) shape is timed at the cell's row count with both, over enough copies of the matrix
that they stream from memory as a decode step's weights do (at least `STREAM_BYTES`), in alternating
rounds; the kernel is chosen where its median is not slower. The times are kept per host, CPU and
kernel build (kvbench's cache folder), checked before reuse, and written into the record beside the choice.
"""

from __future__ import annotations

import json
import math
import os
import platform
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from kvbench.core import env_vars
from kvbench.kernels import build
from kvbench.kernels import small_batch_linear as kernel

STREAM_BYTES = 96 << 20
MAX_COPIES = 256  # a tiny model's matrices sit in cache whatever the count: per-call overhead decides there
ROUNDS = 5


@dataclass(frozen=True)
class Choice:
    shape: str  # "out x in"
    rows: int
    kernel: str  # "small-batch" or "onednn"
    small_batch_ms: float
    onednn_ms: float


def _cache_path() -> Path:
    name = f"linear-choice-{platform.node()}-{build.key(kernel.NAME)}.json"
    return env_vars.cache_dir() / name


def _read() -> dict:
    """The cached times, each entry checked (two finite positive times); anything else is measured again."""
    try:
        table = json.loads(_cache_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(table, dict):
        return {}

    def whole(entry) -> bool:
        times = [entry.get(k) for k in ("small_batch_ms", "onednn_ms")] if isinstance(entry, dict) else []
        return len(times) == 2 and all(isinstance(t, float) and math.isfinite(t) and t > 0 for t in times)

    return {k: v for k, v in table.items() if whole(v)}


def _write(table: dict) -> None:
    path = _cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as f:
        json.dump(table, f, indent=1)
    os.replace(tmp, path)  # never half-written


@torch.no_grad()
def measure(n: int, k: int, rows: int) -> tuple[float, float]:
    """Median ms per matrix of the kernel and of oneDNN, streaming copies of an (n, k) matrix at `rows` rows."""
    copies = max(2, min(MAX_COPIES, math.ceil(STREAM_BYTES / (n * k * 4))))
    dense = [torch.randn(n, k) for _ in range(copies)]
    packed_kernel = [kernel.pack(w) for w in dense]
    packed_onednn = [torch.ops.mkldnn._reorder_linear_weight(w, None) for w in dense]
    del dense
    x, bias = torch.randn(rows, k), torch.zeros(n)

    def small_batch():
        for w in packed_kernel:
            kernel.linear(x, w, bias, n)

    def onednn():
        for w in packed_onednn:
            torch.ops.mkldnn._linear_pointwise(x, w, bias, "none", [], "")

    times: dict = {small_batch: [], onednn: []}
    for fn in times:
        fn()  # warm-up
    for _ in range(ROUNDS):
        for fn, kept in times.items():
            t0 = time.perf_counter()
            fn()
            kept.append((time.perf_counter() - t0) * 1e3 / copies)
    return statistics.median(times[small_batch]), statistics.median(times[onednn])


def choose(shapes: list[tuple[int, int]], rows: int) -> dict[tuple[int, int], Choice]:
    """The faster kernel for each (out, in) shape at `rows` rows: from the cache, or measured now and kept."""
    table, measured = _read(), False
    chosen = {}
    for n, k in sorted(set(shapes)):
        entry = table.get(f"{n}x{k}@{rows}")
        if entry is None:
            small, onednn = measure(n, k, rows)
            entry = table[f"{n}x{k}@{rows}"] = {"small_batch_ms": small, "onednn_ms": onednn}
            measured = True
        small, onednn = entry["small_batch_ms"], entry["onednn_ms"]
        name = "small-batch" if small <= onednn else "onednn"
        chosen[(n, k)] = Choice(f"{n}x{k}", rows, name, round(small, 4), round(onednn, 4))
    if measured:
        _write(table)
    return chosen


def as_record(chosen: dict[tuple[int, int], Choice]) -> list[dict]:
    return [asdict(c) for c in chosen.values()]
