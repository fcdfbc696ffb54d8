"""A decode step's linear layers on the CPU at memory speed: kvbench's own small-batch GEMM kernel.

A decode step multiplies `batch` rows by every weight matrix, and each weight is read from memory
once per step, so its time is set by how fast the weights stream. oneDNN and MKL pack the weights
into blocks first; at batch 1 that is skipped, but from batch 2 to 8 the packing is a second pass
over every matrix and the step falls to a third of the memory bandwidth (measured on the 2-core CI
CPU: the block and head matrices of gpt2 at M = 8 take 2-4x their batch-1 time). The kernel in
csrc/small_batch_linear.cpp reads each (out, in) weight once, several rows at a time, for 1 to 8
rows of input (`tile` says how it blocks them).

It is C++ built once per machine with torch's own extension builder (AVX2 + FMA, a C++ compiler
compiler and ninja needed, seconds) into $KVBENCH_CACHE_DIR/kernels/<source hash>, sealed by `disk_cache` and
verified before each reuse like every folder kvbench keeps. Where it cannot run (no AVX2, no
compiler, a dtype other than float32, more than 8 rows) `DecodeLinear` calls `F.linear`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import sys
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from kvbench import disk_cache, env_vars

SOURCE = Path(__file__).parent / "csrc" / "small_batch_linear.cpp"
MAX_ROWS = 8
FLAGS = ("-O3", "-mavx2", "-mfma")
# Register tile (R weight rows streamed together, G input rows per pass) per number of input rows:
# R x G accumulators plus R weight vectors fit AVX2's 16 registers; several weight rows in flight
# keep the memory busy, and a larger G reads the R rows from L1 fewer times.
TILES = {1: (4, 1), 2: (4, 2), 3: (4, 3), 4: (3, 4), 5: (4, 2), 6: (4, 3), 7: (4, 2), 8: (3, 4)}


class KernelUnavailable(RuntimeError):
    """The kernel cannot be built or run here: one line saying why."""


def build_dir() -> Path:
    digest = hashlib.sha256(SOURCE.read_bytes() + " ".join(FLAGS).encode() + torch.__version__.encode())
    return env_vars.cache_dir() / "kernels" / f"small_batch_linear-{digest.hexdigest()[:16]}"


def why_unavailable() -> str | None:
    """None where the kernel can run on this machine, else the reason in a few words."""
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        return f"the CPU has no AVX2 (torch reports {torch.backends.cpu.get_cpu_capability()})"
    try:
        load()
    except KernelUnavailable as err:
        return str(err)
    return None


@functools.cache
def load() -> None:
    """Build (first use on this machine) or reuse the kernel and register `torch.ops.kvbench`."""
    from torch.utils.cpp_extension import load as build

    # torch's builder runs `ninja` from PATH; the venv's own (requirements.txt) is not on it when a
    # cell runs as .venv/bin/python without the venv activated.
    venv_bin = Path(sys.executable).parent
    if shutil.which("ninja") is None and (venv_bin / "ninja").exists():
        os.environ["PATH"] = f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"
    folder = disk_cache.verified(build_dir(), "small-batch kernel")  # a damaged build is moved aside, rebuilt
    folder.mkdir(parents=True, exist_ok=True)
    try:
        build(
            "kvbench_small_batch_linear",
            [str(SOURCE)],
            extra_cflags=list(FLAGS),
            build_directory=str(folder),
            is_python_module=False,
            verbose=bool(os.environ.get("KVBENCH_VERBOSE_BUILD")),
        )
    except (RuntimeError, OSError, ImportError) as err:  # no compiler, a failed build
        raise KernelUnavailable(
            f"the small-batch kernel did not build in {folder}: {str(err).splitlines()[0]}"
        ) from None
    disk_cache.seal(folder)
    # The op's output shape for torch.compile, which traces it without running it.
    torch.library.register_fake("kvbench::small_batch_linear")(_shape)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) through the kernel for x of at most MAX_ROWS rows (any leading shape)."""
    rows = x.numel() // x.size(-1)
    out = torch.ops.kvbench.small_batch_linear(x.reshape(rows, x.size(-1)).contiguous(), weight, bias, *TILES[rows])
    return out.view(*x.shape[:-1], weight.size(0))


class DecodeLinear(nn.Linear):
    """nn.Linear whose few-row calls (a decode step) go through the kernel; the rest through F.linear."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() <= MAX_ROWS * x.size(-1) and x.dtype == torch.float32 and self.weight.is_contiguous():
            return linear(x, self.weight, self.bias)
        return F.linear(x, self.weight, self.bias)


def use_kernel(model: nn.Module) -> None:
    """Route every nn.Linear of a float32 CPU model through `DecodeLinear`; weights are left as they are."""
    load()
    for module in model.modules():
        if type(module) is nn.Linear:
            module.__class__ = DecodeLinear


def _shape(x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor | None, tile_rows: int, tile_cols: int) -> torch.Tensor:
    return x.new_empty((x.size(0), w.size(0)))
