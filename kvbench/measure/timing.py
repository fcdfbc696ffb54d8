"""Timestamps around each generated token, the right way for the device.

On a GPU, CUDA events are recorded between steps without synchronising (so the timer
does not stall the pipeline it measures) and read after one final synchronize. On a CPU,
perf_counter_ns at each mark is exact because the work is synchronous.
"""

from __future__ import annotations

import statistics
import time

import torch


class TokenTimer:
    """marks[0] before the prefill; marks[i+1] when token i is chosen."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.device = device
        self.marks: list = []

    def start(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
        self.marks = []
        self.mark()

    def mark(self, _index: int | None = None) -> None:
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record()
            self.marks.append(ev)
        else:
            self.marks.append(time.perf_counter_ns())

    def intervals_ms(self) -> list[float]:
        """Milliseconds between consecutive marks: [prefill, decode step 1, decode step 2, ...]."""
        if self.cuda:
            torch.cuda.synchronize(self.device)
            return [a.elapsed_time(b) for a, b in zip(self.marks, self.marks[1:])]
        return [(b - a) / 1e6 for a, b in zip(self.marks, self.marks[1:])]


def stats(values: list[float]) -> dict[str, float | int | None]:
    """median, min and max; std, the sample standard deviation (None for one value); n, how many values."""
    std = statistics.stdev(values) if len(values) > 1 else None
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "std": std, "n": len(values)}


def latency(runs: list[list[float]], batch: int, compile_s: float | None) -> dict:
    """The record's `latency` from each timed generation's intervals ([prefill, step 1, step 2, ...] ms)."""
    steps = len(runs[0]) - 1
    decode_per_step = [sum(r[1:]) / steps for r in runs]
    decode = stats(decode_per_step)
    return {
        "prefill_ms": stats([r[0] for r in runs]),
        "decode_ms_per_token": decode,
        "per_step_decode_ms": [stats([r[s] for r in runs])["median"] for s in range(1, steps + 1)],
        "decode_tokens_per_s": batch * 1e3 / decode["median"],
        "total_generate_ms": stats([sum(r) for r in runs]),
        "decode_steps": steps,
        "compile_s": compile_s,
    }
