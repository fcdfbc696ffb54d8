"""Attention shared by both families: the offset causal mask, SDPA equal to explicit math, grouped K/V heads."""

import pytest
import torch

from kvbench.caches.ragged import layout_prompt
from kvbench.core.presets import preset
from kvbench.engines.generate import generate, new_cache
from kvbench.models.attention import CachedAttention, attend, attend_masked, causal_mask, expand_kv
from kvbench.models.family import build_random


def random_prompt(batch: int, length: int, vocab: int = 50257, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


def test_sdpa_and_math_agree(tiny_model):
    prompt = random_prompt(2, 9)
    tiny_model.set_attention("sdpa")
    a = generate(tiny_model, prompt, 8, "static", keep_logits=True)
    tiny_model.set_attention("math")
    b = generate(tiny_model, prompt, 8, "static", keep_logits=True)
    assert torch.equal(a.tokens, b.tokens)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_causal_mask_offsets_queries_to_the_end():
    m = causal_mask(2, 5, torch.device("cpu"))
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


@pytest.mark.parametrize("t_q,past", [(7, 0), (1, 6), (3, 4)])
def test_grouped_kv_heads_equal_copying_them_to_every_query_head(t_q, past):
    """9 query heads over 3 K/V heads (SmolLM2's grouping): head h reads K/V head h // 3, in every path."""
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, 9, t_q, 16, generator=g)
    k, v = (torch.randn(2, 3, past + t_q, 16, generator=g) for _ in range(2))
    wide_k, wide_v = expand_kv(q, k, v)
    assert torch.equal(wide_k[:, 4], k[:, 1])  # query head 4 belongs to K/V head 1
    for impl in ("sdpa", "math"):
        torch.testing.assert_close(attend(q, k, v, past, impl), attend(q, wide_k, wide_v, past, "math"))
    mask = causal_mask(t_q, past + t_q, q.device)
    torch.testing.assert_close(attend_masked(q, k, v, mask, "sdpa"), attend(q, wide_k, wide_v, past, "math"))
    with pytest.raises(ValueError, match="attention"):
        attend(q, k, v, past, "flash")


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_every_family_attends_through_the_one_cached_attention(monkeypatch, name):
    """Each layer of each family, in every kind of forward (a cache, a ragged mask, the static step),
    reaches attention through CachedAttention.attend: a new family adds only its projections."""
    model = build_random(preset(name), "cpu", torch.float32, seed=0)
    calls = []
    one_path = CachedAttention.attend

    def counted(self, q, k, v, ctx):
        calls.append(self.layer_idx)
        return one_path(self, q, k, v, ctx)

    monkeypatch.setattr(CachedAttention, "attend", counted)
    layers = list(range(model.config.n_layer))
    x = random_prompt(2, 6, vocab=model.config.vocab_size)
    with torch.no_grad():
        model(x)
        assert calls == layers
        cache = new_cache(model, "static", 2, 8)
        model(x, cache, 0)
        model.static_step(x[:, :1], torch.tensor([6]), cache)
        assert calls == layers * 3
        ragged = x.clone()
        model(ragged, new_cache(model, "concat", 2, 6), 0, layout=layout_prompt(ragged, 0.5, 0, 0))
        assert calls == layers * 4
    assert all(type(m).attend is counted for m in model.modules() if isinstance(m, CachedAttention))
