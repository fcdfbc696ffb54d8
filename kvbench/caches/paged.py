"""A paged KV cache, as vLLM allocates one: fixed-size blocks from a pool, one block table per sequence.

K/V live in a pool of blocks of `block_tokens` positions. A sequence takes a block from the free list
only when its last block is full, so what it holds is its own tokens rounded up to one block, whatever
the other sequences' lengths (a static cache reserves every sequence the longest one's room). A prefix
that every sequence of the batch shares is stored once: its full blocks sit in every sequence's table
with a reference count, and it is prefilled once (`prefill_shared`).

Attention reads a sequence's keys by gathering its blocks' slots into a dense (B, H, T, D) tensor
(a plain gather, then the same SDPA every cache uses): `attention_path` says so in the record, and
why not flex_attention's PagedAttention.
Block tables are checked before every gather: an id outside the pool, or a block held by more
sequences than its reference count, is an error, never a wrong answer.
"""

from __future__ import annotations

import importlib.util
import math

import torch

from kvbench.caches.base import KVCache
from kvbench.caches.ragged import Layout
from kvbench.core.presets import BLOCK_TOKENS

ATTENTION_PATH = "paged: blocks gathered into a dense K/V per step (torch index), then SDPA"
PAGED_FLEX = "torch.nn.attention.experimental._paged_attention"
# Why not PyTorch's PagedAttention for flex_attention: true of torch 2.13 on a CPU and a GPU alike
# (tests/test_kv_cache_paged.py holds the first half to the installed torch).
NOT_FLEX = (
    "not flex_attention's PagedAttention: without torch.compile flex_attention runs an unfused fallback "
    "that materialises the scores over every slot of the pool, and its fused kernel needs each shape "
    "compiled, which kvbench's eager paged mode does not do"
)


class BlockTableError(ValueError):
    """A block table names a block outside the pool, or shares one it does not hold a reference to."""


def attention_path() -> str:
    """The record's `kv_attention_path`: how attention read the blocks, and why not PagedAttention."""
    if importlib.util.find_spec(PAGED_FLEX) is None:
        return f"{ATTENTION_PATH}; this torch has no flex_attention PagedAttention ({PAGED_FLEX})"
    return f"{ATTENTION_PATH}; {NOT_FLEX}"


def seq_tokens(layout: Layout | None, batch: int, width: int, step: int) -> list[int]:
    """Real tokens each sequence has cached once `width + step` columns are (prompt + `step` decoded)."""
    if layout is None:
        return [width + step] * batch
    return [int(n) + step for n in layout.lengths.tolist()]


def paged_blocks(tokens: list[int], block_tokens: int, shared_prefix: int) -> int:
    """Blocks taken by sequences of `tokens` real tokens whose first `shared_prefix` are common:
    the prefix's full blocks once, then each sequence's remaining tokens rounded up to blocks."""
    shared = shared_prefix // block_tokens
    own = sum(math.ceil((t - shared * block_tokens) / block_tokens) for t in tokens)
    return shared + own


