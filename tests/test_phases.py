"""The phases of a cell's measurement (kvbench/measure/phases.py), each returning what it measured."""

import gc
import time
import weakref

import pytest
import torch

from kvbench.core.presets import kv_cache_bytes
from kvbench.engines.registry import build
from kvbench.measure import memory
from kvbench.measure.phases import Iteration, Timed, TokenHook, phase, timed_iterations, warm_up
from kvbench.measure.spec import CellSpec

CPU = torch.device("cpu")
SPEC = CellSpec(model="tiny", kv_mode="static", batch=2, prompt_len=5, new_tokens=4, warmup=3, iters=3, device="cpu")
PROMPT = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(2))


def test_phase_times_what_finished_and_nothing_that_raised(monkeypatch):
    now = [100.0]  # a clock the test moves, so no assertion depends on how fast the machine is
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])
    phases_s = {"import": 1.0}
    with phase(phases_s, "check"):
        now[0] += 0.25
    with phase(phases_s, "build", since=now[0] - 5.0):
        now[0] += 1.0
    with pytest.raises(RuntimeError), phase(phases_s, "timed"):
        now[0] += 2.0
        raise RuntimeError("out of memory")
    assert list(phases_s) == ["import", "check", "build"]
    assert phases_s["check"] == 0.25 and phases_s["build"] == 6.0


def counting(run):
    calls = []

    def counted(*a, **kw):
        calls.append(a[1])
        return run(*a, **kw)

    return counted, calls


def test_warm_up_on_a_cpu_counts_the_peaks_in_its_first_generation(tiny_model):
    engine = build("kvbench", tiny_model)
    run, calls = counting(engine.generate)
    peaks = warm_up(engine, run, PROMPT, SPEC, CPU)
    assert len(calls) == SPEC.warmup - 1  # the tracked pass was the first warm-up
    weights = sum(p.numel() * p.element_size() for p in tiny_model.parameters())
    assert peaks.method == memory.CPU_METHOD and peaks.reserved is None
    assert weights < peaks.prefill <= peaks.allocated and weights < peaks.decode <= peaks.allocated
    assert peaks.allocated == max(peaks.prefill, peaks.decode)


def test_timed_iterations_each_start_from_a_fresh_cache_and_time_every_token(tiny_model):
    engine = build("kvbench", tiny_model)
    previous: list[weakref.ref] = []

    def run(prompt, new_tokens, kv_mode, **kw):
        gc.collect()
        assert all(ref() is None for ref in previous), "the last iteration's cache is still alive"
        gen = engine.generate(prompt, new_tokens, kv_mode, **kw)
        previous.append(weakref.ref(gen.cache))
        return gen

    timed = timed_iterations(run, PROMPT, SPEC, CPU)
    assert len(timed.iterations) == SPEC.iters == len(previous)
    cfg = tiny_model.config
    expected = kv_cache_bytes(cfg.n_layer, 2, cfg.kv_heads, 5 + 4 - 1, cfg.head_dim, 4)
    for it in timed.iterations:
        assert len(it.intervals_ms) == SPEC.new_tokens and all(ms > 0 for ms in it.intervals_ms)
        assert it.kv_cache_bytes == expected and it.tokens.shape == (2, 4)
        assert it.prefill_peak is None and it.decode_joules is None  # no CUDA, no NVML here
    assert timed.gpu_state == {"clocks_before": None, "clocks_after": None, "throttle_reasons": None}
    assert timed.energy_record(3) == {"decode_joules_per_token": None, "method": None}


def test_energy_is_the_median_decode_joules_per_decode_step():
    its = [Iteration([1.0], None, j, torch.zeros(1, 1), None) for j in (6.0, 9.0, 3.0)]
    timed = Timed(its, "nvml_energy_counter", None, None, None, None)
    assert timed.energy_record(3) == {"decode_joules_per_token": 2.0, "method": "nvml_energy_counter"}


def test_the_token_hook_marks_every_token_and_starts_the_energy_at_the_prefills():
    class Energy:
        starts = 0

        def start(self, device):
            self.starts += 1

    hook = TokenHook(CPU, Energy())
    hook.timer.start()
    for i in range(4):
        hook(i)
    assert len(hook.timer.intervals_ms()) == 4 and hook.energy.starts == 1 and hook.prefill_peak is None
