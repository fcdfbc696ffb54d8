"""`int4_store`: the static-shape step's store into caches/int4.py's 4-bit cache (int4_store.cpp).

One op, `torch.ops.kvbench_cache.int4_store_at(kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, k, v, pos, layer,
group)`, which writes the whole buffers in place (declared mutable, so a compiled step calls it as one extern kernel
and orders the attention's reads after it): the token's value codes, its key into the residual, and the residual's
group quantized only when this token completes it. `available()` builds and loads it (kvbench/kernels/build.py) or
says, in one line, why not; `fits` says whether a cache's buffers are ones it takes.
"""

from __future__ import annotations

import functools

import torch

from kvbench.core import env_vars
from kvbench.kernels import build

NAME = "int4_store"

_ready: dict[str, bool] = {}  # the answer of `available`, worked out once per process (outside a compiled region)


def available() -> bool:
    """Built for this CPU and loaded (a one-line reason on stderr, once, where not), and not turned off
    ($KVBENCH_NO_KERNELS); later calls read the memo, which dynamo can trace."""
    if "yes" not in _ready:
        _ready["yes"] = not env_vars.get(env_vars.NO_KERNELS) and build.load(NAME) is not None
        if _ready["yes"]:
            _register_fake()
    return _ready["yes"]


def fits(k_res: torch.Tensor, buffers: list[torch.Tensor]) -> bool:
    """A float32 residual and contiguous buffers on the CPU."""
    return k_res.device.type == "cpu" and k_res.dtype == torch.float32 and all(t.is_contiguous() for t in buffers)


def store_at(kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, k, v, pos, layer: int, group: int) -> None:
    torch.ops.kvbench_cache.int4_store_at(kq, k_scale, k_zero, k_res, vq, v_scale, v_zero, k, v, pos, layer, group)


@functools.cache  # once per process: a second registration of the same op is an error
def _register_fake() -> None:
    torch.library.register_fake("kvbench_cache::int4_store_at")(lambda *args: None)
