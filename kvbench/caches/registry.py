"""The cache kinds by name: `make_cache` builds one for a generation. It sits above the kinds (one file each,
beside it), which import only the interface (base.py)."""

from __future__ import annotations

import torch

from kvbench.caches.base import CacheShape, KVCache
from kvbench.caches.concat import ConcatCache
from kvbench.caches.int4 import Int4StaticCache
from kvbench.caches.paged import PagedCache
from kvbench.caches.scaled import Fp8StaticCache, Int8StaticCache
from kvbench.caches.sliding import SlidingCache
from kvbench.caches.static import StaticCache
from kvbench.core.presets import KV_MODES
from kvbench.kernels import decode_attention

# kv_mode -> the class that holds it ("none": no cache; the model re-reads the whole sequence each step).
# Each class is built as `cls(shape, **settings)`, with the settings it names in `cls.settings`.
KINDS: dict[str, type[KVCache] | None] = {
    "none": None,
    "concat": ConcatCache,
    "static": StaticCache,
    "static-int8": Int8StaticCache,
    "static-int4": Int4StaticCache,
    "static-fp8": Fp8StaticCache,
    "sliding": SlidingCache,
    "paged": PagedCache,
}


def make_cache(kv_mode: str, shape: CacheShape, **options) -> KVCache | None:
    """A fresh cache for one generation of at most `shape.max_len` cached positions (None for mode 'none').

    `options`: a cell's cache settings (kv_group_size: static-int4's; window, sinks: sliding's; block_tokens:
    paged's) and inv_freq, the model's rotary frequencies (None for learned positions), with which sliding
    re-assigns positions within the cache. A kind takes those it names and ignores the rest; a kind's default
    stands for a setting not given.
    """
    if kv_mode not in KINDS:
        raise ValueError(f"kv_mode: {kv_mode!r} is not one of {', '.join(KV_MODES)}")
    unknown = sorted(set(options) - {s for cls in KINDS.values() if cls is not None for s in cls.settings})
    if unknown:  # a misspelt setting would otherwise fall back to the default unseen
        raise TypeError(f"make_cache: unknown cache settings {', '.join(unknown)}")
    cls = KINDS[kv_mode]
    if cls is None:
        return None
    if torch.device(shape.device).type == "cpu":
        decode_attention.available()  # built and loaded now, not first asked inside a compiled step
    return cls(shape, **{name: options[name] for name in cls.settings if name in options})
