"""Bytes reserved and used: the formula at every step equals what the live cache holds, for concat,
static and paged, rectangular and ragged, with and without a shared prefix."""

import pytest
import torch

from kvbench.caches.ragged import Layout, layout_prompt
from kvbench.core.presets import kv_bytes_per_token, preset
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.measure import alloc as kv_alloc
from kvbench.models.family import build_random


@pytest.fixture(scope="module")
def model():
    return build_random(preset("tiny-llama"), "cpu", torch.float32, seed=0, for_decoding=True)


@pytest.mark.parametrize("kv_mode", ["concat", "static", "paged"])
@pytest.mark.parametrize("spread, prefix", [(0.0, 0), (0.5, 0), (0.5, 6)])
def test_bytes_by_formula_equal_bytes_counted_at_every_step(model, kv_mode, spread, prefix):
    cfg = model.config
    per_token = kv_bytes_per_token(cfg.n_layer, cfg.kv_heads, cfg.head_dim, 4, kv_mode)
    prompt = torch.randint(0, cfg.vocab_size, (3, 14), generator=torch.Generator().manual_seed(0))
    layout = layout_prompt(prompt, spread, prefix, seed=0)
    plan = GenerationPlan({"block_tokens": 4} if kv_mode == "paged" else {}, layout)
    for new in (2, 5, 9):  # a generation of `new` tokens ends at step new - 1
        gen = generate(model, prompt, new, kv_mode, plan=plan)
        reserved, used = kv_alloc.by_step(kv_mode, per_token, 3, 14, new, layout, 4)
        assert kv_alloc.counted(gen.cache, layout) == (reserved[-1], used[-1])
        assert gen.cache.nbytes() == reserved[-1] or kv_mode != "concat"
    if kv_mode == "paged" and spread:
        static = kv_alloc.by_step("static", per_token, 3, 14, 9, layout, 4)[0]
        assert reserved[-1] < static[-1]


# paged's bytes by step, 96 bytes a token, as the formula gave them before the accounting asked the block table
# (kvbench/core/block_table.py): (batch, width, new_tokens, lengths, shared prefix, block_tokens), reserved, used.
PAGED_GOLDEN = [
    (
        (3, 14, 9, None, 0, 4),
        [4608, 4608, 4608, 5760, 5760, 5760, 5760, 6912, 6912],
        [4032, 4320, 4608, 4896, 5184, 5472, 5760, 6048, 6336],
    ),
    (
        (3, 14, 9, [7, 14, 10], 0, 4),
        [3456, 3456, 3840, 4608, 4608, 4608, 4992, 5760, 5760],
        [2976, 3264, 3552, 3840, 4128, 4416, 4704, 4992, 5280],
    ),
    (
        (3, 14, 9, [7, 14, 10], 6, 4),
        [2688, 2688, 3072, 3840, 3840, 3840, 4224, 4992, 4992],
        [2208, 2496, 2784, 3072, 3360, 3648, 3936, 4224, 4512],
    ),
    (
        (4, 20, 30, [12, 20, 17, 15], 9, 16),
        [9216, 9216, 10752, 10752, 10752]
        + [12288] * 8
        + [13824] * 3
        + [15360] * 2
        + [16896] * 3
        + [18432] * 8
        + [19968],
        [6144 + 384 * i for i in range(30)],
    ),
    ((2, 24, 5, [24, 18], 16, 1), [2496, 2688, 2880, 3072, 3264], [2496, 2688, 2880, 3072, 3264]),
]


@pytest.mark.parametrize("case, reserved, used", PAGED_GOLDEN)
def test_paged_bytes_by_step_are_what_they_were(case, reserved, used):
    batch, width, new, lengths, prefix, block = case
    layout = None if lengths is None else Layout(torch.tensor(lengths), width, prefix)
    assert kv_alloc.by_step("paged", 96, batch, width, new, layout, block) == (reserved, used)
    static = kv_alloc.by_step("static", 96, batch, width, new, layout, block)[0]
    assert static == [batch * (width + new - 1) * 96] * new  # every sequence the longest one's room, from step 0


def test_a_shared_prefix_cell_records_the_prefill_time_it_saved_against_static():
    from kvbench.core import record as kvrecord
    from kvbench.measure.cell import run_cell
    from kvbench.measure.spec import CellSpec

    common = dict(model="tiny", device="cpu", batch=3, prompt_len=24, new_tokens=4, iters=2, warmup=0)
    shared = run_cell(CellSpec(kv_mode="paged", shared_prefix=16, block_tokens=4, **common))
    kvrecord.validate(shared)
    lat = shared["latency"]
    static, paged = lat["prefill_ms_static_same_batch"], lat["prefill_ms_paged_same_batch"]
    assert static["n"] == paged["n"] == 2 and static["min"] > 0 and paged["min"] > 0
    assert lat["prefill_ms_saved_vs_static"] == pytest.approx(static["median"] - paged["median"])
    assert shared["memory"]["kv_bytes_saved_vs_static"] > 0 and shared["check"]["matches_reference"]
    plain = run_cell(CellSpec(kv_mode="paged", block_tokens=4, **common))  # no prefix: nothing saved to time
    assert "prefill_ms_saved_vs_static" not in plain["latency"]


@pytest.mark.parametrize("engine", ["hf", "ct2"])
def test_a_peer_engine_on_a_ragged_batch_records_why_it_is_not_measured(engine):
    from kvbench.core import record as kvrecord
    from kvbench.engines import registry as engines
    from kvbench.measure.cell import run_cell
    from kvbench.measure.spec import CellSpec

    pytest.importorskip({"hf": "transformers", "ct2": "ctranslate2"}[engine])
    for layout in ({"prompt_spread": 0.5}, {"shared_prefix": 4}):
        spec = CellSpec(model="tiny", engine=engine, kv_mode="concat", device="cpu", batch=3, prompt_len=12, **layout)
        rec = run_cell(spec)
        kvrecord.validate(rec)
        why = engines.engine_class(engine).ragged_unsupported
        assert rec["status"] == "unsupported" and rec["error"] == why and "\n" not in why
        assert why.startswith(f"prompt_spread, shared_prefix: engine {engine} is not measured on a ragged batch")
    plain = CellSpec(model="tiny", engine=engine, kv_mode="concat", device="cpu", iters=1, warmup=0)
    assert kv_alloc.peer_ragged_reason(plain) is None  # a rectangular batch is measured
