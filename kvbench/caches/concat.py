"""The write-ups' cache: every step concatenates the new K,V onto the old ones, so each step allocates and copies
the whole cache again."""

from __future__ import annotations

import torch

from kvbench.caches.base import CacheShape, KVCache


class ConcatCache(KVCache):
    """Holds exactly the positions written, so what it reserves is what it uses (the base's bytes)."""

    def __init__(self, shape: CacheShape):
        self.k: list[torch.Tensor | None] = [None] * shape.n_layer
        self.v: list[torch.Tensor | None] = [None] * shape.n_layer

    def update(self, layer, k, v, past_len):
        if self.k[layer] is None:
            self.k[layer], self.v[layer] = k, v
        else:
            if self.k[layer].size(2) != past_len:
                raise ValueError(f"cache holds {self.k[layer].size(2)} positions, step claims {past_len}")
            self.k[layer] = torch.cat([self.k[layer], k], dim=2)
            self.v[layer] = torch.cat([self.v[layer], v], dim=2)
        return self.k[layer], self.v[layer]

    def tensors(self):
        return [t for t in self.k + self.v if t is not None]

    def length(self) -> int:
        return 0 if self.k[0] is None else self.k[0].size(2)
