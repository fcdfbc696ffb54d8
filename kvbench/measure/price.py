"""The price of a cache: how far its next-token distributions are from the exact model's, step by step.

Both sides see the same context at every step: the reference is the no-cache forward over the prompt
and the cell's own tokens (teacher-forced), so a first wrong token does not snowball into every later
step being compared against a different text. Over every checked step (all batch rows):

    agreement_rate   the share of steps whose token is the reference's argmax
    kl_mean, kl_max  KL(reference || cache) of the next-token distributions, in nats
    logit_diff_max   the largest |logit difference| anywhere (the record's max_logit_diff stops at
                     the first mismatch; this does not)

An exact cache costs nothing: agreement 1, KL 0 up to rounding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FIELDS = ("agreement_rate", "kl_mean", "kl_max", "logit_diff_max")


def price(tokens: torch.Tensor, logits: list[torch.Tensor], ref_logits: torch.Tensor) -> dict:
    """tokens (B, S) chosen by the cell, logits S x (B, V) it chose them from, ref_logits (B, S, V)."""
    mine = torch.stack([x.to(ref_logits.device).float() for x in logits], dim=1)  # (B, S, V)
    ref = ref_logits.float()
    agree = (tokens.to(ref.device) == ref.argmax(dim=-1)).float().mean()
    ref_logp, my_logp = F.log_softmax(ref, dim=-1), F.log_softmax(mine, dim=-1)
    kl = (ref_logp.exp() * (ref_logp - my_logp)).sum(dim=-1).clamp_min(0.0)  # (B, S); rounding can dip below 0
    return {
        "agreement_rate": float(agree),
        "kl_mean": float(kl.mean()),
        "kl_max": float(kl.max()),
        "logit_diff_max": float((mine - ref).abs().max()),
    }


def no_price() -> dict:
    """The fields where nothing was compared (no check, or an engine that reports no logits)."""
    return dict.fromkeys(FIELDS)
