"""What only a GPU can show; `make gpu-check` runs these (`pytest -m gpu`). Skipped without CUDA.

Written before any GPU was at hand, so that a short GPU allocation proves the GPU path at once:
CUDA graphs captured once and replayed, CUDA-event timing, NVML, OOM as a status, half precision,
and a gpt2-xl built directly on the device.
"""

import time

import pytest
import torch

from kvbench.measure.cell import CellSpec, run_cell
from kvbench.models.gpt2 import build_random, preset

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (run by make gpu-check)"),
]


def _ok(**kw) -> dict:
    spec = CellSpec(
        **{
            "model": "gpt2",
            "device": "cuda",
            "dtype": "bf16",
            "prompt_len": 128,
            "new_tokens": 32,
            "warmup": 1,
            "iters": 3,
            "check_steps": 8,
            **kw,
        }
    )
    rec = run_cell(spec)
    assert rec["status"] == "ok", rec["error"]
    return rec


def test_compiled_static_step_is_one_cuda_graph_replayed_without_recompiles():
    from torch._dynamo.utils import counters

    counters.clear()
    rec = _ok(kv_mode="static", compile=True, iters=5)
    # One decode graph compiled (plus nothing recompiled across the check, warm-up and the timed
    # generations), and inductor never fell back from CUDA graphs.
    assert counters["stats"]["unique_graphs"] == 1, dict(counters["stats"])
    assert not counters["inductor"].get("cudagraph_skips"), dict(counters["inductor"])
    assert rec["check"]["matches_reference"] is not False and rec["check"]["timed_equals_checked"]
    assert rec["latency"]["compile_s"] > 0
    # A replayed graph is steady: no step of the timed generations pays a capture.
    steps = rec["latency"]["per_step_decode_ms"]
    assert max(steps) < 5 * sorted(steps)[len(steps) // 2], steps


def test_cuda_event_timings_agree_with_a_synchronized_wall_clock():
    from kvbench.engines.generate import generate
    from kvbench.measure.timing import TokenTimer

    model = build_random(preset("gpt2"), "cuda", torch.bfloat16, 0)
    prompt = torch.randint(0, 50257, (1, 128), device="cuda")
    generate(model, prompt, 16, "static")  # warm-up
    timer = TokenTimer(torch.device("cuda"))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    timer.start()
    generate(model, prompt, 512, "static", on_token=timer.mark)
    torch.cuda.synchronize()
    wall_ms = (time.perf_counter() - t0) * 1e3
    events_ms = sum(timer.intervals_ms())
    assert events_ms == pytest.approx(wall_ms, rel=0.05), (events_ms, wall_ms)


def test_nvml_fields_are_filled():
    rec = _ok(kv_mode="static", new_tokens=128)
    env, mem, energy = rec["environment"], rec["memory"], rec["energy"]
    assert env["driver"] and env["device_name"] != "cpu"
    assert env["clocks_before"] and env["clocks_after"] and isinstance(env["throttle_reasons"], list)
    assert mem["nvml_peak_used_bytes"] > mem["weights_bytes"]
    assert mem["peak_method"] == "cuda_allocator"
    assert mem["prefill_peak_allocated_bytes"] >= mem["weights_bytes"] + mem["kv_cache_bytes_measured"]
    assert mem["decode_peak_allocated_bytes"] >= mem["weights_bytes"]
    assert energy["decode_joules_per_token"] and energy["decode_joules_per_token"] > 0, energy


def test_a_cell_past_the_gpus_memory_is_an_oom_record_and_the_next_cell_runs():
    free, total = torch.cuda.mem_get_info()
    # batch so large that the static cache alone is twice the device's memory
    per_sequence = 2 * 12 * 12 * 1024 * 64 * 4  # fp32 K and V of gpt2 at 1024 positions
    batch = int(2 * total / per_sequence) + 1
    spec = CellSpec(
        model="gpt2",
        kv_mode="static",
        device="cuda",
        dtype="fp32",
        batch=batch,
        prompt_len=1000,
        new_tokens=16,
        warmup=0,
        iters=1,
        check_steps=0,
    )
    rec = run_cell(spec)
    assert rec["status"] == "oom" and "memory" in rec["error"].lower(), rec["error"]
    _ok(kv_mode="static", new_tokens=8)


@pytest.mark.parametrize("dtype", ["fp16", "bf16"])
@pytest.mark.parametrize("kv_mode", ["none", "concat", "static"])
def test_half_precision_cells_are_ok(dtype, kv_mode):
    rec = _ok(kv_mode=kv_mode, dtype=dtype, new_tokens=16, iters=2)
    assert rec["check"]["reference_steps"] == 8


def test_gpt2_xl_builds_on_the_gpu_in_seconds():
    torch.empty(1, device="cuda")  # the CUDA context is not the build's cost
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model = build_random(preset("gpt2-xl"), "cuda", torch.bfloat16, 0)
    torch.cuda.synchronize()
    elapsed = time.perf_counter() - t0
    assert model.num_params() > 1.5e9
    assert elapsed <= 3.0, f"gpt2-xl took {elapsed:.1f} s to build on {torch.cuda.get_device_name()}"
