"""A paged KV cache, as vLLM allocates one: fixed-size blocks from a pool, one block table per sequence.

K/V live in a pool of blocks of `block_tokens` positions. A sequence takes a block from the free list
only when its last block is full, so what it holds is its own tokens rounded up to one block, whatever
the other sequences' lengths (a static cache reserves every sequence the longest one's room). A prefix
that every sequence of the batch shares is stored once: its full blocks sit in every sequence's table
with a reference count, and it is prefilled once (`prefill_shared`).

A decode step reads each sequence's blocks in place through its block table with kvbench's C++ kernel
(kvbench/kernels/decode_attention.cpp), ragged batches and a shared prefix alike. Where that kernel does not
run, a rectangular batch reads runs of blocks with consecutive
ids are slices of the pool (heads first, so a run is a (heads, positions, head size) view like a static
cache's), each attended by SDPA's flash kernel with its log-sum-exp, the runs' outputs merged by their
log-sum-exps (flash-decoding's split over the keys). A prompt's blocks come off the free list in order, so a
sequence is a run for its prompt and one per block it took while decoding. A ragged batch, a shared prefix and
the prefill gather the blocks into a dense copy instead (a torch index, then SDPA). `attention_path` says which
ran, and why not flex_attention's PagedAttention.
The bookkeeping (each sequence's blocks, the free list, the reference counts) is a BlockTable
(kvbench/core/block_table.py), the allocator the byte accounting replays on lengths alone; this module
keeps the pool tensors and builds the gather's indices from the table. The table is checked before
every gather: an id outside the pool, or a block held by more sequences than its reference count, is
an error, never a wrong answer.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from kvbench.caches import fused
from kvbench.caches.base import CacheShape, KVCache
from kvbench.caches.ragged import Layout
from kvbench.core.block_table import BlockTable
from kvbench.core.presets import BLOCK_TOKENS, kv_bytes_per_token
from kvbench.kernels import decode_attention

ATTENTION_PATH = "paged: blocks gathered into a dense K/V per step (torch index), then SDPA"
KERNEL_PATH = "paged: each sequence's blocks read in place through its block table (kvbench's C++ kernel)"
RUNS_PATH = "paged: runs of consecutive blocks read in place, SDPA flash per run, merged by log-sum-exp"
PAGED_FLEX = "torch.nn.attention.experimental._paged_attention"
# Why not PyTorch's PagedAttention for flex_attention: true of torch 2.13 on a CPU and a GPU alike
# (tests/test_kv_cache_paged.py holds the first half to the installed torch).
NOT_FLEX = (
    "not flex_attention's PagedAttention: without torch.compile flex_attention runs an unfused fallback "
    "that materialises the scores over every slot of the pool, and its fused kernel needs each shape "
    "compiled, which kvbench's eager paged mode does not do"
)
FLASH = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def attention_path(path: str = ATTENTION_PATH) -> str:
    """The record's `kv_attention_path`: how attention read the blocks, and why not PagedAttention."""
    if importlib.util.find_spec(PAGED_FLEX) is None:
        return f"{path}; this torch has no flex_attention PagedAttention ({PAGED_FLEX})"
    return f"{path}; {NOT_FLEX}"


def lined_up(runs: list[list[tuple[int, int]]]) -> list[tuple[int, int, int]] | None:
    """Where every sequence has as many runs, and each rank of run is as long in every sequence and starts the same
    number of slots after the previous sequence's (blocks handed out in order, as a rectangular batch takes them):
    per rank (first start, step between sequences, positions). None where the runs do not line up."""
    if len({len(r) for r in runs}) != 1:
        return None
    ranks = []
    for rank in zip(*runs):
        starts, lengths = [s for s, _ in rank], {n for _, n in rank}
        step = starts[1] - starts[0] if len(starts) > 1 else 0
        if len(lengths) != 1 or step < 0 or any(b - a != step for a, b in zip(starts, starts[1:])):
            return None
        ranks.append((starts[0], step, lengths.pop()))
    return ranks


def across(pool: torch.Tensor, start: int, step: int, n: int, batch: int) -> torch.Tensor:
    """(batch, Hkv, n, D): the run of `n` slots at `start` + b * `step` of each sequence b, a view of one layer's
    pool (Hkv, slots, D), nothing copied."""
    heads, slots, d = pool.stride()
    return pool.as_strided((batch, pool.size(0), n, pool.size(2)), (step * slots, heads, slots, d),
                           pool.storage_offset() + start * slots)  # fmt: skip


