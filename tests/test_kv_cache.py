"""The caches: written in place or grown by one position, their bytes equal to the formula, int8 within tolerance."""

import pytest
import torch

from kvbench.caches.base import CacheShape
from kvbench.caches.concat import ConcatCache
from kvbench.caches.static import StaticCache
from kvbench.core.presets import kv_cache_bytes
from kvbench.engines.generate import generate


def random_prompt(batch: int, length: int, vocab: int = 50257, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_static_cache_is_written_in_place_and_never_reallocated(tiny_model):
    cfg = tiny_model.config
    cache = StaticCache(CacheShape(cfg.n_layer, 2, cfg.kv_heads, 20, cfg.head_dim, torch.float32, "cpu"))
    ptrs = (cache.k.data_ptr(), cache.v.data_ptr())
    x = random_prompt(2, 20)
    tiny_model(x[:, :8], cache, 0)
    for t in range(8, 20):
        tiny_model(x[:, t : t + 1], cache, t)
        assert (cache.k.data_ptr(), cache.v.data_ptr()) == ptrs
    assert cache.k.shape == (cfg.n_layer, 2, cfg.kv_heads, 20, cfg.head_dim)
    assert cache.k[:, :, :, 19].abs().sum() > 0  # the last position was written
    k, _ = cache.update(
        0, torch.zeros(2, cfg.kv_heads, 0, cfg.head_dim), torch.zeros(2, cfg.kv_heads, 0, cfg.head_dim), 20
    )
    assert k.untyped_storage().data_ptr() == ptrs[0]  # returned K is a view of the buffer


def test_concat_cache_grows_one_position_per_step(tiny_model):
    cfg = tiny_model.config
    cache = ConcatCache(CacheShape(cfg.n_layer, 3, cfg.kv_heads, 9, cfg.head_dim, torch.float32, "cpu"))
    x = random_prompt(3, 9)
    tiny_model(x[:, :4], cache, 0)
    assert cache.k[0].shape == (3, cfg.kv_heads, 4, cfg.head_dim)
    for t in range(4, 9):
        tiny_model(x[:, t : t + 1], cache, t)
        assert all(k.size(2) == t + 1 for k in cache.k)


@pytest.mark.parametrize("mode", ["concat", "static"])
def test_measured_kv_bytes_equal_the_formula(tiny_model, mode):
    cfg = tiny_model.config
    batch, prompt_len, new = 3, 11, 7
    gen = generate(tiny_model, random_prompt(batch, prompt_len), new, mode)
    expected = kv_cache_bytes(cfg.n_layer, batch, cfg.kv_heads, prompt_len + new - 1, cfg.head_dim, 4)
    assert gen.cache.nbytes() == expected


def test_int8_cache_keeps_tokens_within_a_stated_logit_tolerance(tiny_model):
    """Tolerance: every step's logits within 1% of the largest |logit| of the uncached model."""
    prompt = random_prompt(2, 20)
    ref = generate(tiny_model, prompt, 20, "none", keep_logits=True)
    q = generate(tiny_model, prompt, 20, "static-int8", keep_logits=True)
    scale = max(float(x.abs().max()) for x in ref.logits)
    worst = max(float((a - b).abs().max()) for a, b in zip(ref.logits, q.logits))
    assert 0 < worst <= 0.01 * scale  # nonzero: it really is quantised
    assert torch.equal(ref.tokens, q.tokens)
    assert q.cache.k.dtype == torch.int8


def test_int8_cache_bytes_equal_the_formula_and_are_about_a_quarter_of_fp32(tiny_model):
    cfg = tiny_model.config
    gen = generate(tiny_model, random_prompt(2, 10), 5, "static-int8")
    expected = kv_cache_bytes(cfg.n_layer, 2, cfg.kv_heads, 14, cfg.head_dim, 4, "static-int8")
    assert gen.cache.nbytes() == expected == 2 * cfg.n_layer * 2 * cfg.kv_heads * 14 * (cfg.head_dim + 4)
    fp32 = kv_cache_bytes(cfg.n_layer, 2, cfg.kv_heads, 14, cfg.head_dim, 4)
    assert 0.25 < expected / fp32 < 0.35
