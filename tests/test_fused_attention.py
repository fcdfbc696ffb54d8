"""caches/fused.py: attention over the codes as stored equals SDPA over the dequantized cache (the same algorithm),
eager and compiled; a decode step takes it (and says so), under the CPU memory pass too; without a compiler the
cache decodes the reference way, said in one line."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvbench.caches import fused
from kvbench.caches.base import CacheShape
from kvbench.caches.scaled import Fp8StaticCache, Int8StaticCache
from kvbench.core.presets import GPTConfig
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.engines.kvbench import KvbenchEngine
from kvbench.kernels import decode_attention
from kvbench.measure import memory
from kvbench.models.gpt2 import GPT

KINDS = {"static-int8": Int8StaticCache, "static-fp8": Fp8StaticCache}
needs_kernel = pytest.mark.skipif(not decode_attention.available(), reason="the kernel is not built for this machine")


@pytest.fixture
def kernel_off(monkeypatch):
    """Inductor's fused loop, as on a machine where kvbench's C++ decode-attention kernel is not built."""
    monkeypatch.setitem(decode_attention._ready, "yes", False)


def filled(cls, B=2, Hkv=2, T=11, D=16):
    gen = torch.Generator().manual_seed(1)
    cache = cls(CacheShape(1, B, Hkv, T, D, torch.float32, "cpu"))
    k, v = (torch.randn(B, Hkv, T, D, generator=gen) * 3 for _ in range(2))
    cache.update(0, k, v, 0)
    return cache


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("heads", [2, 6])  # plain multi-head, and three query heads per K/V head
@pytest.mark.parametrize("masked", [False, True])
def test_attention_over_the_codes_equals_sdpa_over_the_dequantized_cache(kind, heads, masked):
    cache = filled(KINDS[kind])
    q = torch.randn(2, heads, 1, 16, generator=torch.Generator().manual_seed(2))
    k, v = cache.dequantized(0, 11)
    mask = (torch.arange(11) < 7).unsqueeze(0) if masked else None
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=heads != 2)
    got = fused.scaled_attention(q, cache.k[0], cache.k_scale[0], cache.v[0], cache.v_scale[0], mask)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-4)
    if not masked:
        parts = (cache.k[0], cache.k_scale[0], cache.v[0], cache.v_scale[0])
        torch.testing.assert_close(fused.run(fused.scaled_attention, q, *parts), want, atol=2e-5, rtol=1e-4)
        y, path = fused.scaled_decode(q, *parts)
        assert path == (fused.KERNEL if decode_attention.available() else fused.FUSED)
        torch.testing.assert_close(y, want, atol=2e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = GPTConfig(n_layer=2, n_head=4, n_embd=64, block_size=64, vocab_size=128, n_kv_head=2)
    return GPT(cfg).eval()


@pytest.mark.slow  # two kernels and two static-shape steps compiled
@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("path", [fused.FUSED, pytest.param(fused.KERNEL, marks=needs_kernel)])
def test_a_decode_takes_the_fused_path_with_the_reference_paths_tokens_and_price(model, kind, path, monkeypatch):
    if path == fused.FUSED:
        monkeypatch.setitem(decode_attention._ready, "yes", False)
    prompt = torch.randint(0, 128, (2, 12), generator=torch.Generator().manual_seed(3))
    got = generate(model, prompt, 8, kind, keep_logits=True)
    assert got.cache.attention_path == path
    monkeypatch.setitem(decode_attention._ready, "yes", False)
    monkeypatch.setattr(fused, "_failed", ["no compiler (this test)"])
    ref = generate(model, prompt, 8, kind, keep_logits=True)
    assert ref.cache.attention_path == fused.DEQUANTIZE
    assert torch.equal(got.tokens, ref.tokens)
    for a, b in zip(got.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    if path == fused.KERNEL:
        return  # the compiled static step calling the kernel: tests/test_fast_decode.py (static's step takes it too)
    monkeypatch.setitem(decode_attention._ready, "yes", path == fused.KERNEL)
    compiled = KvbenchEngine(model).compiled_runner(kind, prompt, 8)  # the static-shape step (kernel or inductor's)
    monkeypatch.setattr(fused, "_failed", [])
    step = compiled(prompt, 8, kind, keep_logits=True)
    assert step.cache.attention_path == path and torch.equal(step.tokens, ref.tokens)
    for a, b in zip(step.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("path", [fused.FUSED, pytest.param(fused.KERNEL, marks=needs_kernel)])
def test_the_memory_pass_decodes_the_fused_way(model, path, monkeypatch):
    """The CPU memory pass is a dispatch mode dynamo cannot trace: inductor's kernel runs outside it, not the
    fallback; kvbench's C++ kernel is an op the pass sees like any other."""
    monkeypatch.setitem(decode_attention._ready, "yes", path == fused.KERNEL)
    prompt = torch.randint(0, 128, (1, 8))
    caches = []

    def run(p, n, mode, on_token=None):
        g = generate(model, p, n, mode, on_token=on_token)
        caches.append(g.cache)
        return g

    peaks = memory.cpu_peaks(run, model, prompt, 4, "static-int8")
    assert peaks.decode and caches[0].attention_path == path and not fused._failed


