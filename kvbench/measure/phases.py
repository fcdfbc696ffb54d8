"""The phases of a cell's measurement, each a function that returns what it measured.

    compile   build the compiled runner and trace it once (only with --compile)
    check     the token check (kvbench/measure/token_check.py)
    warmup    untimed generations; on a CPU the first one also counts the allocator peaks
    timed     `iters` generations, each from a fresh cache, a timestamp per token
    probe     the device's read bandwidth and matmul rate (kvbench/measure/roofline.py)

`phase` times each into the record's `environment.phases_s`, so where a cell's wall time went
can be read off any record.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from kvbench.core import disk_cache, interrupt
from kvbench.engines.base import Engine, Runner
from kvbench.measure import memory, nvml
from kvbench.measure.devices import synchronize
from kvbench.measure.spec import CellSpec
from kvbench.measure.timing import TokenTimer, stats


@contextmanager
def phase(phases_s: dict, name: str, since: float | None = None) -> Iterator[None]:
    """Seconds from entering (or `since`, a perf_counter time) to leaving, as phases_s[name]; none if it raised."""
    start = time.perf_counter() if since is None else since
    yield
    phases_s[name] = time.perf_counter() - start


def compiled_runner(engine: Engine, prompt: torch.Tensor, spec: CellSpec, device: torch.device) -> Runner:
    """The compiled runner, traced (and on a GPU captured) by one full generation, outside every timing."""
    run = engine.compiled_runner(spec.kv_mode, prompt, spec.new_tokens)
    run(prompt, spec.new_tokens, spec.kv_mode)
    synchronize(device)
    disk_cache.seal_inductor()  # what it compiled is sound: the next cell checks it against this
    return run


def warm_up(engine: Engine, run: Runner, prompt: torch.Tensor, spec: CellSpec, device: torch.device) -> memory.Peaks:
    """`spec.warmup` untimed generations; on a CPU the first also counts the allocator peaks.

    A CPU has no allocator counter, so its peaks are live tensor bytes tracked op by op through one
    eager generation with the cell's shapes (memory.cpu_peaks). That pass doubles as the first
    warm-up when the cell runs eagerly; a compiled cell gets it as an extra untimed pass (the
    tracker would break its graph). On CUDA the timed iterations read the allocator's own peaks.
    """
    peaks, warmed = memory.Peaks(), 0
    if device.type != "cuda" and engine.module is not None:
        peaks = memory.cpu_peaks(engine.generate, engine.module, prompt, spec.new_tokens, spec.kv_mode)
        warmed = 0 if spec.compile else 1
    for _ in range(spec.warmup - warmed):
        run(prompt, spec.new_tokens, spec.kv_mode)
    return peaks


class TokenHook:
    """A timed generation's `on_token`: a timestamp per token; at the prefill's token, the CUDA
    allocator's prefill peak and the start of the decode's energy."""

    def __init__(self, device: torch.device, energy: nvml.DecodeEnergy):
        self.device, self.energy = device, energy
        self.timer = TokenTimer(device)
        self.prefill_peak: int | None = None

    def __call__(self, i: int) -> None:
        self.timer.mark(i)
        interrupt.check()
        if i == 0:
            if self.device.type == "cuda":
                self.prefill_peak = torch.cuda.max_memory_allocated(self.device)
            self.energy.start(self.device)


@dataclass(frozen=True)
class Iteration:
    """One timed generation: ms between token marks ([prefill, step 1, ...]) and what it left."""

    intervals_ms: list[float]
    prefill_peak: int | None
    decode_joules: float | None
    tokens: torch.Tensor
    kv_cache_bytes: int | None  # measured from the cache's tensors; None where the engine keeps it out of reach
    kv_attention_path: str | None = None  # how the last decode step's attention read the cache (KVCache)


def timed_generation(run: Runner, prompt: torch.Tensor, spec: CellSpec, hook: TokenHook) -> Iteration:
    """One timed generation. Its cache is freed on return, before the next iteration builds a fresh one."""
    hook.timer.start()
    gen = run(prompt, spec.new_tokens, spec.kv_mode, on_token=hook)
    intervals = hook.timer.intervals_ms()  # synchronizes on CUDA
    joules = hook.energy.joules()
    kv_bytes = gen.cache.nbytes() if gen.cache is not None else None
    path = getattr(gen.cache, "attention_path", None)  # an engine's own cache (llama.cpp's) has none
    return Iteration(intervals, hook.prefill_peak, joules, gen.tokens, kv_bytes, path)


@dataclass(frozen=True)
class Timed:
    """The timed phase: every iteration, and what the GPU reported around them (None on a CPU)."""

    iterations: list[Iteration]
    energy_method: str | None
    nvml_peak_used_bytes: int | None
    clocks_before: dict | None
    clocks_after: dict | None
    throttle_reasons: list[str] | None

    def energy_record(self, decode_steps: int) -> dict:
        """The record's `energy`: the median decode joules per token, and how NVML measured them."""
        joules = [it.decode_joules for it in self.iterations if it.decode_joules is not None]
        if not joules:
            return {"decode_joules_per_token": None, "method": None}
        return {"decode_joules_per_token": stats(joules)["median"] / decode_steps, "method": self.energy_method}

    @property
    def gpu_state(self) -> dict:
        """The environment's clocks and throttle reasons around the timed phase."""
        return {
            "clocks_before": self.clocks_before,
            "clocks_after": self.clocks_after,
            "throttle_reasons": self.throttle_reasons,
        }


def timed_iterations(run: Runner, prompt: torch.Tensor, spec: CellSpec, device: torch.device) -> Timed:
    """`spec.iters` generations, each from a fresh cache, with NVML sampling memory and power meanwhile."""
    handle = nvml.handle_for(device)
    clocks_before = nvml.clocks(handle)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    with nvml.Sampler(handle) as sampler:
        energy = nvml.DecodeEnergy(handle, sampler)
        iterations = [timed_generation(run, prompt, spec, TokenHook(device, energy)) for _ in range(spec.iters)]
    return Timed(
        iterations,
        energy.method if handle is not None else None,
        sampler.peak_used,
        clocks_before,
        nvml.clocks(handle),
        nvml.throttle_reasons(handle),
    )


def cuda_decode_peak(run: Runner, prompt: torch.Tensor, spec: CellSpec, device: torch.device) -> int:
    """The decode's own allocator peak: one more generation with the counter reset after its prefill."""

    def reset_after_prefill(i: int) -> None:
        if i == 0:
            torch.cuda.reset_peak_memory_stats(device)

    run(prompt, spec.new_tokens, spec.kv_mode, on_token=reset_after_prefill)
    return torch.cuda.max_memory_allocated(device)
