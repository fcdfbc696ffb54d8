"""The model and its three decode modes: same tokens, right positions, right masks, right cache."""

import pytest
import torch

from kvbench.attention import causal_mask
from kvbench.generate import generate
from kvbench.kv_cache import ConcatCache, StaticCache, kv_cache_bytes
from kvbench.model import GPT, build_random, preset

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


def test_sdpa_and_math_agree(tiny_model):
    prompt = random_prompt(2, 9)
    tiny_model.set_attention("sdpa")
    a = generate(tiny_model, prompt, 8, "static", keep_logits=True)
    tiny_model.set_attention("math")
    b = generate(tiny_model, prompt, 8, "static", keep_logits=True)
    assert torch.equal(a.tokens, b.tokens)
    for x, y in zip(a.logits, b.logits):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-5)


def test_a_generation_may_end_exactly_at_the_block_size(tiny_model):
    block = tiny_model.config.block_size
    prompt = random_prompt(2, block - 6)
    out = {m: generate(tiny_model, prompt, 6, m).tokens for m in MODES}
    assert torch.equal(out["none"], out["concat"]) and torch.equal(out["none"], out["static"])
    with pytest.raises(ValueError, match="block_size"):
        generate(tiny_model, prompt, 7, "static")


def test_sampling_is_deterministic_for_a_seed_and_mode_independent(tiny_model):
    from kvbench.generate import Sampling

    prompt = random_prompt(1, 4)
    runs = [
        generate(tiny_model, prompt, 10, m, sampling=Sampling(1.0, 50, torch.Generator().manual_seed(3))).tokens
        for m in MODES
    ]
    assert all(torch.equal(runs[0], r) for r in runs[1:])


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_offset_mask_for_several_queries_after_a_past(tiny_model, attention):
    """Chunked prefill (T > 1 new tokens after a cached past) must equal one full forward."""
    tiny_model.set_attention(attention)
    x = random_prompt(2, 12)
    full = tiny_model(x, last_only=False)
    cache = StaticCache(2, 2, 4, 12, 16, torch.float32, "cpu")
    tiny_model(x[:, :5], cache, 0)
    tail = tiny_model(x[:, 5:], cache, 5, last_only=False)  # 7 queries over 12 keys
    torch.testing.assert_close(tail, full[:, 5:], atol=1e-5, rtol=1e-5)


def test_causal_mask_offsets_queries_to_the_end():
    m = causal_mask(2, 5, torch.device("cpu"))
    assert m.tolist() == [[True, True, True, True, False], [True, True, True, True, True]]


def test_position_ids_continue_from_the_cache(tiny_model):
    """Feeding tokens one at a time through a cache gives the full forward's logits at each position."""
    x = random_prompt(1, 10)
    full = tiny_model(x, last_only=False)
    cache = ConcatCache(tiny_model.config.n_layer)
    for t in range(10):
        step = tiny_model(x[:, t : t + 1], cache, t)
        torch.testing.assert_close(step[:, 0], full[:, t], atol=1e-5, rtol=1e-5)
    assert cache.length() == 10


def test_static_cache_is_written_in_place_and_never_reallocated(tiny_model):
    cfg = tiny_model.config
    cache = StaticCache(cfg.n_layer, 2, cfg.kv_heads, 20, cfg.head_dim, torch.float32, "cpu")
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
    cache = ConcatCache(cfg.n_layer)
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


def test_cpu_weight_layout_changes_strides_only(tiny_model):
    from kvbench.model import prepare_for_decoding

    prompt = random_prompt(2, 6)
    before = generate(tiny_model, prompt, 8, "static", keep_logits=True)
    state = {k: v.clone() for k, v in tiny_model.state_dict().items()}
    assert prepare_for_decoding(tiny_model) == "wide-input-major"
    head = tiny_model.lm_head.weight
    assert head is tiny_model.transformer.wte.weight and head.shape == (50257, 64) and head.stride() == (1, 50257)
    assert tiny_model.transformer.h[0].mlp.c_proj.weight.is_contiguous()  # narrowing matrices stay row-major
    assert all(torch.equal(v, tiny_model.state_dict()[k]) for k, v in state.items())
    after = generate(tiny_model, prompt, 8, "static", keep_logits=True)
    assert torch.equal(before.tokens, after.tokens)
    for a, b in zip(before.logits, after.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
