"""The cache interface every kind implements: `update` stores one layer's new K,V and returns all K,V so far."""

from __future__ import annotations

from abc import ABC, abstractmethod

import torch


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
