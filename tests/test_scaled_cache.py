"""int8 and fp8 as one class: codes, scales and dequantized K,V exactly those of a plain reference quantizer."""

import pytest
import torch

from kvbench.caches.base import CacheShape
from kvbench.caches.scaled import E4M3_MAX, Fp8StaticCache, Int8StaticCache, ScaledStaticCache


def reference_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax per vector onto 127, rounded and clamped: the int8 cache's quantizer as it was first written."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-8) / 127.0
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


def reference_fp8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax per vector onto e4m3's largest value, cast to e4m3 (which rounds)."""
    x = x.float()
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-12) / 448.0
    return (x / scale).clamp(-448.0, 448.0).to(torch.float8_e4m3fn), scale


def bits(t: torch.Tensor) -> torch.Tensor:
    """The raw bytes, so that equal means bit-identical (NaN and -0.0 included)."""
    return t.contiguous().view(torch.uint8)


@pytest.mark.parametrize(
    "cls,storage,reference",
    [(Int8StaticCache, torch.int8, reference_int8), (Fp8StaticCache, torch.float8_e4m3fn, reference_fp8)],
)
def test_a_prefill_and_two_steps_store_and_return_the_reference_quantization(cls, storage, reference):
    L, B, H, T, D = 2, 2, 3, 9, 16
    gen = torch.Generator().manual_seed(0)
    xs = torch.randn(L, 2, B, H, T, D, generator=gen) * torch.logspace(-3, 2, D)  # a wide range per vector
    xs[:, :, 0, 0, 1] = 0.0  # an all-zero vector: the scale's floor
    cache = cls(CacheShape(L, B, H, T, D, torch.float32, "cpu"))
    assert isinstance(cache, ScaledStaticCache) and cache.k.dtype == storage
    for start, end in ((0, 5), (5, 6), (6, 7)):  # a prefill, then two one-token steps
        for layer in range(L):
            k_new, v_new = xs[layer, 0, :, :, start:end], xs[layer, 1, :, :, start:end]
            k_all, v_all = cache.update(layer, k_new, v_new, start)
            for got, x in ((k_all, xs[layer, 0, :, :, :end]), (v_all, xs[layer, 1, :, :, :end])):
                q, s = reference(x)
                assert torch.equal(bits(got), bits(q.float() * s))
    for layer in range(L):
        for codes, scales, x in ((cache.k, cache.k_scale, xs[layer, 0]), (cache.v, cache.v_scale, xs[layer, 1])):
            q, s = reference(x[:, :, :7])
            assert torch.equal(bits(codes[layer, :, :, :7]), bits(q))
            assert torch.equal(bits(scales[layer, :, :, :7]), bits(s))
            assert not codes[layer, :, :, 7:].float().any()  # the positions not written yet


def test_the_quantizers_use_their_whole_range():
    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(1))
    cache = Int8StaticCache(CacheShape(1, 1, 1, 4, 64, torch.float32, "cpu"))
    q, _ = cache.quantize(x)
    assert int(q.abs().amax()) == 127
    cache = Fp8StaticCache(CacheShape(1, 1, 1, 4, 64, torch.float32, "cpu"))
    q, _ = cache.quantize(x)
    assert float(q.float().abs().amax()) == E4M3_MAX


def test_a_step_past_the_end_is_refused():
    cache = Int8StaticCache(CacheShape(1, 1, 1, 4, 8, torch.float32, "cpu"))
    x = torch.zeros(1, 1, 5, 8)
    with pytest.raises(ValueError, match="^static cache holds 4 positions, step needs 5$"):
        cache.update(0, x, x, 0)