def merged(q: torch.Tensor, runs: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """One-token attention (B, H, 1, D) over runs of keys, each (K, V) a (B, Hkv, n, D) view. A query head group
    (H / Hkv heads per K/V head) goes in as that many query rows of its K/V head: no mask, so a row is a head;
    each run's output is weighted by its share of the softmax's denominator (exp of its log-sum-exp)."""
    B, H, _, D = q.shape
    Hkv = runs[0][0].size(1)
    rows = q.reshape(B, Hkv, H // Hkv, D)
    parts = [FLASH(rows, k, v, 0.0, False) for k, v in runs]
    if len(parts) == 1:
        return parts[0][0].reshape(B, H, 1, D)
    weights = torch.softmax(torch.stack([lse for _, lse in parts]), dim=0).unsqueeze(-1)  # (R, B, Hkv, G, 1)
    out = (torch.stack([o for o, _ in parts]) * weights.to(q.dtype)).sum(0)
    return out.reshape(B, H, 1, D)


def seq_tokens(layout: Layout | None, batch: int, width: int, step: int) -> list[int]:
    """Real tokens each sequence has cached once `width + step` columns are (prompt + `step` decoded)."""
    if layout is None:
        return [width + step] * batch
    return [int(n) + step for n in layout.lengths.tolist()]


class PagedCache(KVCache):
    """The pool tensors, plus a BlockTable (kvbench/core/block_table.py) that does the bookkeeping:
    which blocks each sequence holds, the free list and the reference counts."""

    settings = ("block_tokens",)

    def __init__(self, shape: CacheShape, block_tokens: int = BLOCK_TOKENS):
        if block_tokens < 1:
            raise ValueError(f"block_tokens: {block_tokens!r} must be an integer >= 1")
        self.shape, self.block_tokens = shape, block_tokens
        self.device = torch.device(shape.device)
        self.layout: Layout | None = None
        self.width: int | None = None
        self.table: BlockTable | None = None  # made by `bind`, once the prompt's lengths are known
        self.pool_k: torch.Tensor | None = None
        self.pool_v: torch.Tensor | None = None
        self._step: tuple[torch.Tensor, torch.Tensor] | None = None  # this step's columns: (slots, valid), (B, T)
        self._slots: torch.Tensor | None = None  # (B, columns) pool slot of every column so far (the gather's)
        self._runs: list[list[tuple[int, int]]] = []  # each sequence's runs of slots, for the current decode step
        self._ranks: list[tuple[int, int, int]] | None = None  # lined_up(self._runs), for the current decode step

    @property
    def max_len(self) -> int:
        return self.shape.max_len

    @property
    def shared_prefix(self) -> int:
        return 0 if self.layout is None else self.layout.shared_prefix

    def bind(self, prompt_width: int, layout: Layout | None) -> None:
        """Size the pool for this generation and take the shared prefix's blocks.

        A serving system's pool spans the device and serves many batches; here it holds the blocks this
        batch takes by its last step (`BlockTable.for_lengths`), so the tensor bytes measured are the
        blocks taken, and every block is still handed out from the free list as sequences grow."""
        s = self.shape
        self.width, self.layout = prompt_width, layout
        final = seq_tokens(layout, s.batch, prompt_width, s.max_len - prompt_width)
        self.table = BlockTable.for_lengths(final, self.block_tokens, self.shared_prefix)
        dims = (s.n_layer, s.n_kv_head, self.table.n_blocks * self.block_tokens, s.head_dim)  # heads first
        self.pool_k = torch.zeros(dims, dtype=s.dtype, device=self.device)
        self.pool_v = torch.zeros(dims, dtype=s.dtype, device=self.device)

    def prefill(self, model, ids: torch.Tensor, layout: Layout | None) -> torch.Tensor | None:
        """A shared prefix is prefilled once (`prefill_shared`); None (the model runs as usual) without one."""
        if layout is None or not layout.shared_prefix:
            return None
        return prefill_shared(model, self, ids, layout)

    def _map(self, columns: int, start: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Columns start..columns: each one's pool slot per sequence (gap columns point at the sequence's slot 0,
        masked anyway) and whether it holds a token, each (B, columns - start)."""
        batch = self.shape.batch
        cols = torch.arange(start, columns).unsqueeze(0)
        if self.layout is None:
            logical, valid = cols.expand(batch, -1), torch.ones(batch, columns - start, dtype=torch.bool)
        else:
            lengths = self.layout.lengths.cpu().unsqueeze(1)
            valid = (cols < lengths) | (cols >= self.width)
            logical = torch.where(cols < self.width, cols, cols - (self.width - lengths))
            logical = torch.where(valid, logical, 0)
        table = self.padded_table(math.ceil(columns / self.block_tokens))
        block = table.gather(1, logical // self.block_tokens)
        return (block * self.block_tokens + logical % self.block_tokens).to(self.device), valid.to(self.device)

    def padded_table(self, width: int) -> torch.Tensor:
        """(B, width) long: each sequence's block ids, padded with its first block (never read: past its length)."""
        return torch.tensor([t + [t[0]] * (width - len(t)) for t in self.table.blocks], dtype=torch.long)

    def _advance(self, end: int, past_len: int) -> None:
        """A step's bookkeeping, once for all layers: blocks taken for columns past_len..end, the table checked, the
        step's slots mapped."""
        batch = self.shape.batch
        prompt = seq_tokens(self.layout, batch, self.width, 0)
        for b in range(batch):  # a prompt's columns past its length are the gap: never stored
            self.table.allocate(b, min(end, prompt[b]) if end <= self.width else prompt[b] + end - self.width)
        self.table.check()  # every step, before any gather reads by these ids
        self._step = self._map(end, past_len)  # this step's columns only (a decode step: one per sequence)
        self._slots = None  # every column's, made when a gather needs them

    def store(self, layer: int, k: torch.Tensor, v: torch.Tensor, past_len: int) -> tuple[bool, int]:
        """Write the new K,V into the blocks (taking blocks at layer 0); whether this is a shared prefix's stage, and
        the end."""
        if self.pool_k is None:  # a plain rectangular batch: its width is its first forward's
            self.bind(k.size(2), None)
        end = past_len + k.size(2)
        self.shape.check_fits(end, "paged cache")
        batch = self.shape.batch
        prefix_stage = k.size(0) == 1 and batch > 1  # prefill_shared: one sequence's prefix for all
        if layer == 0:
            self._advance(end, past_len)
        if prefix_stage:
            k, v = k.expand(batch, -1, -1, -1), v.expand(batch, -1, -1, -1)
        slots, valid = self._step
        whole = self.layout is None and not prefix_stage  # every column holds a token: no mask to apply
        for pool, x in ((self.pool_k, k), (self.pool_v, v)):
            if whole:
                pool[layer][:, slots] = x.transpose(0, 1)  # (H, B, T, D)
            else:
                pool[layer][:, slots[valid]] = x.transpose(0, 1)[:, valid]  # (H, stored, D)
        return prefix_stage, end

    def update(self, layer, k, v, past_len):
        prefix_stage, _ = self.store(layer, k, v, past_len)
        if k.size(2) == 1 and layer == 0:  # a decode step that did not read the runs (a probe, math, a ragged batch)
            self.attention_path = attention_path()
        if self._slots is None:
            self._slots = self._map(past_len + k.size(2))[0]
        k_all = self.pool_k[layer][:, self._slots].transpose(0, 1)  # (B, H, end, D)
        v_all = self.pool_v[layer][:, self._slots].transpose(0, 1)
        return (k_all[:1], v_all[:1]) if prefix_stage else (k_all, v_all)

    def attend_decode(self, layer, q, k, v, past_len):
        """A decode step that reads each sequence's blocks in place: kvbench's C++ kernel through the block table
        (any batch: ragged, a shared prefix), else a rectangular batch's runs of blocks (`merged`)."""
        if self.pool_k is not None and fused.use_kernel(q, self.pool_k):
            self.store(layer, k, v, past_len)
            if layer == 0:  # the same table for every layer of this step
                self._table = self.padded_table(max(len(b) for b in self.table.blocks))
                self._lengths = torch.tensor(self.table.tokens, dtype=torch.long)
                self.attention_path = attention_path(KERNEL_PATH)
            return decode_attention.paged(q, self.pool_k[layer], self.pool_v[layer], self._table, self._lengths,
                                          self.block_tokens)  # fmt: skip
        if self.layout is not None or FLASH is None or q.device.type != "cpu" or self.pool_k is None:
            return None  # a ragged batch or a shared prefix (masked: the gather), or no flash kernel here
        _, end = self.store(layer, k, v, past_len)
        if layer == 0:  # the same runs (and whether they line up) for every layer of this step
            self._runs = [self.table.runs(b, end) for b in range(self.shape.batch)]
            self._ranks = lined_up(self._runs)
            self.attention_path = attention_path(RUNS_PATH)
        pk, pv = self.pool_k[layer], self.pool_v[layer]
        if self._ranks is not None:  # one strided view per rank of run, every sequence at once
            return merged(q, [(across(pk, s, step, n, len(self._runs)), across(pv, s, step, n, len(self._runs)))
                              for s, step, n in self._ranks])  # fmt: skip
        outs = [merged(q[b : b + 1], [(pk[None, :, s : s + n], pv[None, :, s : s + n]) for s, n in runs])
                for b, runs in enumerate(self._runs)]  # fmt: skip
        return torch.cat(outs)

    # A ragged batch's decode step comes here too (its mask is the layout, which the block table already holds).
    reads_layout = True

    # The static-shape step (a rectangular batch under --compile), as vLLM splits its work: the block bookkeeping in
    # Python once per step, outside the compiled graph (`before_step`), which hands the graph tensors of fixed shape
    # (each sequence's slot for this step, its length, its block table), and the graph writes the step's K,V by
    # those slots and attends through the table.
    def before_step(self, pos: int) -> None:
        """Blocks for position `pos`, the table checked, and the step's tensors written in place."""
        self._advance(pos + 1, pos)
        if self.step_slots is None:
            width = math.ceil(self.shape.max_len / self.block_tokens)
            self.step_table = torch.zeros((self.shape.batch, width), dtype=torch.long, device=self.device)
            self.step_slots = torch.zeros(self.shape.batch, dtype=torch.long, device=self.device)
            self.step_lengths = torch.zeros(self.shape.batch, dtype=torch.long, device=self.device)
        self.step_table.copy_(self.padded_table(self.step_table.size(1)))
        self.step_slots.copy_(self._step[0][:, 0])
        self.step_lengths.copy_(torch.tensor(self.table.tokens))

    step_table = step_slots = step_lengths = None  # made by the first `before_step`

    def write_at(self, layer: int, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor):
        """The static-shape step's store (whole-buffer index_put_s at `step_slots`), and without the kernel every
        position's K,V gathered through the block table (the caller masks those after pos)."""
        self._write_step(layer, k, v)
        self.attention_path = attention_path()
        t = torch.arange(self.shape.max_len, device=pos.device)
        slots = self.step_table[:, t // self.block_tokens] * self.block_tokens + t % self.block_tokens  # (B, T)
        return self.pool_k[layer][:, slots].transpose(0, 1), self.pool_v[layer][:, slots].transpose(0, 1)

    def attend_at(self, layer, q, k, v, pos, mask):
        """The static-shape step through kvbench's C++ kernel (each sequence's blocks read in place); None (write_at
        and the module's masked attention) where it does not run."""
        if self.layout is not None or q.size(2) != 1 or not fused.use_kernel(q, self.pool_k):
            return None
        self._write_step(layer, k, v)
        self.attention_path = attention_path(KERNEL_PATH)
        return decode_attention.paged(q, self.pool_k[layer], self.pool_v[layer], self.step_table, self.step_lengths,
                                      self.block_tokens)  # fmt: skip

    def _write_step(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        at = (self.step_slots.new_full(self.step_slots.shape, layer), slice(None), self.step_slots)  # (B, H, D)
        self.pool_k[at] = k[:, :, 0]
        self.pool_v[at] = v[:, :, 0]

    def reset(self) -> None:
        """Empty the cache in place for the next generation (a compiled step keeps the pool's addresses): the pool
        zeroed, a fresh block table for the same lengths."""
        if self.pool_k is None:
            return
        self.pool_k.zero_()
        self.pool_v.zero_()
        s = self.shape
        final = seq_tokens(self.layout, s.batch, self.width, s.max_len - self.width)
        self.table = BlockTable.for_lengths(final, self.block_tokens, self.shared_prefix)
        self._step = self._slots = None

    def tensors(self):
        return [t for t in (self.pool_k, self.pool_v) if t is not None]

    def token_bytes(self) -> int:
        """K and V bytes of one position of one sequence, every layer and K/V head."""
        s = self.shape
        return kv_bytes_per_token(s.n_layer, s.n_kv_head, s.head_dim, s.dtype.itemsize, "paged")

    def bytes_reserved(self) -> int:
        """Bytes of the blocks handed out so far (counted from the block table)."""
        taken = 0 if self.table is None else self.table.blocks_taken()
        return taken * self.block_tokens * self.token_bytes()

    def bytes_used(self) -> int:
        """Bytes of the real tokens stored, a shared prefix's full blocks counted once."""
        return (0 if self.table is None else self.table.tokens_stored()) * self.token_bytes()


def prefill_shared(model, cache: PagedCache, prompt: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The prompt's prefill with its shared prefix computed once: one sequence's prefix (batch 1) writes
    the blocks every sequence holds, then every sequence's own tokens are prefilled after it."""
    s = layout.shared_prefix
    model(prompt[:1, :s], cache, 0)
    return model(prompt[:, s:], cache, s, layout=layout)
