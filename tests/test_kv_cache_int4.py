"""The 4-bit KIVI-style cache: codes packed two per byte, bytes equal to the formula, error within half a step."""

import pytest
import torch

from kvbench.caches import fused
from kvbench.caches.base import CacheShape
from kvbench.caches.int4 import Int4StaticCache, pack, quantize, unpack
from kvbench.caches.registry import make_cache
from kvbench.core.presets import kv_bytes_per_token, kv_cache_bytes
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.kernels import decode_attention, int4_store
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


needs_store = pytest.mark.skipif(not int4_store.available(), reason="kvbench's int4 store kernel is not built here")


def step_caches(T: int, D: int, G: int, prompt: int):
    """Two caches holding the same prompt, and the K,V of the one-token steps after it."""
    shape = CacheShape(1, 2, 2, T, D, torch.float32, "cpu")
    a, b = (Int4StaticCache(shape, kv_group_size=G) for _ in range(2))
    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(2, 2, prompt, D, generator=g) * 2, torch.randn(2, 2, prompt, D, generator=g)
    a.update(0, k, v, 0)
    b.update(0, k, v, 0)
    steps = [(torch.randn(2, 4, 1, D, generator=g),) + tuple(torch.randn(2, 2, 1, D, generator=g) for _ in "kv")
             for _ in range(prompt, T)]  # fmt: skip
    return a, b, steps


@pytest.mark.parametrize("kernel", [False, pytest.param(True, marks=needs_store)], ids=["torch", "kernel"])
@pytest.mark.parametrize("prompt", [3, 8, 13])
def test_the_static_shape_step_stores_the_same_codes_as_the_growing_step(prompt, kernel):
    """write_at (the position a tensor; torch ops quantizing the open group into its slot every step, or the C++
    store quantizing it once complete) against update, step by step through two group fills and the tail past the
    last group that fits (T = 21, G = 8): the same codes, scales and zero points of every complete group and every
    value, bit for bit, the same residual, the same keys and values read."""
    T, G = 21, 8
    a, b, steps = step_caches(T, 16, G, prompt)
    b.store_kernel = kernel
    for p, (_, k, v) in enumerate(steps, prompt):
        want_k, want_v = a.update(0, k, v, p)
        got_k, got_v = b.write_at(0, k, v, torch.tensor([p]))
        assert torch.equal(got_k[:, :, : p + 1], want_k) and torch.equal(got_v[:, :, : p + 1], want_v), p
        done = (p + 1) // G * G  # the open group's slot holds codes no read sees until it fills
        for x, y in ((a.kq[..., :done, :], b.kq[..., :done, :]), (a.vq, b.vq), (a.v_scale, b.v_scale)):
            assert torch.equal(x, y), p
        assert torch.equal(a.k_scale[:, :, :, : done // G], b.k_scale[:, :, :, : done // G]), p
    assert torch.equal(a.k_res, b.k_res) and torch.equal(a.k_zero, b.k_zero)


@pytest.mark.skipif(not decode_attention.available(), reason="kvbench's decode-attention kernel is not built here")
@pytest.mark.parametrize("prompt", [5, 32, 40])
def test_the_kernels_static_shape_step_attends_as_the_eager_step(prompt):
    """attend_at (the kernel over the whole buffers, the position as data) equals attend_decode step by step:
    before the first group fills, across fills, and in the tail that never fills (T = 75, G = 32, head size 32)."""
    a, b, steps = step_caches(75, 32, 32, prompt)
    for p, (q, k, v) in enumerate(steps, prompt):
        want = a.attend_decode(0, q, k, v, p)
        got = b.attend_at(0, q, k, v, torch.tensor([p]), None)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert a.attention_path == b.attention_path == fused.KERNEL


@pytest.mark.slow  # a compiled step
def test_the_compiled_step_gives_the_eager_tokens_and_resets_in_place():
    from dataclasses import replace

    from kvbench.core.presets import preset
    from kvbench.engines.kvbench import CompiledStaticDecoder
    from kvbench.models.family import build_random

    model = build_random(replace(preset("tiny"), n_embd=128, block_size=128), "cpu", torch.float32, seed=0,
                         for_decoding=True)  # fmt: skip
    prompt = random_prompt(2, 40)
    eager = generate(model, prompt, 30, "static-int4", keep_logits=True)
    step = CompiledStaticDecoder(model, 2, 40 + 30 - 1, "static-int4")
    for _ in range(2):
        got = step(prompt, 30, "static-int4", keep_logits=True)
        assert torch.equal(got.tokens, eager.tokens)
        for x, y in zip(got.logits, eager.logits):
            torch.testing.assert_close(x, y, atol=2e-3, rtol=1e-3)
    if decode_attention.available():
        assert step.cache.attention_path == fused.KERNEL
