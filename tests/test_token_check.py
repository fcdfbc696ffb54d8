"""The token check (kvbench/measure/token_check.py): a cache's tokens against recomputing everything."""

import torch

from kvbench.engines.generate import Generation, GenerationPlan
from kvbench.engines.registry import build
from kvbench.measure.token_check import check_record, token_check

PROMPT = torch.randint(0, 50257, (2, 5), generator=torch.Generator().manual_seed(1))


def test_an_exact_cache_matches_and_the_reference_is_recompute(tiny_model):
    run = build("kvbench", tiny_model).generate
    static = token_check(tiny_model, run, PROMPT, "static", 6, runs_our_model=True)
    assert static.fields["matches_reference"] is True and static.fields["first_mismatch_step"] is None
    assert static.fields["reference_steps"] == 6 and static.fields["max_logit_diff"] < 1e-4
    none = token_check(tiny_model, run, PROMPT, "none", 6, runs_our_model=True)
    assert none.fields["max_logit_diff"] == 0.0 and torch.equal(none.tokens, static.tokens)
    assert token_check(tiny_model, run, PROMPT, "static", 0, True).tokens is None


def test_a_cache_that_diverges_is_caught_at_its_first_wrong_step(tiny_model):
    honest = build("kvbench", tiny_model).generate

    def wrong_from_step_3(prompt, new_tokens, kv_mode, **kw):
        gen = honest(prompt, new_tokens, kv_mode, keep_logits=True)
        tokens = gen.tokens.clone()
        tokens[:, 3:] = (tokens[:, 3:] + 1) % 50257
        return Generation(tokens=tokens, cache=None, logits=gen.logits)

    checked = token_check(tiny_model, wrong_from_step_3, PROMPT, "static", 6, runs_our_model=True)
    assert checked.fields["matches_reference"] is False and checked.fields["first_mismatch_step"] == 3


def test_the_timed_tokens_must_repeat_the_checked_ones(tiny_model):
    run = build("kvbench", tiny_model).generate
    checked = token_check(tiny_model, run, PROMPT, "concat", 4, runs_our_model=True)
    timed = run(PROMPT, 6, "concat").tokens
    record = check_record(checked, timed)
    assert record["timed_equals_checked"] is True and len(record["tokens_sha256"]) == 64
    other = timed.clone()
    other[0, 1] += 1
    assert check_record(checked, other)["timed_equals_checked"] is False
    assert check_record(checked, other)["tokens_sha256"] != record["tokens_sha256"]
    unchecked = token_check(tiny_model, run, PROMPT, "concat", 0, True)
    assert "timed_equals_checked" not in check_record(unchecked, timed)


def test_every_cached_cell_is_priced_an_exact_one_at_nothing(tiny_model):
    run = build("kvbench", tiny_model).generate
    static = token_check(tiny_model, run, PROMPT, "static", 6, runs_our_model=True).fields
    assert static["agreement_rate"] == 1.0 and static["kl_mean"] < 1e-6 and static["logit_diff_max"] < 1e-4
    assert "kv_note" not in static


def test_an_approximate_cell_is_priced_over_the_whole_generation(tiny_model):
    """A 2 + 3 sliding window over a 5-token prompt and 24 steps: it forgets, and the price says so."""
    engine = build("kvbench", tiny_model)
    engine.plan = GenerationPlan({"window": 3, "sinks": 2})  # as a cell sets its engine's plan
    run = engine.generate
    fields = token_check(tiny_model, run, PROMPT, "sliding", 24, runs_our_model=True).fields
    assert 0.0 <= fields["agreement_rate"] <= 1.0 and fields["kl_mean"] > 1e-4
    assert fields["kl_max"] >= fields["kl_mean"] and fields["logit_diff_max"] >= (fields["max_logit_diff"] or 0)
    assert "absolute positions" in fields["kv_note"]
