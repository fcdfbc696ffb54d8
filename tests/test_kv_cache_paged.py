"""The paged cache: static's tokens at every block size on both families, blocks taken only as
sequences grow, and a damaged block table an error rather than a wrong answer."""

import pytest
import torch

from kvbench.caches.base import CacheShape
from kvbench.caches.paged import PagedCache
from kvbench.caches.ragged import layout_prompt
from kvbench.core.block_table import BlockTableError, blocks_needed
from kvbench.core.presets import preset
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.kernels import decode_attention
from kvbench.models.family import build_random


def random_prompt(batch: int, length: int, vocab: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


needs_kernel = pytest.mark.skipif(not decode_attention.available(), reason="the kernel is not built for this machine")


def head_size(model) -> int:
    return model.config.n_embd // model.config.n_head


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def model(request):
    return build_random(preset(request.param), "cpu", torch.float32, seed=0, for_decoding=True)


@pytest.fixture(scope="module")
def static_tokens(model):
    """static's tokens for the block-size tests' prompt, generated once per model."""
    return generate(model, random_prompt(3, 13, model.config.vocab_size), 10, "static", plan=GenerationPlan()).tokens


@pytest.mark.parametrize("block_tokens", [1, 3, 16, 64])
def test_paged_tokens_equal_static_at_every_block_size(model, static_tokens, block_tokens):
    prompt = random_prompt(3, 13, model.config.vocab_size)
    paged = generate(model, prompt, 10, "paged", plan=GenerationPlan({"block_tokens": block_tokens}))
    assert torch.equal(paged.tokens, static_tokens)
    # 13 + 10 - 1 = 22 cached positions per sequence: blocks rounded up, never a static-sized reservation
    assert paged.cache.table.n_blocks == 3 * -(-22 // block_tokens)


def test_blocks_are_taken_as_sequences_grow(model):
    cfg = model.config
    cache = PagedCache(CacheShape(cfg.n_layer, 2, cfg.kv_heads, 20, cfg.head_dim, torch.float32, "cpu"), block_tokens=4)
    prompt = random_prompt(2, 6, cfg.vocab_size)
    model(prompt, cache, 0)
    assert [len(t) for t in cache.table.blocks] == [2, 2]  # 6 tokens: 2 blocks each
    model(prompt[:, :1], cache, 6)
    model(prompt[:, :1], cache, 7)
    assert [len(t) for t in cache.table.blocks] == [2, 2]  # 8 tokens still fit
    model(prompt[:, :1], cache, 8)
    assert [len(t) for t in cache.table.blocks] == [3, 3]
    assert cache.bytes_reserved() == 6 * 4 * cache.token_bytes()
    assert cache.bytes_used() == 2 * 9 * cache.token_bytes()


@pytest.mark.parametrize("damage", ["outside", "duplicate"])
def test_a_damaged_block_table_is_an_error(model, damage):
    cfg = model.config
    cache = PagedCache(CacheShape(cfg.n_layer, 2, cfg.kv_heads, 20, cfg.head_dim, torch.float32, "cpu"), block_tokens=4)
    prompt = random_prompt(2, 6, cfg.vocab_size)
    model(prompt, cache, 0)
    cache.table.blocks[1][0] = 999 if damage == "outside" else cache.table.blocks[0][0]
    with pytest.raises(BlockTableError, match="block"):
        model(prompt[:, :1], cache, 6)


def test_a_shared_prefix_is_stored_once_and_tokens_stay_exact(model):
    prompt = random_prompt(4, 20, model.config.vocab_size)
    layout = layout_prompt(prompt, 0.4, 9, seed=0)
    plan = GenerationPlan({"block_tokens": 4}, layout)  # static ignores paged's setting
    static = generate(model, prompt, 6, "static", plan=plan)
    paged = generate(model, prompt, 6, "paged", plan=plan)
    assert torch.equal(paged.tokens, static.tokens)
    cache = paged.cache
    shared = cache.table.blocks[0][:2]  # 9 shared tokens: two full blocks of 4, the ninth in each sequence's own
    assert all(t[:2] == shared for t in cache.table.blocks) and all(cache.table.refs[b] == 4 for b in shared)
    final = [int(n) + 5 for n in layout.lengths]
    assert cache.table.n_blocks == blocks_needed(final, 4, 9) == 2 + sum(-(-(n - 8) // 4) for n in final)


def test_the_record_says_why_not_flex_attentions_paged_attention_and_the_reason_holds():
    import warnings

    from kvbench.caches.paged import ATTENTION_PATH, NOT_FLEX, PAGED_FLEX, attention_path

    assert attention_path() == f"{ATTENTION_PATH}; {NOT_FLEX}"
    paged_attention = pytest.importorskip(PAGED_FLEX).PagedAttention
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    # One sequence of 20 positions in a pool of 3 blocks of 16: eager flex_attention reads it right, unfused.
    pool = paged_attention(3, 16, 1, device="cpu")
    pool.reserve(torch.tensor(0), torch.tensor(20))
    gen = torch.Generator().manual_seed(0)
    k, v, q = (torch.randn(1, 2, n, 8, generator=gen) for n in (20, 20, 1))
    k_pool, v_pool = torch.zeros(1, 2, 48, 8), torch.zeros(1, 2, 48, 8)
    pool.assign(torch.tensor([0]), torch.arange(20).unsqueeze(0), k, v, k_pool, v_pool)
    logical = create_block_mask(lambda b, h, qi, kv: kv < 20, 1, 1, 1, 32, device="cpu", BLOCK_SIZE=16)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        out = flex_attention(q, k_pool, v_pool, block_mask=pool.convert_logical_block_mask(logical))
    assert any("unfused implementation" in str(w.message) for w in caught)
    torch.testing.assert_close(out, torch.nn.functional.scaled_dot_product_attention(q, k, v))


@pytest.mark.parametrize("block_tokens", [1, 4, 16])
@pytest.mark.parametrize("kernel", [False, pytest.param(True, marks=needs_kernel)], ids=["runs", "kernel"])
def test_a_rectangular_decode_reads_its_runs_in_place_with_the_gathers_logits(model, block_tokens, kernel, monkeypatch):
    """Each sequence's blocks read in place (kvbench's kernel through the block table, or runs of consecutive blocks
    merged by log-sum-exp): the same tokens and logits as gathering every block into a dense copy (both families:
    tiny-llama's grouped K/V heads)."""
    from kvbench.caches import paged

    if kernel and head_size(model) % 16:
        pytest.skip("head size 8: the kernel takes multiples of 16")
    monkeypatch.setitem(decode_attention._ready, "yes", kernel)
    prompt = random_prompt(3, 13, model.config.vocab_size)
    plan = GenerationPlan(kv_options={"block_tokens": block_tokens})
    runs = generate(model, prompt, 10, "paged", keep_logits=True, plan=plan)
    assert runs.cache.attention_path.startswith(paged.KERNEL_PATH if kernel else paged.RUNS_PATH)
    monkeypatch.setitem(decode_attention._ready, "yes", False)
    assert any(len(runs.cache.table.runs(b, 22)) > 1 for b in range(3))  # the decode's blocks sit apart
    monkeypatch.setattr(paged, "FLASH", None)  # no flash kernel: the gather
    gathered = generate(model, prompt, 10, "paged", keep_logits=True, plan=plan)
    assert gathered.cache.attention_path.startswith(paged.ATTENTION_PATH)
    assert torch.equal(runs.tokens, gathered.tokens)
    for a, b in zip(runs.logits, gathered.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@needs_kernel
def test_a_ragged_batch_with_a_shared_prefix_reads_its_blocks_through_the_kernel_with_the_gathers_logits(
    model, monkeypatch
):
    from kvbench.caches import paged

    if head_size(model) % 16:
        pytest.skip("head size 8: the kernel takes multiples of 16")
    prompt = random_prompt(4, 20, model.config.vocab_size)
    plan = GenerationPlan({"block_tokens": 4}, layout_prompt(prompt, 0.4, 9, seed=0))
    got = generate(model, prompt, 6, "paged", keep_logits=True, plan=plan)
    assert got.cache.attention_path.startswith(paged.KERNEL_PATH)
    monkeypatch.setitem(decode_attention._ready, "yes", False)  # the ragged batch's reference: the gather
    ref = generate(model, prompt, 6, "paged", keep_logits=True, plan=plan)
    assert ref.cache.attention_path.startswith(paged.ATTENTION_PATH) and torch.equal(got.tokens, ref.tokens)
    for a, b in zip(got.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_runs_line_up_across_sequences_only_where_they_do():
    from kvbench.caches.paged import across, lined_up

    assert lined_up([[(0, 40), (160, 3)], [(40, 40), (176, 3)], [(80, 40), (192, 3)]]) == [(0, 40, 40), (160, 16, 3)]
    assert lined_up([[(0, 40)], [(40, 39)]]) is None  # lengths differ
    assert lined_up([[(0, 40)], [(40, 40), (90, 1)]]) is None  # as many runs
    assert lined_up([[(0, 8)], [(8, 8)], [(24, 8)]]) is None  # not evenly spaced
    pool = torch.arange(2 * 100 * 3.0).reshape(2, 100, 3)  # (heads, slots, D)
    view = across(pool, 10, 20, 4, 3)
    assert view.shape == (3, 2, 4, 3) and torch.equal(view[2, 1], pool[1, 50:54])


@pytest.mark.parametrize("kernel", [False, pytest.param(True, marks=needs_kernel)], ids=["gather", "kernel"])
def test_the_static_shape_step_attends_as_the_eager_step(kernel, monkeypatch):
    """before_step (blocks, the table check and the step's tensors, outside a graph) then attend_at, or write_at and
    SDPA over every position masked, against attend_decode step by step across block boundaries (blocks of 4)."""
    monkeypatch.setitem(decode_attention._ready, "yes", kernel)
    D, T, P = 16, 23, 6
    shape = CacheShape(1, 3, 2, T, D, torch.float32, "cpu")
    a, b = PagedCache(shape, block_tokens=4), PagedCache(shape, block_tokens=4)
    g = torch.Generator().manual_seed(0)
    k, v = torch.randn(3, 2, P, D, generator=g), torch.randn(3, 2, P, D, generator=g)
    a.update(0, k, v, 0)
    b.update(0, k, v, 0)
    for p in range(P, T):
        q, k, v = (torch.randn(3, h, 1, D, generator=g) for h in (4, 2, 2))
        want = a.attend_decode(0, q, k, v, p)
        if want is None:  # no kernel: the eager step's runs or gather
            want = torch.nn.functional.scaled_dot_product_attention(q, *a.update(0, k, v, p), enable_gqa=True)
        b.before_step(p)
        mask = torch.arange(T).unsqueeze(0) <= p
        got = b.attend_at(0, q, k, v, torch.tensor([p]), mask)
        if got is None:
            k_all, v_all = b.write_at(0, k, v, torch.tensor([p]))
            got = torch.nn.functional.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask, enable_gqa=True)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        assert b.step_lengths.tolist() == [p + 1] * 3
    assert b.table.blocks == a.table.blocks and torch.equal(b.pool_k, a.pool_k)
    assert b.attention_path.startswith("paged: each sequence's blocks" if kernel else "paged: blocks gathered")


@pytest.mark.slow  # a compiled step
def test_a_compiled_rectangular_batch_takes_the_static_shape_step_with_none_tokens():
    from dataclasses import replace

    from kvbench.engines.kvbench import CompiledStaticDecoder, KvbenchEngine

    model = build_random(replace(preset("tiny"), block_size=128), "cpu", torch.float32, seed=0, for_decoding=True)
    prompt = random_prompt(3, 37, model.config.vocab_size)
    plan = GenerationPlan({"block_tokens": 4})
    ref = generate(model, prompt, 30, "none", keep_logits=True)
    run = KvbenchEngine(model, plan).compiled_runner("paged", prompt, 30)
    assert isinstance(run, CompiledStaticDecoder)
    for _ in range(2):  # the second generation from the reset pool and a fresh block table
        got = run(prompt, 30, "paged", keep_logits=True)
        assert torch.equal(got.tokens, ref.tokens)
        for x, y in zip(got.logits, ref.logits):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)
    assert got.cache.bytes_used() == 3 * (37 + 29) * got.cache.token_bytes()
