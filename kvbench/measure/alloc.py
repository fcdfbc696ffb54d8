"""KV bytes reserved and bytes used, per decode step, for the caches that store whole tokens.

reserved: what the cache holds for the batch (another batch could not use it); used: the bytes of
real tokens in it (a ragged batch's gap and a static cache's unwritten tail are reserved, unused).
Each mode's bytes come two ways: by formula from the batch's lengths (`by_step`, what the record
gives for every step) and counted from a live cache (`counted`); a test holds them equal.

Step i is the moment token i is chosen: the cache then holds the prompt's `width` columns and the
i tokens fed after it.
"""

from __future__ import annotations

import statistics

from kvbench.caches.base import KVCache
from kvbench.caches.concat import ConcatCache
from kvbench.caches.paged import PagedCache, seq_tokens
from kvbench.caches.ragged import Layout
from kvbench.caches.static import StaticCache
from kvbench.core.block_table import BlockTable
from kvbench.core.presets import kv_bytes_per_token
from kvbench.measure.devices import DTYPES
from kvbench.measure.timing import TokenTimer, stats

ALLOC_KV_MODES = ("concat", "static", "paged")
# Said in every ragged record of engine kvbench: where the peers' side of the comparison is.
PEERS_NOTE = (
    "the peer engines are not measured on ragged batches or a shared prefix: their cells record status "
    "unsupported and one line saying why (each engine's `ragged_unsupported`, kvbench/engines/)"
)


def by_step(
    kv_mode: str,
    per_token: int,
    batch: int,
    width: int,
    new_tokens: int,
    layout: Layout | None,
    block_tokens: int,
) -> tuple[list[int], list[int]] | None:
    """(reserved, used) bytes at each step 0..new_tokens-1 by formula; None for a mode not listed here.

    paged's come from the cache's own allocator (a BlockTable) replayed on the lengths alone, step by step."""
    if kv_mode not in ALLOC_KV_MODES:
        return None
    max_len = width + new_tokens - 1  # the last token is chosen, never fed
    shared = 0 if layout is None else layout.shared_prefix
    table = BlockTable.for_lengths(seq_tokens(layout, batch, width, max_len - width), block_tokens, shared)
    reserved, used = [], []
    for step in range(new_tokens):
        real = seq_tokens(layout, batch, width, step)
        if kv_mode == "paged":
            for seq, tokens in enumerate(real):
                table.allocate(seq, tokens)
            table.check()
            reserved.append(table.blocks_taken() * block_tokens * per_token)
            used.append(table.tokens_stored() * per_token)  # the shared prefix's blocks stored once
            continue
        reserved.append(batch * (max_len if kv_mode == "static" else width + step) * per_token)
        used.append(sum(real) * per_token)
    return reserved, used


def counted(cache: KVCache, layout: Layout | None) -> tuple[int, int] | None:
    """(reserved, used) bytes counted from a live cache: its tensors, its tables, the columns it holds."""
    if isinstance(cache, PagedCache):
        return cache.bytes_reserved(), cache.bytes_used()
    if type(cache) is StaticCache:  # (layers, B, H, max_len, D)
        batch, capacity, columns = cache.k.size(1), cache.k.size(3), written_columns(cache)
    elif isinstance(cache, ConcatCache) and cache.k[0] is not None:  # per layer (B, H, columns, D)
        batch, capacity = cache.k[0].size(0), cache.length()
        columns = capacity
    else:
        return None
    per_token = cache.nbytes() // (batch * capacity)
    real = batch * columns if layout is None else int(layout.key_valid(columns).sum())
    return cache.nbytes(), real * per_token


def written_columns(cache: StaticCache) -> int:
    """Columns of a static cache written so far: up to the last that holds anything but the zeros it began with."""
    touched = cache.k.ne(0).flatten(0, 2).any(dim=-1).any(dim=0)  # (max_len,)
    nz = touched.nonzero()
    return 0 if len(nz) == 0 else int(nz[-1]) + 1


