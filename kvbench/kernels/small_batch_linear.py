"""`small_batch_linear`: y = x W^T + b with W streamed once for up to 8 rows, over W packed in 16-column blocks.

The decode step's linear layers read every weight once per token, so at batch 1-8 they are as fast as
the weights stream. The C++ kernel (small_batch_linear.cpp) keeps the rows in registers and reads each
block of W sequentially. `pack` lays W (N, K) out for it as one flat tensor of N * K floats (so a parameter
keeps its count and bytes): floor(N/16) blocks of (K, 16), then the last N % 16 rows as they are;
`unpack` gives the matrix back, `rows` looks rows of W up in place (a tied embedding reads its table there).
The op is `torch.ops.kvbench.small_batch_linear`, with a fake implementation so a compiled graph calls it
as one extern kernel. `available()` builds and loads it (kvbench/kernels/build.py) or says, in one line,
why not.
"""

from __future__ import annotations

import functools

import torch

from kvbench.core import env_vars
from kvbench.kernels import build

NAME = "small_batch_linear"
LANES = 16


def available() -> bool:
    """The kernel is built for this CPU and loaded (a one-line reason on stderr, once, where not), and not
    turned off ($KVBENCH_NO_KERNELS)."""
    if env_vars.get(env_vars.NO_KERNELS) or build.load(NAME) is None:
        return False
    _register_fake()
    return True


def fits(weight: torch.Tensor) -> bool:
    """A float32 matrix on the CPU."""
    return weight.device.type == "cpu" and weight.dtype == torch.float32 and weight.dim() == 2


def parts(packed: torch.Tensor, n: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of the flat tensor: the blocks (N // 16, K, 16) and the last rows (N % 16, K)."""
    split = n // LANES * LANES * k
    return packed[:split].view(n // LANES, k, LANES), packed[split:].view(n % LANES, k)


def pack(weight: torch.Tensor) -> torch.Tensor:
    """(N, K) -> flat (N * K,): block j (K, 16) holds output columns 16j..16j+15, one stream; then the rest."""
    n, k = weight.shape
    w = weight.detach()
    full = n // LANES * LANES
    blocks = w[:full].reshape(n // LANES, LANES, k).transpose(1, 2).reshape(-1)
    return torch.cat([blocks, w[full:].reshape(-1)])


def unpack(packed: torch.Tensor, n: int, k: int) -> torch.Tensor:
    blocks, tail = parts(packed, n, k)
    return torch.cat([blocks.transpose(1, 2).reshape(-1, k), tail])


def rows(packed: torch.Tensor, n: int, k: int, index: torch.Tensor) -> torch.Tensor:
    """W[index] (index.shape + (K,)) read from the packed layout: an embedding lookup on a tied table."""
    blocks, tail = parts(packed, n, k)
    full = blocks.size(0) * LANES
    if full == 0:
        return tail[index]
    inside = index.clamp(max=full - 1)
    out = blocks[inside // LANES, :, inside % LANES]
    if tail.size(0):
        out = torch.where((index >= full).unsqueeze(-1), tail[(index - full).clamp(0, tail.size(0) - 1)], out)
    return out


def linear(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, n: int) -> torch.Tensor:
    """x (..., K) times the packed (N, K) weight: (..., N)."""
    flat = x.reshape(-1, x.size(-1))
    return torch.ops.kvbench.small_batch_linear(flat, packed, bias, n).view(*x.shape[:-1], n)


@functools.cache  # once per process: a second registration of the same op is an error
def _register_fake() -> None:
    @torch.library.register_fake("kvbench::small_batch_linear")
    def _(x, packed, bias, n):
        return x.new_empty((x.size(0), n))
