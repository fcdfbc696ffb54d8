"""The token check: a cell's greedy tokens against kvbench's no-cache forward, and the timed ones against both.

An exact cache proves itself here: its tokens equal what recomputing everything ('none') gives.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch

from kvbench.caches.ragged import Layout
from kvbench.caches.sliding import kv_note
from kvbench.engines.base import Runner
from kvbench.measure.price import price
from kvbench.models.family import Model


@dataclass(frozen=True)
class TokenCheck:
    """The record's `check` fields known before timing, and the checked tokens (None when nothing was checked)."""

    fields: dict
    tokens: torch.Tensor | None


def token_check(
    model: Model,
    run: Runner,
    prompt: torch.Tensor,
    kv_mode: str,
    steps: int,
    runs_our_model: bool,
    layout: Layout | None = None,
) -> TokenCheck:
    """Greedy tokens of this cell vs kvbench's no-cache forward over the first `steps` tokens.

    The reference is one forward of ours without a cache over the prompt and this cell's own
    tokens (teacher-forced): up to the first mismatch the contexts are the same, so it gives the
    logits recompute ('none') would have given at each step, for the cost of one prefill instead
    of `steps` of them.
    """
    if steps == 0:
        return TokenCheck(_fields(None, 0, None, None), None)
    mine = run(prompt, steps, kv_mode, keep_logits=True)
    if kv_mode == "none" and runs_our_model:  # it is the reference
        return TokenCheck(_fields(True, steps, None, 0.0), mine.tokens)
    with torch.inference_mode():
        seq = torch.cat([prompt, mine.tokens[:, :-1].to(prompt.device)], dim=1)
        if layout is None:
            ref_logits = model(seq, last_only=False)[:, prompt.size(1) - 1 :].float()  # (B, steps, V)
        else:  # a ragged batch: each sequence's first token follows its own last prompt token
            ref_logits = layout.reference_logits(model(seq, last_only=False, layout=layout)).float()
    ref_tokens = ref_logits.argmax(dim=-1)
    differ = (mine.tokens.to(ref_tokens.device) != ref_tokens).any(dim=0).nonzero()
    first = int(differ[0]) if len(differ) else None
    upto = steps if first is None else first + 1  # after a divergence the contexts differ
    max_diff = None
    if mine.logits is not None:  # an engine that reports no logits is checked on its tokens alone
        max_diff = max(
            float((mine.logits[i].to(ref_logits.device) - ref_logits[:, i]).abs().max()) for i in range(upto)
        )
    fields = _fields(first is None, steps, first, max_diff)
    if mine.logits is not None:  # the price over every step, the contexts being the same (kvbench/measure/price.py)
        fields.update(price(mine.tokens, mine.logits, ref_logits))
    if (note := kv_note(kv_mode, model.config.family)) is not None:
        fields["kv_note"] = note
    return TokenCheck(fields, mine.tokens)


def _fields(matches: bool | None, steps: int, first: int | None, max_diff: float | None) -> dict:
    return {
        "matches_reference": matches,
        "reference_steps": steps,
        "first_mismatch_step": first,
        "max_logit_diff": max_diff,
    }


def check_record(checked: TokenCheck, timed_tokens: torch.Tensor) -> dict:
    """The record's `check`: the token check, the timed tokens' hash, and whether they repeat the checked ones.

    Greedy decoding is deterministic, so the timed generation must begin with exactly the checked tokens.
    """
    fields = {**checked.fields, "tokens_sha256": hashlib.sha256(timed_tokens.cpu().numpy().tobytes()).hexdigest()}
    if checked.tokens is not None:
        fields["timed_equals_checked"] = bool(torch.equal(timed_tokens[:, : checked.tokens.size(1)], checked.tokens))
    return fields
