"""The cache interface every kind implements: `update` stores one layer's new K,V and returns all K,V so far."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch


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
    """Interface: `update` stores the new K,V of one layer and returns all K,V so far."""

    @abstractmethod
    def update(
        self, layer: int, k: torch.Tensor, v: torch.Tensor, past_len: int
    ) -> tuple[torch.Tensor, torch.Tensor]: ...

    def nbytes(self) -> int:
        """Bytes held by the cache's tensors, measured from the tensors themselves."""
        return sum(t.numel() * t.element_size() for t in self.tensors())

    @abstractmethod
    def tensors(self) -> list[torch.Tensor]: ...
