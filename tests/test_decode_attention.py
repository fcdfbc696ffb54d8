"""kvbench's decode-attention kernel: the same output as the torch reference of each cache layout (fp32, int8,
fp8, int4, paged) on odd shapes, grouped heads, masks and chunk splits, eager and inside a compiled graph."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kvbench.caches import fused
from kvbench.caches.int4 import pack, quantize
from kvbench.caches.scaled import quantize_fp8, quantize_int8
from kvbench.kernels import decode_attention as kernel

needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the kernel is not built for this machine")
SHAPES = [(1, 1, 1, 5, 64), (2, 12, 12, 37, 64), (3, 9, 3, 300, 64), (1, 4, 2, 1000, 128), (2, 8, 1, 129, 16)]


def reference(q, k, v, mask=None):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=k.size(1) != q.size(1))


def qkv(B, H, Hkv, T, D, seed=0):
    g = torch.Generator().manual_seed(seed + B * 1000 + T)
    return (
        torch.randn(B, H, 1, D, generator=g),
        torch.randn(B, Hkv, T, D, generator=g),
        torch.randn(B, Hkv, T, D, generator=g),
    )


@needs_kernel
@pytest.mark.parametrize("B,H,Hkv,T,D", SHAPES)
def test_float32_equals_sdpa(B, H, Hkv, T, D):
    q, k, v = qkv(B, H, Hkv, T, D)
    torch.testing.assert_close(kernel.dense(q, k, v), reference(q, k, v), atol=2e-5, rtol=1e-4)


@needs_kernel
def test_strided_cache_views_and_a_mask():
    """A layer of a preallocated buffer (positions beyond the written ones) with the static step's mask."""
    buf_k, buf_v = torch.randn(2, 3, 4, 50, 64), torch.randn(2, 3, 4, 50, 64)
    q = torch.randn(3, 8, 1, 64).transpose(1, 2).reshape(3, 8, 1, 64)  # as a projection's transpose leaves it
    mask = (torch.arange(50) <= 30).unsqueeze(0)
    got = kernel.dense(q, buf_k[1], buf_v[1], mask=mask)
    torch.testing.assert_close(got, reference(q, buf_k[1], buf_v[1], mask), atol=2e-5, rtol=1e-4)
    sliced = kernel.dense(q, buf_k[1, :, :, :31], buf_v[1, :, :, :31])  # the eager step's view of the prefix
    torch.testing.assert_close(sliced, got, atol=2e-6, rtol=1e-5)


@needs_kernel
@pytest.mark.parametrize("quantizer", [quantize_int8, quantize_fp8], ids=["int8", "fp8"])
@pytest.mark.parametrize("B,H,Hkv,T,D", SHAPES[:4])
def test_8bit_codes_equal_the_fused_reference(quantizer, B, H, Hkv, T, D):
    q, k, v = qkv(B, H, Hkv, T, D, seed=1)
    (kc, ks), (vc, vs) = quantizer(k), quantizer(v)
    want = fused.scaled_attention(q, kc, ks, vc, vs)
    torch.testing.assert_close(kernel.dense(q, kc, vc, ks, vs), want, atol=2e-5, rtol=1e-4)


@needs_kernel
def test_every_fp8_code_converts_exactly():
    """All 254 finite e4m3 values (subnormals included): a mask that keeps one position returns its value row."""
    codes = torch.arange(256, dtype=torch.uint8)
    codes[codes.bitwise_and(0x7F) == 0x7F] = 0  # the two NaN codes
    v = codes.view(torch.float8_e4m3fn).reshape(1, 1, 16, 16)
    ones = torch.ones(1, 1, 16, 1)
    for t in range(16):
        mask = (torch.arange(16) == t).unsqueeze(0)
        got = kernel.dense(torch.zeros(1, 1, 1, 16), v, v, ones, ones * 0.5, mask)
        assert torch.equal(got[0, 0, 0], v[0, 0, t].float() * 0.5)


