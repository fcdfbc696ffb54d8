"""Token timestamps and the record's latency summary (kvbench/timing.py)."""

import time

import pytest
import torch

from kvbench.timing import TokenTimer, latency, stats


def test_token_timer_gives_one_interval_per_token_in_order():
    timer = TokenTimer(torch.device("cpu"))
    timer.start()
    for i, pause in enumerate((0.02, 0.0, 0.01)):
        time.sleep(pause)
        timer.mark(i)
    prefill, step1, step2 = timer.intervals_ms()
    assert prefill >= 20 and step1 < prefill and step2 >= 10
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
