"""StreamingLLM's cache: static's tokens while the window holds everything, bounded memory after, and the
sinks at their position within the cache on rotary models."""

import dataclasses

import pytest
import torch

from kvbench.caches import fused
from kvbench.caches.base import CacheShape
from kvbench.caches.sliding import SlidingCache, kv_note
from kvbench.core.presets import kv_cache_bytes, preset
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.kernels import decode_attention
from kvbench.measure.spec import CellSpec, UsageError
from kvbench.models.family import build_random
from kvbench.models.llama import Rotary

needs_kernel = pytest.mark.skipif(not decode_attention.available(), reason="the kernel is not built for this machine")


def random_prompt(batch: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def model(request):
    return build_random(preset(request.param), "cpu", torch.float32, seed=0, for_decoding=True)


def test_a_window_that_holds_everything_gives_static_exactly(model):
    prompt = random_prompt(2, 9, model.config.vocab_size)
    plan = GenerationPlan({"window": 40, "sinks": 4})
    sliding = generate(model, prompt, 30, "sliding", keep_logits=True, plan=plan)
    static = generate(model, prompt, 30, "static", keep_logits=True)
    assert torch.equal(sliding.tokens, static.tokens)
    assert all(torch.equal(a, b) for a, b in zip(sliding.logits, static.logits))


def test_memory_stays_at_sinks_plus_window_however_long_the_stream(model):
    cfg = model.config
    prompt = random_prompt(1, 12, cfg.vocab_size)  # longer than the cache: evicted right after the prefill
    plan = GenerationPlan({"window": 6, "sinks": 2})
    held = []
    for new in (8, 40):
        gen = generate(model, prompt, new, "sliding", keep_logits=True, plan=plan)
        held.append(gen.cache.nbytes())
        assert gen.cache.k.size(3) == 8
    static = generate(model, prompt, 40, "static", keep_logits=True)
    assert (
        held[0]
        == held[1]
        == kv_cache_bytes(cfg.n_layer, 1, cfg.kv_heads, 51, cfg.head_dim, 4, "sliding", window=6, sinks=2)
    )
    assert held[1] * 6 < static.cache.nbytes()
    worst = max(float((a - b).abs().max()) for a, b in zip(static.logits, gen.logits))
    assert worst > 0  # it does forget


def test_sinks_sit_just_before_the_window_on_rotary_models():
    """Scores from the cache equal StreamingLLM's: raw keys rotated at their position within the cache."""
    cfg = preset("tiny-llama")
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, cfg.head_dim, 2).float() / cfg.head_dim))
    S, W, n = 2, 5, 23  # positions 0..22 streamed through a 7-slot cache
    gen = torch.Generator().manual_seed(0)
    raw = torch.randn(1, 1, n, cfg.head_dim, generator=gen)
    q_raw = torch.randn(1, 1, 1, cfg.head_dim, generator=gen)

    def rope(x, positions):  # x (B, H, T, D) at these positions, through the model's own Rotary
        return Rotary(inv_freq, torch.tensor(positions), x.dtype).apply(x.transpose(1, 2)).transpose(1, 2)

    cache = SlidingCache(
        CacheShape(1, 1, 1, n, cfg.head_dim, torch.float32, "cpu"), window=W, sinks=S, inv_freq=inv_freq
    )
    for p in range(n):
        k, _ = cache.update(0, rope(raw[:, :, p : p + 1], [p]), raw[:, :, p : p + 1], p)
    ours = (rope(q_raw, [n - 1]) @ k.transpose(-2, -1)).flatten().sort().values
    kept = list(range(S)) + list(range(n - W, n))
    streaming = rope(raw[:, :, kept], list(range(S + W)))
    theirs = (rope(q_raw, [S + W - 1]) @ streaming.transpose(-2, -1)).flatten().sort().values
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_learned_positions_are_said_in_the_record():
    assert "absolute" in kv_note("sliding", "gpt2") and "re-rotated" in kv_note("sliding", "llama")
    assert kv_note("static", "gpt2") is None


