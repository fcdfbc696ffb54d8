"""One-query attention that reads a compressed cache as it is stored, so a decode step reads the compressed bytes.

Dequantizing the whole cache and handing it to SDPA reads the codes, writes a full-precision copy and reads that
copy again: more bytes than the full-precision cache it replaces. Here the dequantize sits inside the attention
arithmetic instead. With one scale per (token, head), a key's scale factors out of its dot product and a value's
into its probability:

    score_t = (q . code_k[t]) * scale_k[t] / sqrt(D)        out = sum_t (p_t * scale_v[t]) * code_v[t]

written as elementwise products and sums, which inductor fuses into one loop over the int8 (or fp8) codes: the
code is converted to float in a register, never stored (measured on the 2-core CPU, gpt2 shapes B4 H12 T1000:
12 layers' attention 6.9 ms over int8 codes against 14.7 ms for SDPA over fp32, 2026-12-07). The compiled kernel
is made once per process with dynamic shapes (every cache length, batch and head count uses it) and is what both
the eager decode step and the compiled static-shape step run; written in plain torch ops, the same code compiles
for CUDA. Where inductor cannot compile here (no C++ compiler), the cache says so in one line and decodes by
dequantizing (its `attention_path` names the path that ran).
"""

from __future__ import annotations

import math
import sys

import torch
from torch.utils._python_dispatch import _disable_current_modes, _get_current_dispatch_mode

from kvbench.kernels import decode_attention

FUSED, DEQUANTIZE = "fused-dequantize", "dequantize+sdpa"  # the two paths a compressed cache's decode can take
KERNEL = "kernel: one-query attention over the cache as stored (C++)"  # kvbench/kernels/decode_attention.cpp


def use_kernel(q: torch.Tensor, keys: torch.Tensor, head_multiple: int = 16) -> bool:
    """kvbench's decode-attention kernel takes this step: a CPU, one float32 query per head, a head size it
    handles, and the kernel built for this machine (kvbench/kernels/decode_attention.py)."""
    return decode_attention.fits(q, keys, head_multiple) and decode_attention.available()


def scaled_decode(q, k_codes, k_scale, v_codes, v_scale) -> tuple[torch.Tensor | None, str]:
    """A decode step over per-token-scaled codes, eager: the C++ kernel where it runs, else the compiled
    scaled_attention; (None, DEQUANTIZE) where neither does. Returns the output and the path taken."""
    if use_kernel(q, k_codes):
        return decode_attention.dense(q, k_codes, v_codes, k_scale, v_scale), KERNEL
    y = run(scaled_attention, q, k_codes, k_scale, v_codes, v_scale)
    return y, (FUSED if y is not None else DEQUANTIZE)


def dense_decode(q, k, v, mask=None) -> torch.Tensor:
    """Full-precision keys and values (static, sliding) through the C++ kernel; the caller has asked `use_kernel`
    before storing anything."""
    return decode_attention.dense(q, k, v, mask=mask)


def int4_decode(q, kq, k_scale, k_zero, k_res, held: int, vq, v_scale, v_zero) -> tuple[torch.Tensor | None, str]:
    """A decode step over caches/int4.py's packed layout: the C++ kernel where it runs (head size and value groups
    in multiples of 32), else the compiled int4_attention; (None, DEQUANTIZE) where neither does."""
    if int4_fits(q, kq, v_scale):
        return decode_attention.int4(q, kq, k_scale, k_zero, k_res, held, vq, v_scale, v_zero), KERNEL
    if not k_scale.size(2):  # no complete group yet: every key is exact, the caller's SDPA
        return None, DEQUANTIZE
    bias = torch.where(torch.arange(k_res.size(2), device=q.device) < held, 0.0, float("-inf"))
    y = run(int4_attention, q, kq, k_scale, k_zero, k_res, bias, vq, v_scale, v_zero)
    return y, (FUSED if y is not None else DEQUANTIZE)


