"""The cache interface every kind implements: `update` stores one layer's new K,V and returns all K,V so far."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch

if TYPE_CHECKING:  # annotations only
    from kvbench.caches.ragged import Layout


@dataclass(frozen=True)
class CacheShape:
    """What every cache of one generation is sized by: layers, sequences, K/V heads, the most positions it holds,
    the head size, and the dtype/device of the model's K,V."""

    n_layer: int
    batch: int
    n_kv_head: int
    max_len: int
    head_dim: int
    dtype: torch.dtype
    device: torch.device | str

    def dims(self, max_len: int | None = None) -> tuple[int, int, int, int, int]:
        """(layers, batch, K/V heads, positions, head size): a static buffer's shape."""
        return (self.n_layer, self.batch, self.n_kv_head, self.max_len if max_len is None else max_len, self.head_dim)

    def check_fits(self, end: int, what: str = "static cache") -> None:
        """Raise where a step would write past the positions this cache holds."""
        if end > self.max_len:
            raise ValueError(f"{what} holds {self.max_len} positions, step needs {end}")


class KVCache(ABC):
    """Interface: `update` stores the new K,V of one layer and returns all K,V so far.

    A kind is built as `Kind(shape, **settings)`; `settings` names the keyword arguments it takes beyond the
    shape (the registry passes it those of a cell's options, and only those)."""

    settings: ClassVar[tuple[str, ...]] = ()

    @abstractmethod
    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, past_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors, measured from the tensors themselves."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @abstractmethod
    def tensors(self) -> list[torch.Tensor]: ...

    def bytes_reserved(self) -> int:
        """Bytes set aside for this generation's K,V: by default every tensor the cache holds."""
        return self.nbytes()

    def bytes_used(self) -> int:
        """Bytes holding positions written so far: by default all of them (a cache that only ever grows)."""
        return self.nbytes()

    # Decode attention that reads the cache as it is stored (kvbench/caches/fused.py): a compressed kind overrides
    # these to attend over its codes instead of handing back a dequantized copy. None: the attention module
    # takes what `update` (or a static-shape kind's `write_at`) returns and runs SDPA over it. `attention_path`
    # names the path the last decode step took (the record says it).
    attention_path: str = "sdpa"
    # True: `attend_decode` attends each sequence over its own positions, so a ragged batch's step (which has a
    # mask over the padded columns) may come to it too; False: only a rectangular batch's does.
    reads_layout: bool = False

    def attend_decode(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, past_len: int):
        """One new token per sequence: store its k, v (B, Hkv, 1, D) and return its attention (B, H, 1, D)."""
        return None

    def attend_at(self, layer: int, q, k, v, pos: torch.Tensor, mask: torch.Tensor):
        """The static-shape step's: store k, v at the positions in `pos`, attend over every position `mask` allows."""
        return None

    def before_step(self, pos: int) -> None:
        """Before a compiled static-shape step at position `pos`, outside its graph: bookkeeping the graph cannot
        trace (paged: the blocks taken, the step's slot and block-table tensors). Most kinds have none."""
        return None

    # A generation's inputs, handed to the cache by the decode loop (kvbench/engines/generate.py) so that the
    # loop names no kind: only paged uses them today.
    def bind(self, prompt_width: int, layout: Layout | None) -> None:
        """Before the prefill: the prompt's padded width and a ragged batch's layout (None: rectangular)."""
        return None

    def prefill(self, model, ids: torch.Tensor, layout: Layout | None) -> torch.Tensor | None:
        """The prompt's logits where this cache prefills in its own way (paged: a shared prefix once);
        None: the model runs over the prompt as usual."""
        return None