def int4_cache(B, Hkv, T, D, G, seed=2):
    """caches/int4.py's layout for T positions: complete key groups packed, the rest in the residual."""
    g = torch.Generator().manual_seed(seed)
    k, v = torch.randn(B, Hkv, T, D, generator=g), torch.randn(B, Hkv, T, D, generator=g)
    n, vg = T // G, min(G, D)
    kq, ks, kz = quantize(k[:, :, : n * G].reshape(B, Hkv, n, G, D), dim=-2)
    res = torch.zeros(B, Hkv, G, D)
    res[:, :, : T - n * G] = k[:, :, n * G :]
    vq, vs, vz = quantize(v.reshape(B, Hkv, T, D // vg, vg), dim=-1)
    return pack(kq.reshape(B, Hkv, n * G, D)), ks, kz, res, T - n * G, pack(vq.reshape(B, Hkv, T, D)), vs, vz


@needs_kernel
@pytest.mark.parametrize("B,H,Hkv,T,D,G", [(1, 1, 1, 40, 64, 32), (2, 12, 12, 100, 64, 32), (3, 9, 3, 640, 64, 32),
                                           (1, 4, 2, 300, 128, 64), (2, 2, 2, 64, 64, 32)])  # fmt: skip
def test_int4_equals_the_fused_reference(B, H, Hkv, T, D, G):
    q = torch.randn(B, H, 1, D, generator=torch.Generator().manual_seed(T))
    kq, ks, kz, res, held, vq, vs, vz = int4_cache(B, Hkv, T, D, G)
    bias = torch.where(torch.arange(G) < held, 0.0, float("-inf"))
    want = fused.int4_attention(q, kq, ks, kz, res, bias, vq, vs, vz)
    got = kernel.int4(q, kq, ks, kz, res, held, vq, vs, vz)
    torch.testing.assert_close(got, want, atol=3e-5, rtol=1e-4)


@needs_kernel
@pytest.mark.parametrize("lengths", [[37, 37], [5, 64], [130, 17, 1]])
def test_paged_equals_each_sequence_gathered(lengths):
    """Blocks handed out in any order, a block shared by two sequences (a common prefix), ragged lengths."""
    Hkv, H, D, bt = 3, 6, 64, 16
    blocks = -(-max(lengths) // bt)
    pool_k, pool_v = torch.randn(Hkv, 64 * bt, D), torch.randn(Hkv, 64 * bt, D)
    table = torch.randperm(64)[: len(lengths) * blocks].reshape(len(lengths), blocks)
    table[:, 0] = table[0, 0]  # every sequence's first block is one shared block
    q = torch.randn(len(lengths), H, 1, D)
    got = kernel.paged(q, pool_k, pool_v, table, torch.tensor(lengths), bt)
    for b, n in enumerate(lengths):
        slots = (table[b].repeat_interleave(bt) * bt + torch.arange(bt).repeat(blocks))[:n]
        want = reference(q[b : b + 1], pool_k[None, :, slots], pool_v[None, :, slots])
        torch.testing.assert_close(got[b : b + 1], want, atol=2e-5, rtol=1e-4)


@needs_kernel
def test_a_compiled_graph_calls_the_kernel():
    q, k, v = qkv(2, 4, 2, 50, 64)
    mask = (torch.arange(50) < 40).unsqueeze(0)
    step = torch.compile(lambda q, k, v: kernel.dense(q * 1.0, k, v, mask=mask) + 1, fullgraph=True)
    torch.testing.assert_close(step(q, k, v), reference(q, k, v, mask) + 1, atol=2e-5, rtol=1e-4)


@needs_kernel
def test_bad_inputs_are_refused_by_the_op():
    q, k, v = qkv(1, 3, 2, 10, 64)
    with pytest.raises(RuntimeError, match="multiple"):
        kernel.dense(q, k, v)  # 3 query heads over 2 K/V heads
    q, k, v = qkv(1, 2, 2, 10, 24)
    with pytest.raises(RuntimeError, match="multiple of 16"):
        kernel.dense(q, k, v)
    q, k, v = qkv(1, 2, 2, 10, 64)
    with pytest.raises(RuntimeError, match="scales"):
        kernel.dense(q, k.to(torch.int8), v.to(torch.int8))
    with pytest.raises(RuntimeError, match="outside the pool"):
        kernel.paged(q, k[0], v[0], torch.tensor([[5]]), torch.tensor([4]), 4)


def test_fits():
    q = torch.randn(2, 4, 1, 64)
    assert kernel.fits(q, torch.randn(2, 2, 9, 64))
    assert not kernel.fits(q.double(), torch.randn(2, 2, 9, 64))
    assert not kernel.fits(torch.randn(2, 4, 3, 64), torch.randn(2, 2, 9, 64))  # a prefill
    assert not kernel.fits(q, torch.randn(2, 3, 9, 64))  # 4 query heads over 3 K/V heads
    assert not kernel.fits(torch.randn(2, 4, 1, 24), torch.randn(2, 2, 9, 24))
