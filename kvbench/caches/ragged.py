"""Ragged batches and a shared prefix: a batch whose sequences have different prompt lengths.

Layout: every sequence starts at column 0 and its prompt is padded on the right to the batch's
width P; the decode tokens then all go to column P, P+1, ... Sequence b's token at column c sits at
position c while c < P and at c - (P - L_b) after, so its positions run 0..L_b-1, L_b, L_b+1, ...
as if it were alone. Keys in the gap [L_b, P) are masked out.

Why right padding rather than left: every sequence's prompt (and so a shared prefix and its
positions) starts at column 0, so a prefix common to the batch has the same keys and values in
every sequence and can be prefilled once at past length 0 (kvbench/caches/paged.py); causal
masking already keeps a real prompt token from seeing the pads after it. The price is per-sequence
positions once decoding starts, which the models take as a (B, T) tensor.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The kv modes whose caches store columns as the layout says (the exact ones and paged).
RAGGED_KV_MODES = ("none", "concat", "static", "paged")


@dataclass(frozen=True)
class Layout:
    """A batch's prompt lengths (B,), its padded width P, and the first tokens every sequence shares."""

    lengths: torch.Tensor  # (B,) long, each in [1, width]
    width: int
    shared_prefix: int = 0

    @property
    def gap(self) -> torch.Tensor:
        return self.width - self.lengths

    def positions(self, start: int, t: int) -> torch.Tensor:
        """(B, t) positions of columns start..start+t-1."""
        cols = torch.arange(start, start + t, device=self.lengths.device).unsqueeze(0)
        return torch.where(cols < self.width, cols, cols - self.gap.unsqueeze(1))

    def key_valid(self, t_k: int) -> torch.Tensor:
        """(B, t_k) True where column j holds a real token of sequence b (a prompt token or a decoded one)."""
        cols = torch.arange(t_k, device=self.lengths.device).unsqueeze(0)
        return (cols < self.lengths.unsqueeze(1)) | (cols >= self.width)

    def mask(self, start: int, t: int) -> torch.Tensor:
        """(B, 1, t, start + t) attention mask, True = may attend: causal, and never into the gap.

        A pad query still sees its sequence's real keys before it, so no row is empty (no NaN)."""
        t_k = start + t
        q_cols = torch.arange(start, t_k, device=self.lengths.device).unsqueeze(1)
        causal = torch.arange(t_k, device=self.lengths.device).unsqueeze(0) <= q_cols
        return (causal.unsqueeze(0) & self.key_valid(t_k).unsqueeze(1)).unsqueeze(1)

    def last(self, x: torch.Tensor, start: int) -> torch.Tensor:
        """x (B, t, C) -> (B, 1, C): each sequence's last real column (its last prompt token in a prefill)."""
        t = x.size(1)
        if start + t != self.width:  # a decode step (or a recompute past the prompt): the newest column
            return x[:, -1:]
        idx = (self.lengths - 1 - start).clamp_min(0).to(x.device)
        return x[torch.arange(x.size(0), device=x.device), idx].unsqueeze(1)

    def reference_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """All-column logits (B, P + steps - 1, V) of a teacher-forced forward -> (B, steps, V) per token."""
        b = torch.arange(logits.size(0), device=logits.device)
        first = logits[b, (self.lengths - 1).to(logits.device)].unsqueeze(1)
        return torch.cat([first, logits[:, self.width :]], dim=1)


def spread_lengths(batch: int, prompt_len: int, spread: float, seed: int) -> torch.Tensor:
    """(batch,) prompt lengths spread evenly from (1 - spread) * prompt_len up to prompt_len, in a seeded
    order (so the longest is not always the last sequence)."""
    shortest = max(1, round(prompt_len * (1.0 - spread)))
    even = torch.linspace(shortest, prompt_len, batch).round().long() if batch > 1 else torch.tensor([prompt_len])
    order = torch.randperm(batch, generator=torch.Generator().manual_seed(seed))
    return even[order]


def layout_prompt(prompt: torch.Tensor, spread: float, shared_prefix: int, seed: int) -> Layout | None:
    """Shape `prompt` (B, P) in place into a ragged batch sharing its first `shared_prefix` tokens; None
    when neither is asked for (the batch stays rectangular and every model runs its plain path)."""
    if spread <= 0 and shared_prefix <= 0:
        return None
    B, P = prompt.shape
    lengths = spread_lengths(B, P, spread, seed) if spread > 0 else torch.full((B,), P, dtype=torch.long)
    if shared_prefix > 0:
        prompt[:, :shared_prefix] = prompt[0, :shared_prefix]
    cols = torch.arange(P).unsqueeze(0)
    prompt.masked_fill_(cols >= lengths.unsqueeze(1), 0)  # pads: never attended to, zero for a stable hash
    return Layout(lengths.to(prompt.device), P, shared_prefix)


def min_length(batch: int, prompt_len: int, spread: float) -> int:
    """The shortest prompt a spread gives (what a shared prefix must stay below)."""
    return prompt_len if spread <= 0 or batch == 1 else max(1, round(prompt_len * (1.0 - spread)))