def waste(reserved: int, used: int) -> float:
    """Fraction of the reserved bytes holding no real token."""
    return 0.0 if reserved == 0 else 1.0 - used / reserved


def peer_ragged_reason(spec) -> str | None:
    """Why a peer engine's cell with a ragged batch or a shared prefix is not measured (its record's
    one line, status unsupported); None for engine kvbench or a rectangular batch."""
    if spec.engine == "kvbench" or not (spec.prompt_spread or spec.shared_prefix):
        return None
    from kvbench.engines import registry as engines

    why = getattr(engines.engine_class(spec.engine), "ragged_unsupported", None)
    return why or f"prompt_spread, shared_prefix: engine {spec.engine} is fed a rectangular batch only"


def record_fields(built, spec, run) -> dict:
    """The record's `memory` fields on allocation (a cell's `Built`, `CellSpec` and runner): the bytes
    reserved and used counted from one more untimed generation's cache, the same by formula at every
    step, and against a static cache's reservation for the same batch."""
    out: dict = {}
    if built.layout is not None:
        out["prompt_lengths"] = [int(n) for n in built.layout.lengths.tolist()]
        out["kv_alloc_note"] = PEERS_NOTE
    if spec.kv_mode not in ALLOC_KV_MODES or spec.engine != "kvbench":
        return out
    cfg = built.model.config
    per_token = kv_bytes_per_token(cfg.n_layer, cfg.kv_heads, cfg.head_dim, DTYPES[spec.dtype].itemsize, spec.kv_mode)
    reserved_steps, used_steps = by_step(
        spec.kv_mode, per_token, spec.batch, spec.prompt_len, spec.new_tokens, built.layout, spec.block_tokens
    )
    gen = run(built.prompt, spec.new_tokens, spec.kv_mode)
    reserved, used = counted(gen.cache, built.layout)
    static_reserved = spec.batch * (spec.prompt_len + spec.new_tokens - 1) * per_token
    out.update(
        kv_bytes_reserved=reserved,
        kv_bytes_used=used,
        kv_bytes_reserved_by_step=reserved_steps,
        kv_bytes_used_by_step=used_steps,
        kv_bytes_saved_vs_static=static_reserved - reserved,
    )
    if spec.kv_mode == "paged":
        out["kv_cache_bytes_formula"] = reserved_steps[-1]
        out["kv_attention_path"] = gen.cache.attention_path  # the decode steps' (runs in place, or the gather)
    return out


def prefill_fields(built, spec, run, device) -> dict:
    """A paged cell with a shared prefix: the prefill time it saves against `static`, both measured here.

    The same prompt's prefill (the prompt's forward and the first token) under this cell's paged cache,
    which prefills the prefix once, and under a static cache of the same batch, which prefills it in every
    sequence: one untimed static generation first, then `max(iters, 2)` rounds of one each, the order
    alternating, in this process on these weights. Each generation makes 2 tokens (the prefill's and one
    decode step); only the prefill interval is kept. The record's latency section gets the stats of both
    and the difference of their medians. Empty for any other cell."""
    if spec.kv_mode != "paged" or built.layout is None or not built.layout.shared_prefix:
        return {}
    run(built.prompt, 2, "static")  # the static cache's first use in this process, untimed
    times: dict[str, list[float]] = {"static": [], "paged": []}
    for i in range(max(spec.iters, 2)):
        for mode in ("static", "paged") if i % 2 == 0 else ("paged", "static"):
            timer = TokenTimer(device)
            timer.start()
            run(built.prompt, 2, mode, on_token=timer.mark)
            times[mode].append(timer.intervals_ms()[0])
    saved = statistics.median(times["static"]) - statistics.median(times["paged"])
    return {
        "prefill_ms_static_same_batch": stats(times["static"]),
        "prefill_ms_paged_same_batch": stats(times["paged"]),
        "prefill_ms_saved_vs_static": saved,
    }
