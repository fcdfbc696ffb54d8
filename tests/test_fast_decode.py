"""Compiled decoding (`--compile`): the static-shape step gives the eager tokens and never recompiles."""

import pytest
import torch

from kvbench.caches import fused
from kvbench.caches.base import CacheShape
from kvbench.caches.static import StaticCache
from kvbench.engines.generate import generate
from kvbench.engines.kvbench import CompiledStaticDecoder
from kvbench.kernels import decode_attention


def random_prompt(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 50257, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_static_shape_step_equals_the_growing_step(tiny_model, attention):
    """The step a compiler sees (whole buffer, mask, tensor position) gives the sliced step's logits, eagerly."""
    tiny_model.set_attention(attention)
    cfg = tiny_model.config
    x = random_prompt(2, 12)
    full = tiny_model(x, last_only=False)
    cache = StaticCache(CacheShape(cfg.n_layer, 2, cfg.kv_heads, 12, cfg.head_dim, torch.float32, "cpu"))
    tiny_model(x[:, :5], cache, 0)
    for t in range(5, 12):
        step = tiny_model.static_step(x[:, t : t + 1], torch.tensor([t]), cache)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_compiled_static_decoder_matches_eager_and_compiles_the_step_once(tiny_model):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    prompt = random_prompt(2, 7)
    ref = generate(tiny_model, prompt, 12, "none", keep_logits=True)
    decoder = CompiledStaticDecoder(tiny_model, batch=2, max_len=7 + 12 - 1)
    ptr = decoder.cache.k.data_ptr()
    for _ in range(3):  # each generation starts from the reset cache, same buffers
        gen = decoder(prompt, 12, keep_logits=True)
        assert torch.equal(gen.tokens, ref.tokens)
        for a, b in zip(gen.logits, ref.logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert decoder.cache.k.data_ptr() == ptr
    if decode_attention.available():  # the step's attention: kvbench's kernel as an extern call in the graph
        assert decoder.cache.attention_path == fused.KERNEL
    shorter = decoder(prompt, 5)  # fewer new tokens (the cell's token check): the same graph
    assert torch.equal(shorter.tokens, ref.tokens[:, :5])
    # one graph for the step, whatever the position or length: 38 decode steps, no recompilation
    assert counters["stats"]["unique_graphs"] == 1
    with pytest.raises(ValueError, match="built for batch 2"):
        decoder(random_prompt(3, 7), 12)


@pytest.mark.slow
def test_hf_compiled_static_gives_our_tokens(tiny_model):
    from kvbench.engines import registry as engines

    prompt = random_prompt(1, 6)
    ref = generate(tiny_model, prompt, 8, "none").tokens
    run = engines.build("hf", tiny_model).compiled_runner("static", prompt, 8)
    assert torch.equal(run(prompt, 8, "static").tokens, ref)
    assert torch.equal(run(prompt, 8, "static").tokens, ref)  # the reset cache gives the same again
