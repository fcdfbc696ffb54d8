"""A paged cache's allocator apart from its storage, as vLLM v1 keeps its BlockPool apart from the tensors.

Blocks of `block_tokens` positions are numbered 0..n_blocks-1; a sequence's block list names, in
order, the blocks holding its positions. A sequence takes a block from the free list only when its
last block is full. A prefix that every sequence shares is stored once: its full blocks sit at the
head of every sequence's list, with a reference count of the batch.

Torch-free and on lengths alone, so the cache (kvbench/caches/paged.py, which keeps the pool tensors
and gathers by these ids) and the byte accounting by step (kvbench/measure/alloc.py) share one
allocator instead of the accounting re-deriving it with a formula of its own.
"""

from __future__ import annotations

import math


class BlockTableError(ValueError):
    """A block table names a block outside the pool, or shares one it does not hold a reference to."""


def blocks_needed(tokens: list[int], block_tokens: int, shared_prefix: int = 0) -> int:
    """Blocks that sequences of `tokens` real tokens whose first `shared_prefix` are common take:
    the prefix's full blocks once, then each sequence's remaining tokens rounded up to blocks.
    What a pool must hold for those lengths (the table hands out exactly this many)."""
    shared = shared_prefix // block_tokens
    return shared + sum(math.ceil((t - shared * block_tokens) / block_tokens) for t in tokens)


class BlockTable:
    """Free list, reference counts and per-sequence block lists for `n_seqs` sequences in a pool of
    `n_blocks` blocks; the shared prefix's full blocks are taken at construction."""

    def __init__(self, n_blocks: int, block_tokens: int, n_seqs: int, shared_prefix: int = 0):
        if block_tokens < 1:
            raise ValueError(f"block_tokens: {block_tokens!r} must be an integer >= 1")
        self.block_tokens = block_tokens
        self.shared_prefix = shared_prefix
        self.refs = [0] * n_blocks
        self.free = list(range(n_blocks - 1, -1, -1))  # pop() hands out block 0 first
        self.blocks: list[list[int]] = [[] for _ in range(n_seqs)]
        self.tokens = [0] * n_seqs  # real tokens each sequence has stored
        for _ in range(self.shared_blocks):
            block = self._pop(0, shared_prefix)
            self.refs[block] = n_seqs
            for seq_blocks in self.blocks:
                seq_blocks.append(block)

    @classmethod
    def for_lengths(cls, final_tokens: list[int], block_tokens: int, shared_prefix: int = 0) -> BlockTable:
        """A table whose pool holds just the blocks sequences reaching `final_tokens` take."""
        n_blocks = blocks_needed(final_tokens, block_tokens, shared_prefix)
        return cls(n_blocks, block_tokens, len(final_tokens), shared_prefix)

    @property
    def n_blocks(self) -> int:
        return len(self.refs)

    @property
    def shared_blocks(self) -> int:
        """The shared prefix's full blocks (its partial last block is copied into every sequence's own)."""
        return self.shared_prefix // self.block_tokens

    def _pop(self, seq: int, tokens: int) -> int:
        if not self.free:
            raise BlockTableError(f"block pool exhausted: sequence {seq} needs a block for {tokens} tokens")
        return self.free.pop()

    def allocate(self, seq: int, tokens: int) -> None:
        """Let sequence `seq` hold `tokens` real tokens in all, taking blocks from the free list as it needs."""
        while len(self.blocks[seq]) * self.block_tokens < tokens:
            block = self._pop(seq, tokens)
            self.refs[block] = 1
            self.blocks[seq].append(block)
        self.tokens[seq] = max(self.tokens[seq], tokens)

    def append(self, seq: int, n_tokens: int = 1) -> None:
        """Store `n_tokens` more tokens of sequence `seq`."""
        self.allocate(seq, self.tokens[seq] + n_tokens)

    def check(self) -> None:
        """Raise BlockTableError for an id outside the pool or a block held other than its reference count says."""
        held = [0] * self.n_blocks
        for seq, seq_blocks in enumerate(self.blocks):
            for block in seq_blocks:
                if not 0 <= block < self.n_blocks:
                    raise BlockTableError(
                        f"block table of sequence {seq}: block {block} is outside the pool of {self.n_blocks}"
                    )
                held[block] += 1
        for block, (count, ref) in enumerate(zip(held, self.refs)):
            if count != ref:
                raise BlockTableError(f"block table: block {block} is held {count} times, its reference count is {ref}")

    def runs(self, seq: int, tokens: int) -> list[tuple[int, int]]:
        """The first `tokens` positions of sequence `seq` as (first slot, positions) runs of consecutive slots in
        the pool: blocks with consecutive ids merge into one run, so attention can read each run in place."""
        out: list[tuple[int, int]] = []
        for i, block in enumerate(self.blocks[seq][: math.ceil(tokens / self.block_tokens)]):
            n = min(self.block_tokens, tokens - i * self.block_tokens)
            start = block * self.block_tokens
            if out and out[-1][0] + out[-1][1] == start:
                out[-1] = (out[-1][0], out[-1][1] + n)
            else:
                out.append((start, n))
        return out

    def blocks_taken(self) -> int:
        """Blocks handed out so far, a shared one counted once (counted from the sequences' lists)."""
        return len({block for seq_blocks in self.blocks for block in seq_blocks})

    def tokens_stored(self) -> int:
        """Real tokens stored, the shared prefix's full blocks counted once."""
        shared = self.shared_blocks * self.block_tokens
        return shared + sum(n - shared for n in self.tokens)
