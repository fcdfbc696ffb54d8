"""CPU memory that says something: live tensor bytes per phase, from an untimed pass."""

import pytest
import torch

from kvbench.measure.cell import run_cell
from kvbench.measure.memory import CPU_METHOD, LiveTensorBytes
from kvbench.measure.spec import CellSpec


def test_tracker_counts_each_storage_once_and_frees_it():
    x = torch.ones(1000)  # 4,000 bytes, alive before the tracker starts
    tracker = LiveTensorBytes([x, x[10:]])  # a view shares the storage: counted once
    assert tracker.live == 4000
    with tracker:
        y = x * 2  # 4,000 new bytes
        y.add_(1)  # in place: nothing new
        z = torch.cat([x, y])  # 8,000 more
        del y, z
    assert tracker.peak == 16000 and tracker.live == 4000


def _cell(kv_mode: str, **kw) -> dict:
    spec = CellSpec(model="tiny", kv_mode=kv_mode, device="cpu", warmup=1, iters=1, check_steps=2, **kw)
    rec = run_cell(spec)
    assert rec["status"] == "ok", rec["error"]
    return rec["memory"]


@pytest.fixture(scope="module")
def batch4_prompt512():
    """tiny with a longer position table, batch 4, prompt 512: a long cache, so concat's per-step
    copies of it show in the decode peak."""
    shape = dict(batch=4, prompt_len=512, new_tokens=8, block_size=600)
    return {mode: _cell(mode, **shape) for mode in ("none", "concat", "static")}


def test_cpu_peaks_lie_between_weights_plus_cache_and_the_rss(batch4_prompt512):
    for mode, mem in batch4_prompt512.items():
        assert mem["peak_method"] == CPU_METHOD
        kv = mem["kv_cache_bytes_measured"] or 0
        for phase in ("prefill_peak_allocated_bytes", "decode_peak_allocated_bytes"):
            assert mem["weights_bytes"] + kv <= mem[phase] <= mem["rss_peak_bytes"], (mode, phase)
        assert mem["torch_peak_allocated_bytes"] == max(
            mem["prefill_peak_allocated_bytes"], mem["decode_peak_allocated_bytes"]
        )


def test_concat_decode_peak_exceeds_static_by_its_copies(batch4_prompt512):
    # Each concat step allocates the whole cache again before the old one is freed.
    concat, static = batch4_prompt512["concat"], batch4_prompt512["static"]
    assert concat["kv_cache_bytes_measured"] == static["kv_cache_bytes_measured"]
    assert concat["decode_peak_allocated_bytes"] > static["decode_peak_allocated_bytes"]


def test_recompute_decode_peak_grows_with_the_sequence():
    short = _cell("none", prompt_len=8, new_tokens=8)
    long = _cell("none", prompt_len=48, new_tokens=8)
    assert long["decode_peak_allocated_bytes"] > short["decode_peak_allocated_bytes"]
