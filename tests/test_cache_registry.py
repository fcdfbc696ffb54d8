"""The registry of cache kinds: one per kv_mode the record may name, each built from a CacheShape and its own
settings; and every kind's reserved and used bytes after a prefill and two steps."""

import inspect
import json
from pathlib import Path

import pytest
import torch

import kvbench
from kvbench.caches.base import CacheShape, KVCache
from kvbench.caches.concat import ConcatCache
from kvbench.caches.int4 import Int4StaticCache
from kvbench.caches.registry import KINDS, make_cache
from kvbench.caches.scaled import Fp8StaticCache, Int8StaticCache
from kvbench.caches.sliding import SlidingCache
from kvbench.caches.static import StaticCache
from kvbench.core.presets import KV_MODE_OPTIONS, KV_MODES, kv_cache_bytes

SHAPE = CacheShape(n_layer=2, batch=2, n_kv_head=3, max_len=16, head_dim=8, dtype=torch.float32, device="cpu")
LBH = 2 * 2 * 3  # (layer, sequence, K/V head) triples


def schema_kv_modes() -> list[str]:
    schema = json.loads((Path(kvbench.__file__).parent / "schemas" / "record.schema.json").read_text())
    return schema["properties"]["cell"]["properties"]["kv_mode"]["enum"]


def test_the_kinds_are_the_records_kv_modes():
    assert list(KINDS) == schema_kv_modes() == list(KV_MODES)


def test_each_kinds_settings_are_the_options_a_cell_passes_it():
    # inv_freq is the model's (rotary frequencies), not a cell option
    declared = {m: tuple(s for s in c.settings if s != "inv_freq") for m, c in KINDS.items() if c is not None}
    assert {m: s for m, s in declared.items() if s} == KV_MODE_OPTIONS


@pytest.mark.parametrize("kv_mode", [m for m in KV_MODES if KINDS[m] is not None])
def test_each_kind_takes_a_shape_and_exactly_the_settings_it_names(kv_mode):
    cls = KINDS[kv_mode]
    params = list(inspect.signature(cls).parameters)
    assert params[0] == "shape" and tuple(params[1:]) == cls.settings
    assert isinstance(make_cache(kv_mode, SHAPE), cls)


def test_a_kind_takes_its_settings_and_ignores_the_others():
    cache = make_cache("sliding", SHAPE, window=5, sinks=1, kv_group_size=4, block_tokens=2)
    assert isinstance(cache, SlidingCache) and (cache.window, cache.sinks, cache.capacity) == (5, 1, 6)
    assert make_cache("static-int4", SHAPE, kv_group_size=4, window=5).G == 4
    assert make_cache("none", SHAPE, window=5) is None


def test_an_unknown_kind_or_setting_is_refused_in_one_line():
    with pytest.raises(ValueError, match=r"^kv_mode: 'int3' is not one of none, concat, static, .*, paged$"):
        make_cache("int3", SHAPE)
    with pytest.raises(TypeError, match="^make_cache: unknown cache settings windw$"):
        make_cache("sliding", SHAPE, windw=5)


def stream(cache: KVCache, steps: int = 2, prompt: int = 5) -> KVCache:
    """A prefill of `prompt` positions, then `steps` one-token steps, through every layer."""
    gen = torch.Generator().manual_seed(0)
    for start, end in [(0, prompt)] + [(p, p + 1) for p in range(prompt, prompt + steps)]:
        for layer in range(SHAPE.n_layer):
            k, v = (torch.randn(2, 3, end - start, 8, generator=gen) for _ in range(2))
            cache.update(layer, k, v, start)
    return cache


def int4_used(written: int, G: int) -> int:
    """Per (layer, sequence, head), D = 8 fp32: full key groups as codes (4 B) + scale, zero (2 x 8 fp16), the
    rest in the residual (32 B); every value's codes (4 B) + a scale and zero per group of 4 channels (2 x 2 fp16)."""
    done = written // G
    return LBH * (done * G * 4 + done * 32 + (written - done * G) * 32 + written * (4 + 2 * 2 * 2))


# (kind, settings, reserved, used) after 7 positions: 5 prefilled, 2 stepped. fp32: 32 B per K or V vector.
CASES = [
    ("concat", ConcatCache, {}, LBH * 7 * 2 * 32, LBH * 7 * 2 * 32),
    ("static", StaticCache, {}, LBH * 16 * 2 * 32, LBH * 7 * 2 * 32),
    ("static-int8", Int8StaticCache, {}, LBH * 16 * 2 * (8 + 4), LBH * 7 * 2 * (8 + 4)),  # codes + fp32 scale
    ("static-fp8", Fp8StaticCache, {}, LBH * 16 * 2 * (8 + 4), LBH * 7 * 2 * (8 + 4)),
    ("static-int4", Int4StaticCache, {"kv_group_size": 4}, None, int4_used(7, 4)),
    ("sliding", SlidingCache, {"window": 6, "sinks": 2}, LBH * 8 * 2 * 32, LBH * 7 * 2 * 32),  # 8 slots
]


@pytest.mark.parametrize("kv_mode,cls,settings,reserved,used", CASES, ids=[c[0] for c in CASES])
def test_bytes_reserved_and_used_after_a_prefill_and_two_steps(kv_mode, cls, settings, reserved, used):
    cache = stream(make_cache(kv_mode, SHAPE, **settings))
    assert type(cache) is cls
    if reserved is None:  # int4's layout: the formula the record's bytes come from
        reserved = kv_cache_bytes(2, 2, 3, 16, 8, 4, "static-int4", kv_group_size=4)
    assert (cache.bytes_reserved(), cache.bytes_used()) == (reserved, used)
    assert cache.bytes_reserved() == cache.nbytes()


def test_int4_uses_less_once_a_group_is_quantized():
    """The 8th position fills the second key group: its keys leave the fp32 residual for 4-bit codes."""
    cache = stream(make_cache("static-int4", SHAPE, kv_group_size=4), steps=3)
    assert cache.bytes_used() == int4_used(8, 4) == LBH * (2 * 4 * 4 + 2 * 32 + 8 * 12) < int4_used(7, 4)


def test_a_sliding_cache_past_its_window_uses_every_slot_and_no_more():
    cache = stream(make_cache("sliding", SHAPE, window=3, sinks=1), steps=2, prompt=9)  # 11 positions, 4 slots
    assert cache.bytes_used() == cache.bytes_reserved() == LBH * 4 * 2 * 32


def test_a_reset_static_cache_uses_nothing():
    cache = stream(make_cache("static", SHAPE))
    cache.reset()
    assert (cache.bytes_reserved(), cache.bytes_used()) == (LBH * 16 * 2 * 32, 0)
