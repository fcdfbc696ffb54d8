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
from torch.utils._python_dispatch import _disable_current_modes

FUSED, DEQUANTIZE = "fused-dequantize", "dequantize+sdpa"  # the two paths a compressed cache's decode can take


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


_kernel = torch.compile(scaled_attention, dynamic=True, fullgraph=True)  # compiled at its first call
_failed: list[str] = []  # why compiling failed in this process (then every call decodes the reference way)


def fused_decode(*args: torch.Tensor) -> torch.Tensor | None:
    """scaled_attention through the process's compiled kernel; None where it does not compile here (said once)."""
    if _failed:
        return None
    try:
        # Outside any dispatch mode: the CPU memory pass (kvbench/measure/memory.py) watches every eager op, which
        # dynamo cannot trace; the kernel's output is counted at the first op that takes it, and what it holds
        # inside is a row of scores per head.
        # Each dtype of codes, grouping and size-1 dimension is its own graph: room for all of them in one process.
        with _disable_current_modes(), torch._dynamo.config.patch(recompile_limit=64):
            return _kernel(*args)
    except Exception as e:  # noqa: BLE001 (a compiler missing or failing: decode the reference way)
        _failed.append((str(e).strip().splitlines() or [type(e).__name__])[0][:200])
        print(f"kvbench: the fused compressed-cache attention does not compile here ({_failed[0]}); "
              "compressed caches decode by dequantizing", file=sys.stderr)  # fmt: skip
        return None
