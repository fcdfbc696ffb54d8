"""The 4-bit KIVI-style cache: codes packed two per byte, bytes equal to the formula, error within half a step."""

import pytest
import torch

from kvbench.caches.base import CacheShape
from kvbench.caches.int4 import Int4StaticCache, pack, quantize, unpack
from kvbench.caches.registry import make_cache
from kvbench.core.presets import kv_bytes_per_token, kv_cache_bytes
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.measure.spec import CellSpec, UsageError


def random_prompt(batch: int, length: int, vocab: int = 50257, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_pack_keeps_two_codes_per_byte():
    codes = torch.randint(0, 16, (3, 5, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    packed = pack(codes)
    assert packed.shape == (3, 5, 4) and packed.dtype == torch.uint8
    assert torch.equal(unpack(packed), codes)


def test_quantize_errs_by_at_most_half_a_step():
    x = torch.randn(4, 64, 32, generator=torch.Generator().manual_seed(0)) * 3
    for dim in (-1, -2):
        q, scale, zero = quantize(x, dim)
        back = q.float() * scale.float() + zero.float()
        step = scale.float()
        assert int(q.max()) <= 15
        assert bool(((back - x).abs() <= step / 2 + 1e-3 * step + 1e-6).all())
        assert float((back - x).abs().max()) > 0  # it really is 4 bits


@pytest.mark.parametrize("prompt_len,new", [(5, 4), (11, 30), (40, 9)])
def test_bytes_counted_equal_the_formula(prompt_len, new):
    """Short caches (one partial group), several full groups with a tail, a prefill spanning groups."""
    L, B, H, D, G = 2, 3, 2, 16, 8
    cache = Int4StaticCache(CacheShape(L, B, H, prompt_len + new, D, torch.float32, "cpu"), kv_group_size=G)
    k = torch.randn(B, H, prompt_len, D)
    cache.update(0, k, k, 0)
    expected = kv_cache_bytes(L, B, H, prompt_len + new, D, 4, "static-int4", kv_group_size=G)
    assert cache.nbytes() == expected
    fp32 = kv_cache_bytes(L, B, H, prompt_len + new, D, 4)
    assert expected < fp32


def test_the_cache_returns_every_position_within_a_step_and_keys_exact_until_a_group_fills():
    L, B, H, D, G = 1, 2, 2, 16, 8
    cache = Int4StaticCache(CacheShape(L, B, H, 20, D, torch.float32, "cpu"), kv_group_size=G)
    xs = torch.randn(B, H, 20, D, generator=torch.Generator().manual_seed(3))
    k, v = cache.update(0, xs[:, :, :5], xs[:, :, :5], 0)
    assert torch.equal(k, xs[:, :, :5])  # a partial group waits in full precision
    for t in range(5, 20):
        k, v = cache.update(0, xs[:, :, t : t + 1], xs[:, :, t : t + 1], t)
    assert k.shape == v.shape == (B, H, 20, D)
    assert torch.equal(k[:, :, 16:], xs[:, :, 16:])  # the tail group (20 % 8 positions)
    spread = xs.amax() - xs.amin()
    assert float((k - xs).abs().max()) <= float(spread) / 15 and float((k[:, :, :16] - xs[:, :, :16]).abs().max()) > 0
    assert float((v - xs).abs().max()) <= float(spread) / 15


def test_generation_bytes_match_the_formula_and_cost_about_a_sixth_of_fp32(tiny_model):
    cfg = tiny_model.config
    plan = GenerationPlan({"kv_group_size": 16})
    gen = generate(tiny_model, random_prompt(2, 10), 30, "static-int4", keep_logits=True, plan=plan)
    ref = generate(tiny_model, random_prompt(2, 10), 30, "static", keep_logits=True)
    assert gen.cache.nbytes() == kv_cache_bytes(
        cfg.n_layer, 2, cfg.kv_heads, 39, cfg.head_dim, 4, "static-int4", kv_group_size=16
    )
    worst = max(float((a - b).abs().max()) for a, b in zip(ref.logits, gen.logits))
    assert 0 < worst < 0.05 * max(float(x.abs().max()) for x in ref.logits)
    per_token = kv_bytes_per_token(cfg.n_layer, cfg.kv_heads, cfg.head_dim, 4, "static-int4", 16)
    assert per_token / kv_bytes_per_token(cfg.n_layer, cfg.kv_heads, cfg.head_dim, 4, "static") == pytest.approx(
        (16 + 2 * 2 * (16 / 16 + 1)) / 128
    )


def test_make_cache_builds_it_with_the_group_size():
    cache = make_cache("static-int4", CacheShape(1, 1, 1, 64, 16, torch.float32, "cpu"), kv_group_size=8)
    assert isinstance(cache, Int4StaticCache) and cache.G == 8 and cache.kq.dtype == torch.uint8


@pytest.mark.parametrize(
    "size,message",
    [
        (1, "^kv_group_size: 1 must be an integer >= 2$"),
        (12, "^kv_group_size: 12 must divide head_dim 16 or be at least it$"),
    ],
)
def test_a_bad_group_size_is_one_line(size, message):
    with pytest.raises(UsageError, match=message):
        CellSpec(model="tiny", kv_mode="static-int4", kv_group_size=size, device="cpu").check()


@pytest.mark.parametrize("chunks", [[20], [5, 15], [8, 8, 4], [3] + [1] * 17, [11, 1, 1, 7]])
def test_keys_are_the_same_codes_however_the_positions_arrive(chunks):
    """A prefill quantizes its complete groups in one operation; one token at a time fills the residual first:
    both give the same codes, scales and returned keys (the tail past the last group that can fill stays exact)."""
    L, B, H, D, G, T = 1, 2, 2, 16, 8, 20
    xs = torch.randn(B, H, T, D, generator=torch.Generator().manual_seed(5)) * 2
    one = Int4StaticCache(CacheShape(L, B, H, T, D, torch.float32, "cpu"), kv_group_size=G)
    for t in range(T):
        want, _ = one.update(0, xs[:, :, t : t + 1], xs[:, :, t : t + 1], t)
    cache, start = Int4StaticCache(CacheShape(L, B, H, T, D, torch.float32, "cpu"), kv_group_size=G), 0
    for n in chunks:
        got, _ = cache.update(0, xs[:, :, start : start + n], xs[:, :, start : start + n], start)
        start += n
    for a, b in ((one.kq, cache.kq), (one.k_scale, cache.k_scale), (one.k_zero, cache.k_zero)):
        assert torch.equal(a, b)
    assert torch.equal(got, want) and torch.equal(got[:, :, 16:], xs[:, :, 16:])
