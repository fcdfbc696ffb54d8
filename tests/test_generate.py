"""The one decode loop: every mode gives the same tokens, up to the block size, sampling included."""

import pytest
import torch

from kvbench.engines.generate import generate

MODES = ("none", "concat", "static")


def random_prompt(batch: int, length: int, vocab: int = 50257, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", ["sdpa", "math"])
@pytest.mark.parametrize("batch,prompt_len,new_tokens", [(1, 7, 12), (3, 5, 9), (2, 1, 10), (1, 1, 2)])
def test_all_modes_give_the_same_greedy_tokens(tiny_model, attention, batch, prompt_len, new_tokens):
    tiny_model.set_attention(attention)
    prompt = random_prompt(batch, prompt_len)
    out = {m: generate(tiny_model, prompt, new_tokens, m).tokens for m in MODES}
    assert out["none"].shape == (batch, new_tokens)
    assert torch.equal(out["none"], out["concat"])
    assert torch.equal(out["none"], out["static"])


def test_a_generation_may_end_exactly_at_the_block_size(tiny_model):
    block = tiny_model.config.block_size
    prompt = random_prompt(2, block - 6)
    out = {m: generate(tiny_model, prompt, 6, m).tokens for m in MODES}
    assert torch.equal(out["none"], out["concat"]) and torch.equal(out["none"], out["static"])
    with pytest.raises(ValueError, match="block_size"):
        generate(tiny_model, prompt, 7, "static")


def test_sampling_is_deterministic_for_a_seed_and_mode_independent(tiny_model):
    from kvbench.engines.generate import Sampling

    prompt = random_prompt(1, 4)
    runs = [
        generate(tiny_model, prompt, 10, m, sampling=Sampling(1.0, 50, torch.Generator().manual_seed(3))).tokens
        for m in MODES
    ]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


def test_a_plan_carries_the_cache_settings_and_the_layout(tiny_model):
    from kvbench.caches.ragged import layout_prompt
    from kvbench.engines.generate import GenerationPlan

    prompt = random_prompt(3, 12)
    layout = layout_prompt(prompt, 0.5, 5, seed=0)
    plan = GenerationPlan({"block_tokens": 2}, layout)
    paged = generate(tiny_model, prompt, 4, "paged", plan=plan)
    assert paged.cache.block_tokens == 2 and paged.cache.layout is layout  # the plan's, bound before the prefill
    assert torch.equal(paged.tokens, generate(tiny_model, prompt, 4, "none", layout=layout).tokens)
    with pytest.raises(ValueError, match="not both"):
        generate(tiny_model, prompt, 4, "paged", plan=plan, layout=layout)


def test_the_loop_hands_a_cache_its_inputs_through_the_interface_alone(tiny_model, monkeypatch):
    """A kind that overrides bind and prefill gets them; the loop names no kind."""
    from kvbench.caches.static import StaticCache

    seen = []
    monkeypatch.setattr(StaticCache, "bind", lambda self, width, layout: seen.append(("bind", width, layout)))
    monkeypatch.setattr(StaticCache, "prefill", lambda self, model, ids, layout: seen.append(("prefill", ids.shape)))
    tokens = generate(tiny_model, random_prompt(2, 5), 3, "static").tokens
    assert seen == [("bind", 5, None), ("prefill", (2, 5))]  # prefill said None: the model ran as usual
    assert torch.equal(tokens, generate(tiny_model, random_prompt(2, 5), 3, "none").tokens)
