"""Device and dtype names as the user writes them, resolved to what torch runs on."""

from __future__ import annotations

import os

import torch

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:<index>")


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda if present else cpu; raises ValueError naming the field for anything else."""
    if name == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        index = 0 if name == "cuda" else name.split(":", 1)[1]
        if not str(index).isdigit():
            raise ValueError(f"device: {name!r} is not one of {', '.join(DEVICE_CHOICES)}")
        if not torch.cuda.is_available():
            raise ValueError(f"device: {name!r} requested but torch sees no CUDA device here (use cpu or auto)")
        if int(index) >= torch.cuda.device_count():
            raise ValueError(f"device: {name!r} but only {torch.cuda.device_count()} CUDA device(s) are visible")
        return torch.device(f"cuda:{index}")
    raise ValueError(f"device: {name!r} is not one of {', '.join(DEVICE_CHOICES)}")


def dtype_unsupported_reason(device: torch.device, dtype: torch.dtype) -> str | None:
    """Why this device cannot run matmuls and attention in `dtype`, or None if it can."""
    if device.type == "cuda" and dtype == torch.bfloat16 and not torch.cuda.is_bf16_supported():
        return f"bf16 is not supported on {torch.cuda.get_device_name(device)}"
    try:  # a tiny probe of the ops the model uses
        x = torch.ones(2, 4, 8, device=device, dtype=dtype)
        torch.nn.functional.scaled_dot_product_attention(x[None], x[None], x[None])
        torch.nn.functional.layer_norm(x @ x.transpose(-1, -2), (4,))
    except (RuntimeError, NotImplementedError) as e:
        return f"{dtype} on {device.type}: {str(e).splitlines()[0]}"
    return None


def threads_unsupported_reason(threads: int | None) -> str | None:
    """Why a cell cannot have `threads` CPU threads of its own (more than this process's cores), or None."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if threads is not None and threads > cores:
        return f"threads: {threads} exceeds the {cores} CPU cores this process may run on (threads would share cores)"
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
