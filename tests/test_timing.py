"""Token timestamps and the record's latency summary (kvbench/measure/timing.py)."""

import time

import pytest
import torch

from kvbench.measure.timing import TokenTimer, latency, stats


def test_token_timer_gives_one_interval_per_token_in_order(monkeypatch):
    now_ns = [0]  # a clock the test moves: the intervals are exact, whatever the machine's load
    monkeypatch.setattr(time, "perf_counter_ns", lambda: now_ns[0])
    timer = TokenTimer(torch.device("cpu"))
    timer.start()
    for i, pause_ns in enumerate((20_000_000, 500_000, 10_000_000)):
        now_ns[0] += pause_ns
        timer.mark(i)
    assert timer.intervals_ms() == [20.0, 0.5, 10.0]  # [prefill, step 1, step 2]
    timer.start()  # a new generation starts from no marks
    assert timer.intervals_ms() == []


def test_stats_median_min_max_std_and_count():
    assert stats([3.0, 1.0, 2.0]) == {"median": 2.0, "min": 1.0, "max": 3.0, "std": 1.0, "n": 3}
    assert stats([5.0])["std"] is None  # one value has no spread


def test_latency_summarises_each_generation_by_phase():
    runs = [[10.0, 2.0, 4.0], [14.0, 3.0, 3.0], [12.0, 1.0, 2.0]]  # [prefill, step 1, step 2] ms
    lat = latency(runs, batch=4, compile_s=None)
    assert lat["prefill_ms"]["median"] == 12.0 and lat["decode_steps"] == 2
    assert [lat["decode_ms_per_token"][k] for k in ("min", "median", "max")] == [1.5, 3.0, 3.0]
    assert lat["per_step_decode_ms"] == [2.0, 3.0]  # per step, the median over generations
    assert lat["total_generate_ms"]["median"] == 16.0
    assert lat["decode_tokens_per_s"] == pytest.approx(4 * 1e3 / 3.0)
    assert lat["compile_s"] is None and latency(runs, 1, compile_s=2.5)["compile_s"] == 2.5