def int4_fits(q, kq, v_scale) -> bool:
    """The C++ kernel takes this int4 step: head size and value groups in multiples of 32."""
    return use_kernel(q, kq, head_multiple=32) and (q.size(-1) // v_scale.size(-2)) % 32 == 0


def int4_at(q, kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, pos) -> torch.Tensor:
    """The static-shape int4 step through the C++ kernel (the caller has asked `int4_fits`)."""
    return decode_attention.int4_at(q, kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, pos)


def scaled_at(q, k_codes, k_scale, v_codes, v_scale, mask) -> tuple[torch.Tensor, str]:
    """The static-shape step's attention over the whole buffer (inside a compiled step): the C++ kernel as one
    extern call where it runs, else scaled_attention for inductor to fuse."""
    if use_kernel(q, k_codes):
        return decode_attention.dense(q, k_codes, v_codes, k_scale, v_scale, mask), KERNEL
    return scaled_attention(q, k_codes, k_scale, v_codes, v_scale, mask), FUSED


def grouped_scores(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """q (B, H, 1, D) against k (B, Hkv, T, D) as floats: (B, Hkv, H/Hkv, T), each K/V head read once for its
    whole group of query heads (grouped-query attention without copying K out to every head)."""
    B, H, _, D = q.shape
    Hkv = k.size(1)
    qg = q.reshape(B, Hkv, H // Hkv, 1, D).float()
    return (qg * k.unsqueeze(2).float()).sum(-1)


def scaled_attention(
    q: torch.Tensor,
    k_codes: torch.Tensor,
    k_scale: torch.Tensor,
    v_codes: torch.Tensor,
    v_scale: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Attention of one query per head over per-token-scaled codes: q (B, H, 1, D); codes (B, Hkv, T, D); scales
    (B, Hkv, T, 1); mask (1, T) True = may attend (None: every position). Returns (B, H, 1, D) in q's dtype."""
    B, H, _, D = q.shape
    scores = grouped_scores(q, k_codes) * (k_scale.squeeze(-1).unsqueeze(2) * (1.0 / math.sqrt(D)))
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    p = torch.softmax(scores, dim=-1) * v_scale.squeeze(-1).unsqueeze(2)  # (B, Hkv, G, T)
    out = (p.unsqueeze(-1) * v_codes.unsqueeze(2).float()).sum(-2)  # (B, Hkv, G, D)
    return out.reshape(B, H, 1, D).to(q.dtype)


def one_query_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """scaled_attention over full-precision keys and values (no scales): the fp32 static step's attention on a
    CPU, inlined into the compiled step as one loop kernel instead of a call to SDPA."""
    B, H, _, D = q.shape
    scores = grouped_scores(q, k) * (1.0 / math.sqrt(D))
    p = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)  # (B, Hkv, G, T)
    out = (p.unsqueeze(-1) * v.unsqueeze(2).float()).sum(-2)
    return out.reshape(B, H, 1, D).to(q.dtype)


def unpack(p: torch.Tensor) -> torch.Tensor:
    """(..., D/2) bytes -> (..., D) 4-bit codes, low nibble first (caches/int4.py's packing)."""
    return torch.stack((p & 0xF, p >> 4), dim=-1).flatten(-2)


def int4_attention(q, kq, k_scale, k_zero, k_res, res_bias, vq, v_scale, v_zero) -> torch.Tensor:
    """Attention of one query per head over the 4-bit cache (caches/int4.py): keys packed (B, Hkv, n*G, D/2) with a
    scale and zero point per group of G tokens and channel (B, Hkv, n, 1, D); the residual's full-precision keys,
    all G rows of it (B, Hkv, G, D), with `res_bias` (G,) 0 where a row holds a position and -inf where not (the
    shapes stay the same as the residual fills, so the kernel does not recompile); values packed (B, Hkv, T, D/2)
    with a scale and zero point per token and group of channels (B, Hkv, T, D/vg, 1), T = n*G + the rows held.

    A byte holds channels 2j (low nibble) and 2j+1 (high): the query and the per-channel parameters are split into
    even and odd channels instead of the codes being interleaved back, so every loop runs over the bytes as stored
    (interleaving them first made inductor's kernel 18x slower here; folding the scales into the query instead of
    dequantizing each code, 1.4x slower). Returns (B, H, 1, D) in q's dtype."""
    B, H, _, D = q.shape
    Hkv, n, T = kq.size(1), k_scale.size(2), vq.size(2)
    qg = q.reshape(B, Hkv, H // Hkv, 1, 1, D).float()  # (B, Hkv, G, 1, 1, D): against (B, Hkv, 1, n, G, D/2)
    codes = kq.reshape(B, Hkv, 1, n, -1, D // 2)
    scores = []
    for half, nibble in ((slice(0, None, 2), codes & 0xF), (slice(1, None, 2), codes >> 4)):
        key = nibble.float() * k_scale[..., half].unsqueeze(2).float() + k_zero[..., half].unsqueeze(2).float()
        scores.append((qg[..., half] * key).sum(-1))  # (B, Hkv, G, n, tokens of a group)
    quantized = (scores[0] + scores[1]).reshape(B, Hkv, H // Hkv, -1)
    scores = torch.cat([quantized, grouped_scores(q, k_res) + res_bias], dim=-1)
    p = torch.softmax(scores * (1.0 / math.sqrt(D)), dim=-1)[..., :T]  # the rows held
    groups = v_scale.size(3)
    codes = vq.reshape(B, Hkv, 1, T, groups, -1)  # a group of vg channels is vg/2 bytes
    scale, zero = v_scale.unsqueeze(2).float(), v_zero.unsqueeze(2).float()  # (B, Hkv, 1, T, groups, 1)
    pt = p.reshape(B, Hkv, H // Hkv, T, 1, 1)
    halves = [(pt * (nibble.float() * scale + zero)).sum(3) for nibble in (codes & 0xF, codes >> 4)]
    out = torch.stack(halves, dim=-1).reshape(B, Hkv, H // Hkv, D)  # (.., groups, vg/2, 2): channels in order
    return out.reshape(B, H, 1, D).to(q.dtype)


_kernels: dict = {}  # each attention compiled once per process (dynamic shapes), at its first call
_failed: list[str] = []  # why compiling failed in this process (then every call decodes the reference way)


def run(attention, *args: torch.Tensor) -> torch.Tensor | None:
    """`attention` (scaled_attention, int4_attention) compiled; None where it does not compile here (said once)."""
    if _failed:
        return None
    kernel = _kernels.get(attention)
    if kernel is None:
        # Each dtype of codes, grouping and size-1 dimension is its own graph: room for all of them in one
        # process (set once: a context manager around every call cost 0.2 ms, more than the kernel at short context).
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
        kernel = _kernels[attention] = torch.compile(attention, dynamic=True, fullgraph=True)
    try:
        if _get_current_dispatch_mode() is None:
            return kernel(*args)
        # Outside any dispatch mode: the CPU memory pass (kvbench/measure/memory.py) watches every eager op, which
        # dynamo cannot trace; the kernel's output is counted at the first op that takes it, and what it holds
        # inside is a row of scores per head.
        with _disable_current_modes():
            return kernel(*args)
    except Exception as e:  # noqa: BLE001 (a compiler missing or failing: decode the reference way)
        _failed.append((str(e).strip().splitlines() or [type(e).__name__])[0][:200])
        print(f"kvbench: the fused compressed-cache attention does not compile here ({_failed[0]}); "
              "compressed caches decode by dequantizing", file=sys.stderr)  # fmt: skip
        return None