@pytest.mark.parametrize(
    "field,value,message",
    [("window", 0, "^window: 0 must be an integer >= 1$"), ("sinks", -1, "^sinks: -1 must be an integer >= 0$")],
)
def test_a_bad_window_or_sinks_is_one_line(field, value, message):
    with pytest.raises(UsageError, match=message):
        CellSpec(model="tiny", kv_mode="sliding", device="cpu", **{field: value}).check()


@needs_kernel
@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_the_kernels_decode_gives_the_sdpa_paths_tokens_and_logits(name, monkeypatch):
    """Past the window (sinks rotated in place on the rotary model): kvbench's kernel over the held slots equals
    SDPA over them."""
    cfg = preset(name)
    if name == "tiny-llama":
        cfg = dataclasses.replace(cfg, n_head=4, n_kv_head=2)  # head size 16
    model = build_random(cfg, "cpu", torch.float32, seed=0, for_decoding=True)
    prompt = random_prompt(2, 12, cfg.vocab_size)
    plan = GenerationPlan({"window": 6, "sinks": 2})
    got = generate(model, prompt, 20, "sliding", keep_logits=True, plan=plan)
    assert got.cache.attention_path == fused.KERNEL
    monkeypatch.setitem(decode_attention._ready, "yes", False)
    ref = generate(model, prompt, 20, "sliding", keep_logits=True, plan=plan)
    assert ref.cache.attention_path == "sdpa" and torch.equal(got.tokens, ref.tokens)
    for a, b in zip(got.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow  # a static-shape step compiled (the rotary family: its sinks rotated in the graph too)
@pytest.mark.parametrize("name", ["tiny-llama"])
def test_the_compiled_static_shape_step_gives_the_eager_tokens_and_logits(name):
    """--compile: the ring of sinks + window slots keeps its shape, so sliding takes the compiled static-shape step
    (slot and sink rotation computed from the position tensor); a prompt past the window, a stream that wraps."""
    from kvbench.engines.kvbench import CompiledStaticDecoder

    cfg = preset(name)
    if name == "tiny-llama":
        cfg = dataclasses.replace(cfg, n_head=4, n_kv_head=2)  # head size 16
    model = build_random(cfg, "cpu", torch.float32, seed=0, for_decoding=True)
    prompt = random_prompt(2, 10, cfg.vocab_size)
    options = {"window": 6, "sinks": 2}
    eager = generate(model, prompt, 16, "sliding", keep_logits=True, plan=GenerationPlan(options))
    step = CompiledStaticDecoder(model, 2, 10 + 16 - 1, "sliding", options)
    for _ in range(2):  # a second generation: the cache (and the sinks' rotation) reset in place
        got = step(prompt, 16, "sliding", keep_logits=True)
        assert torch.equal(got.tokens, eager.tokens)
        for a, b in zip(got.logits, eager.logits):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kernel", [False, pytest.param(True, marks=needs_kernel)], ids=["torch", "kernel"])
def test_the_static_shape_step_attends_as_the_growing_step_does(kernel, monkeypatch):
    """write_at/attend_at (positions as tensors, every slot with a mask) against update + SDPA, step by step through
    the ring's wrap, sinks rotated on a rotary model."""
    monkeypatch.setitem(decode_attention._ready, "yes", kernel)
    D, n = 16, 30
    inv_freq = 1.0 / (10000.0 ** (torch.arange(0, D, 2).float() / D))
    shape = CacheShape(1, 2, 2, n, D, torch.float32, "cpu")
    a, b = (SlidingCache(shape, window=5, sinks=2, inv_freq=inv_freq) for _ in range(2))
    g = torch.Generator().manual_seed(0)
    prompt_k, prompt_v = torch.randn(2, 2, 9, D, generator=g), torch.randn(2, 2, 9, D, generator=g)
    a.update(0, prompt_k, prompt_v, 0)
    b.update(0, prompt_k, prompt_v, 0)
    for p in range(9, n):
        q, k, v = (torch.randn(2, t, 1, D, generator=g) for t in (4, 2, 2))
        want = torch.nn.functional.scaled_dot_product_attention(q, *a.update(0, k, v, p), enable_gqa=True)
        got = b.attend_at(0, q, k, v, torch.tensor([p]), None)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert b.attention_path == (fused.KERNEL if kernel else "sdpa")
