"""GPT-2: positions continue from the cache, offset masks, grouped K/V heads, seeded init."""

import pytest
import torch

from kvbench.caches.base import CacheShape
from kvbench.caches.concat import ConcatCache
from kvbench.caches.static import StaticCache
from kvbench.engines.generate import generate
from kvbench.models.gpt2 import GPT, build_random, preset

MODES = ("none", "concat", "static")


def random_prompt(batch: int, length: int, vocab: int = 50257, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_offset_mask_for_several_queries_after_a_past(tiny_model, attention):
    """Chunked prefill (T > 1 new tokens after a cached past) must equal one full forward."""
    tiny_model.set_attention(attention)
    x = random_prompt(2, 12)
    full = tiny_model(x, last_only=False)
    cache = StaticCache(CacheShape(2, 2, 4, 12, 16, torch.float32, "cpu"))
    tiny_model(x[:, :5], cache, 0)
    tail = tiny_model(x[:, 5:], cache, 5, last_only=False)  # 7 queries over 12 keys
    torch.testing.assert_close(tail, full[:, 5:], atol=1e-5, rtol=1e-5)


def test_position_ids_continue_from_the_cache(tiny_model):
    """Feeding tokens one at a time through a cache gives the full forward's logits at each position."""
    x = random_prompt(1, 10)
    full = tiny_model(x, last_only=False)
    cache = ConcatCache(CacheShape(tiny_model.config.n_layer, 1, 4, 10, 16, torch.float32, "cpu"))
    for t in range(10):
        step = tiny_model(x[:, t : t + 1], cache, t)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.length() == 10


def test_grouped_query_attention_shrinks_the_cache_and_keeps_tokens_equal():
    cfg = preset("tiny", n_kv_head=1)
    model = build_random(cfg, "cpu", torch.float32, seed=0)
    prompt = random_prompt(2, 6)
    out = {m: generate(model, prompt, 8, m) for m in MODES}
    assert torch.equal(out["none"].tokens, out["static"].tokens)
    assert torch.equal(out["none"].tokens, out["concat"].tokens)
    assert out["static"].cache.k.size(2) == 1
    with pytest.raises(ValueError, match="n_kv_head"):
        preset("tiny", n_kv_head=3)


def test_random_init_is_seeded_and_tied(tiny_model):
    again = build_random(preset("tiny"), "cpu", torch.float32, seed=0)
    other = build_random(preset("tiny"), "cpu", torch.float32, seed=1)
    for (n, a), (_, b) in zip(tiny_model.named_parameters(), again.named_parameters()):
        assert torch.equal(a, b), n
    assert not torch.equal(tiny_model.transformer.h[0].attn.c_attn.weight, other.transformer.h[0].attn.c_attn.weight)
    assert tiny_model.lm_head.weight is tiny_model.transformer.wte.weight
    assert tiny_model.transformer.ln_f.weight.eq(1).all()
    assert 0.015 < tiny_model.transformer.h[0].mlp.c_fc.weight.std() < 0.025


def test_random_build_in_bf16_lands_in_bf16():
    model = build_random(preset("tiny"), "cpu", torch.bfloat16, seed=0)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert isinstance(model, GPT)