def test_without_a_compiler_it_says_so_once_and_decodes_by_dequantizing(monkeypatch, capsys, kernel_off):
    def broken(*args):
        raise RuntimeError("InductorError: no C++ compiler\nmore detail")

    monkeypatch.setattr(fused, "_kernels", {fused.scaled_attention: broken})
    monkeypatch.setattr(fused, "_failed", [])
    cache = filled(Int8StaticCache, T=12)
    q = torch.randn(2, 2, 1, 16)
    k_new = torch.randn(2, 2, 1, 16)
    y = cache.attend_decode(0, q, k_new, k_new, 11)
    assert cache.attention_path == fused.DEQUANTIZE and y.shape == (2, 2, 1, 16)
    cache.attend_decode(0, q, k_new, k_new, 11)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "does not compile here (InductorError: no C++ compiler)" in err


@pytest.mark.slow  # the int4 kernel compiled for each shape class
@pytest.mark.parametrize("prompt_len,new", [(20, 30), (48, 10), (5, 40)])  # a prefill mid-group, whole, short
@pytest.mark.parametrize("path", [fused.FUSED, pytest.param(fused.KERNEL, marks=needs_kernel)])
def test_int4_decodes_over_its_packed_codes_with_the_reference_paths_tokens(prompt_len, new, path, monkeypatch):
    monkeypatch.setitem(decode_attention._ready, "yes", path == fused.KERNEL)
    torch.manual_seed(0)  # head size 32: the C++ kernel unpacks 32 channels at a time
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=64, vocab_size=128, n_kv_head=1)).eval()
    prompt = torch.randint(0, 128, (2, prompt_len), generator=torch.Generator().manual_seed(4))
    # Groups of 8 for inductor's kernel; the C++ kernel's value groups are multiples of 32 (keys then grouped over
    # 32 positions, values one group of the whole head).
    plan = GenerationPlan(kv_options={"kv_group_size": 8 if path == fused.FUSED else 32})
    got = generate(model, prompt, new, "static-int4", keep_logits=True, plan=plan)
    assert got.cache.attention_path == path
    monkeypatch.setitem(decode_attention._ready, "yes", False)
    monkeypatch.setattr(fused, "_failed", ["no compiler (this test)"])
    ref = generate(model, prompt, new, "static-int4", keep_logits=True, plan=plan)
    assert ref.cache.attention_path == fused.DEQUANTIZE and torch.equal(got.tokens, ref.tokens)
    for a, b in zip(got.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=5e-4, rtol=1e-3)  # 30 steps of float sums in two orders


@pytest.mark.parametrize("heads", [(4, 4), (6, 2)])
def test_one_query_attention_equals_sdpa_with_the_static_steps_mask(heads):
    H, Hkv = heads
    g = torch.Generator().manual_seed(H)
    q, k, v = (
        torch.randn(2, H, 1, 16, generator=g),
        torch.randn(2, Hkv, 24, 16, generator=g),
        torch.randn(2, Hkv, 24, 16, generator=g),
    )
    mask = torch.arange(24).unsqueeze(0) <= 17  # positions after 17 not written yet
    want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=H != Hkv)
    torch.testing.assert_close(fused.one_query_attention(q, k, v, mask), want, atol=1e-5, rtol=1e-5)


def test_the_static_cache_attends_the_fused_way_only_on_a_cpu_step():
    from kvbench.caches.static import StaticCache

    cache = StaticCache(CacheShape(1, 1, 2, 8, 4, torch.float32, torch.device("cpu")))
    q, k, v = torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4), torch.randn(1, 2, 1, 4)
    pos = torch.tensor([3])
    y = cache.attend_at(0, q, k, v, pos, torch.arange(8).unsqueeze(0) <= 3)
    assert y.shape == (1, 2, 1, 4) and torch.equal(cache.k[0, :, :, 3], k[:, :, 0])  # written, then attended
    two = cache.attend_at(0, torch.randn(1, 2, 2, 4), k, v, pos, torch.ones(2, 8, dtype=torch.bool))
    assert two is None  # more than one query: SDPA's
