"""Peak memory of a generation where no allocator keeps count: live tensor bytes, op by op.

On a GPU torch's CUDA allocator reports its peaks. On a CPU there is no such counter, and the
process RSS is dominated by the weights and the runtime, so it says nothing about the cache.
`LiveTensorBytes` is a dispatch mode that sees every tensor an op returns, counts each storage
once while it lives (a storage's Python object is kept alive by its tensors, so a weak
reference to it fires exactly when the last tensor using it is freed), and keeps the peak.
It slows every op down, so it only ever runs in an untimed pass.
"""

from __future__ import annotations

import resource
import weakref
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from kvbench.core import interrupt

CPU_METHOD = "cpu_tensor_tracker"
CUDA_METHOD = "cuda_allocator"


@dataclass(frozen=True)
class Peaks:
    """A cell's allocated-bytes peaks (its prefill's, its decode's, overall; reserved on CUDA) and who counted them."""

    method: str | None = None
    prefill: int | None = None
    decode: int | None = None
    allocated: int | None = None
    reserved: int | None = None


class LiveTensorBytes(TorchDispatchMode):
    """Bytes of tensor storage alive, and their peak, per phase: prefill until `end_prefill()`, then decode.

    `prefill_peak` is the prefill's peak once `end_prefill()` ran; `peak` is the running one (the decode's after it).
    """

    @classmethod
    def _should_skip_dynamo(cls) -> bool:
        # torch wraps a mode's __torch_dispatch__ in a dynamo-disable, whose first call imports
        # torch._dynamo (seconds of start-up). This mode only ever runs eagerly: nothing to disable.
        return False

    def __init__(self, resident: Iterable[torch.Tensor]):
        super().__init__()
        self.live = 0
        self._tracked: set[int] = set()
        for t in resident:  # weights, buffers, the prompt: alive before the first op
            self._track(t)
        self.prefill_peak = self.peak = self.live

    def _track(self, t: object) -> None:
        if not isinstance(t, torch.Tensor) or t.device.type == "meta":
            return
        # A oneDNN-packed weight (kvbench/models/decode_linear.py) has no storage to share: it is its own, of its bytes.
        storage = t if t.is_mkldnn else t.untyped_storage()
        nbytes = t.numel() * t.element_size() if t.is_mkldnn else storage.nbytes()
        key = id(storage)
        if key in self._tracked:  # a view, an in-place result, or a tied weight
            return
        self._tracked.add(key)
        self.live += nbytes
        weakref.finalize(storage, self._free, key, nbytes)

    def _free(self, key: int, nbytes: int) -> None:
        self._tracked.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        interrupt.check()  # a Ctrl-C that landed in one of this pass's finalizers (core/interrupt.py)
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            self._track(t)
        self.peak = max(self.peak, self.live)
        return out

    def end_prefill(self) -> None:
        """The prefill's token is chosen: its peak is final, the decode's starts from what lives now."""
        self.prefill_peak, self.peak = self.peak, self.live


def resident_tensors(module: torch.nn.Module, *more: torch.Tensor) -> list[torch.Tensor]:
    return [*module.parameters(), *module.buffers(), *more]


def rss_peak_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def cpu_peaks(generate, module: torch.nn.Module, prompt: torch.Tensor, new_tokens: int, kv_mode: str) -> Peaks:
    """Peaks of one eager generation (`generate`, a Runner) with the cell's shapes, counted op by op.

    `module`'s weights and buffers and the prompt are counted as alive from the start.
    """
    tracker = LiveTensorBytes(resident_tensors(module, prompt))
    with tracker:
        generate(prompt, new_tokens, kv_mode, on_token=lambda i: tracker.end_prefill() if i == 0 else None)
    return Peaks(CPU_METHOD, tracker.prefill_peak, tracker.peak, max(tracker.prefill_peak, tracker.peak))


def cuda_peaks(device: torch.device, prefill: int | None = None, decode: int | None = None) -> Peaks:
    """The CUDA allocator's peaks since its last reset, with the phase peaks taken apart."""
    return Peaks(
        CUDA_METHOD, prefill, decode, torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device)
    )