class PagedCache(KVCache):
    def __init__(
        self,
        n_layer: int,
        batch: int,
        n_kv_head: int,
        max_len: int,
        head_dim: int,
        dtype: torch.dtype,
        device: torch.device | str,
        *,
        block_tokens: int = BLOCK_TOKENS,
    ):
        if block_tokens < 1:
            raise ValueError(f"block_tokens: {block_tokens!r} must be an integer >= 1")
        self.n_layer, self.batch, self.n_kv_head, self.head_dim = n_layer, batch, n_kv_head, head_dim
        self.max_len, self.dtype, self.device = max_len, dtype, torch.device(device)
        self.block_tokens = block_tokens
        self.layout: Layout | None = None
        self.width: int | None = None
        self.shared_prefix = 0
        self.pool_k: torch.Tensor | None = None
        self.pool_v: torch.Tensor | None = None
        self.tables: list[list[int]] = [[] for _ in range(batch)]
        self.refs: list[int] = []
        self.free: list[int] = []
        self.tokens = [0] * batch  # real tokens each sequence has stored
        self._slots: torch.Tensor | None = None  # (B, columns) pool slot of each column, for the current step
        self._valid: torch.Tensor | None = None

    def bind(self, width: int, layout: Layout | None) -> None:
        """Size the pool for this generation and take the shared prefix's blocks.

        A serving system's pool spans the device and serves many batches; here it holds the blocks this
        batch takes by its last step (the same count `paged_blocks` gives), so the tensor bytes measured
        are the blocks taken, and every block is still handed out from the free list as sequences grow."""
        self.width, self.layout = width, layout
        self.shared_prefix = 0 if layout is None else layout.shared_prefix
        final = seq_tokens(layout, self.batch, width, self.max_len - width)
        n_blocks = paged_blocks(final, self.block_tokens, self.shared_prefix)
        shape = (self.n_layer, n_blocks * self.block_tokens, self.n_kv_head, self.head_dim)
        self.pool_k = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.pool_v = torch.zeros(shape, dtype=self.dtype, device=self.device)
        self.refs = [0] * n_blocks
        self.free = list(range(n_blocks - 1, -1, -1))  # pop() hands out block 0 first
        for _ in range(self.shared_prefix // self.block_tokens):
            block = self.free.pop()
            self.refs[block] = self.batch
            for table in self.tables:
                table.append(block)

    def _take(self, b: int, tokens: int) -> None:
        while len(self.tables[b]) * self.block_tokens < tokens:
            if not self.free:
                raise BlockTableError(f"block pool exhausted: sequence {b} needs a block for {tokens} tokens")
            block = self.free.pop()
            self.refs[block] = 1
            self.tables[b].append(block)

    def check_tables(self) -> None:
        """Raise BlockTableError for an id outside the pool or a block shared beyond its reference count."""
        n_blocks = len(self.refs)
        held = [0] * n_blocks
        for b, table in enumerate(self.tables):
            for block in table:
                if not 0 <= block < n_blocks:
                    raise BlockTableError(
                        f"block table of sequence {b}: block {block} is outside the pool of {n_blocks}"
                    )
                held[block] += 1
        for block, (count, ref) in enumerate(zip(held, self.refs)):
            if count != ref:
                raise BlockTableError(f"block table: block {block} is held {count} times, its reference count is {ref}")

    def _map(self, columns: int) -> None:
        """Each column's pool slot per sequence (gap columns point at the sequence's slot 0, masked anyway)."""
        cols = torch.arange(columns).unsqueeze(0)
        if self.layout is None:
            logical, valid = cols.expand(self.batch, -1), torch.ones(self.batch, columns, dtype=torch.bool)
        else:
            lengths = self.layout.lengths.cpu().unsqueeze(1)
            valid = (cols < lengths) | (cols >= self.width)
            logical = torch.where(cols < self.width, cols, cols - (self.width - lengths))
            logical = torch.where(valid, logical, 0)
        table = torch.tensor([t + [t[0]] * (math.ceil(columns / self.block_tokens) - len(t)) for t in self.tables])
        block = table.gather(1, logical // self.block_tokens)
        self._slots = (block * self.block_tokens + logical % self.block_tokens).to(self.device)
        self._valid = valid.to(self.device)

    def update(self, layer, k, v, past_len):
        if self.pool_k is None:  # a plain rectangular batch: its width is its first forward's
            self.bind(k.size(2), None)
        end = past_len + k.size(2)
        if end > self.max_len:
            raise ValueError(f"paged cache holds {self.max_len} positions, step needs {end}")
        prefix_stage = k.size(0) == 1 and self.batch > 1  # prefill_shared: one sequence's prefix for all
        if layer == 0:
            prompt = seq_tokens(self.layout, self.batch, self.width, 0)
            for b in range(self.batch):  # a prompt's columns past its length are the gap: never stored
                self.tokens[b] = min(end, prompt[b]) if end <= self.width else prompt[b] + end - self.width
                self._take(b, self.tokens[b])
            self.check_tables()
            self._map(end)
        if prefix_stage:
            k, v = k.expand(self.batch, -1, -1, -1), v.expand(self.batch, -1, -1, -1)
        slots, valid = self._slots[:, past_len:end], self._valid[:, past_len:end]
        for pool, x in ((self.pool_k, k), (self.pool_v, v)):
            pool[layer, slots[valid]] = x.transpose(1, 2)[valid]
        k_all = self.pool_k[layer][self._slots].transpose(1, 2)  # (B, H, end, D)
        v_all = self.pool_v[layer][self._slots].transpose(1, 2)
        return (k_all[:1], v_all[:1]) if prefix_stage else (k_all, v_all)

    def tensors(self):
        return [t for t in (self.pool_k, self.pool_v) if t is not None]

    def token_bytes(self) -> int:
        """K and V bytes of one position of one sequence, every layer and K/V head."""
        return 2 * self.n_layer * self.n_kv_head * self.head_dim * self.dtype.itemsize

    def bytes_reserved(self) -> int:
        """Bytes of the blocks handed out so far (counted from the tables)."""
        return len({b for table in self.tables for b in table}) * self.block_tokens * self.token_bytes()

    def bytes_used(self) -> int:
        """Bytes of the real tokens stored, a shared prefix's full blocks counted once."""
        shared = (self.shared_prefix // self.block_tokens) * self.block_tokens
        own = sum(n - shared for n in self.tokens)
        return (shared + own) * self.token_bytes()


def prefill_shared(model, cache: PagedCache, prompt: torch.Tensor, layout: Layout) -> torch.Tensor:
    """The prompt's prefill with its shared prefix computed once: one sequence's prefix (batch 1) writes
    the blocks every sequence holds, then every sequence's own tokens are prefilled after it."""
    s = layout.shared_prefix
    model(prompt[:1, :s], cache, 0)
    return model(prompt[:, s:], cache, s, layout=layout)
