"""`decode_attention`: one query per head over a KV cache read as it is stored (decode_attention.cpp).

Three ops under `torch.ops.kvbench_attention`, each with a fake implementation so a compiled step calls it as
one extern kernel:

- `dense(q, k, v, k_scale, v_scale, mask)`: k, v (B, Hkv, T, D) float32, int8 or float8_e4m3fn (any strides but
  the last); the 8-bit codes with one fp32 scale per (token, head) (B, Hkv, T, 1); mask (1, T) bool or None.
- `paged(q, pool_k, pool_v, block_table, lengths, block_tokens)`: one layer's pools (Hkv, slots, D) read through
  each sequence's block table, sequence b over its first lengths[b] positions (ragged batches and shared
  blocks alike).
- `int4(q, kq, k_scale, k_zero, k_res, held, vq, v_scale, v_zero)`: caches/int4.py's packed layout.
- `int4_at(q, kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, pos)`: the same over the whole buffers, positions
  0..pos[-1] held (the static-shape step's: the same shapes every step).

q is (B, H, 1, D) float32, H a multiple of Hkv (the group scored together); the result is (B, H, 1, D).
`fits` says whether a call's tensors are ones the kernel takes; `available()` builds and loads it
(kvbench/kernels/build.py) or says, in one line, why not.
"""

from __future__ import annotations

import functools

import torch

from kvbench.core import env_vars
from kvbench.kernels import build

NAME = "decode_attention"
MAX_GROUP, MAX_HEAD = 16, 256  # query heads per K/V head, head size (decode_attention.cpp's limits)
CODES = (torch.float32, torch.int8, getattr(torch, "float8_e4m3fn", torch.float32))


_ready: dict[str, bool] = {}  # the answer of `available`, worked out once per process


def available() -> bool:
    """Built for this CPU and loaded (a one-line reason on stderr, once, where not), and not turned off
    ($KVBENCH_NO_KERNELS). Worked out at the first call, which must be outside a compiled region (the caches'
    registry makes it when it builds a cache on a CPU); later calls read the answer, which dynamo can trace."""
    if "yes" not in _ready:
        _ready["yes"] = not env_vars.get(env_vars.NO_KERNELS) and build.load(NAME) is not None
        if _ready["yes"]:
            _register_fake()
    return _ready["yes"]


def fits(q: torch.Tensor, keys: torch.Tensor, head_multiple: int = 16) -> bool:
    """A float32 query on the CPU, one per head, against keys of a head size the kernel takes."""
    D, Hkv = q.size(-1), keys.size(-3)
    return (
        q.device.type == "cpu"
        and q.dtype == torch.float32
        and q.dim() == 4
        and q.size(2) == 1
        and D % head_multiple == 0
        and D <= MAX_HEAD
        and q.size(1) % Hkv == 0
        and q.size(1) // Hkv <= MAX_GROUP
    )


def dense(q, k, v, k_scale=None, v_scale=None, mask=None) -> torch.Tensor:
    return torch.ops.kvbench_attention.decode_attention(q, k, v, k_scale, v_scale, mask)


def paged(q, pool_k, pool_v, block_table, lengths, block_tokens: int) -> torch.Tensor:
    return torch.ops.kvbench_attention.paged_decode_attention(q, pool_k, pool_v, block_table, lengths, block_tokens)


def int4(q, kq, k_scale, k_zero, k_res, held: int, vq, v_scale, v_zero) -> torch.Tensor:
    return torch.ops.kvbench_attention.int4_decode_attention(q, kq, k_scale, k_zero, k_res, held, vq, v_scale, v_zero)


def int4_at(q, kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, pos) -> torch.Tensor:
    return torch.ops.kvbench_attention.int4_decode_attention_at(q, kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, pos)


@functools.cache  # once per process: a second registration of the same op is an error
def _register_fake() -> None:
    for op in ("decode_attention", "paged_decode_attention", "int4_decode_attention", "int4_decode_attention_at"):
        torch.library.register_fake(f"kvbench_attention::{op}")(
            lambda q, *rest: torch.empty(q.shape, dtype=q.dtype, device=q.device)
        )
