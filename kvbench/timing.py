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
