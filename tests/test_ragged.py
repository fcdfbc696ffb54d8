"""Ragged batches: every sequence's tokens equal its own generation alone, for none, concat, static and
paged on both families; the layout's lengths, positions and mask; the cell's one-line errors."""

import functools
from dataclasses import replace

import pytest
import torch

from kvbench.caches.ragged import layout_prompt, spread_lengths
from kvbench.core.presets import preset
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.measure.spec import CellSpec, UsageError
from kvbench.measure.token_check import token_check
from kvbench.models.family import build_random


@pytest.fixture(scope="module", params=["tiny", "tiny-llama"])
def model(request):
    return build_random(preset(request.param), "cpu", torch.float32, seed=0, for_decoding=True)


def test_lengths_spread_evenly_up_to_the_prompt_in_a_seeded_order():
    lengths = spread_lengths(5, 20, 0.5, seed=3)
    assert sorted(lengths.tolist()) == [10, 12, 15, 18, 20]
    assert torch.equal(lengths, spread_lengths(5, 20, 0.5, seed=3))


@pytest.fixture(scope="module")
def alone(model):
    """Each sequence's tokens generated alone with no cache, once per model for every mode's test."""
    tokens = {}

    def get(prompt: torch.Tensor) -> torch.Tensor:
        key = tuple(prompt.flatten().tolist())
        if key not in tokens:
            tokens[key] = generate(model, prompt, 5, "none").tokens
        return tokens[key]

    return get


@pytest.mark.parametrize(
    "kv_mode, shared_prefix",  # a shared prefix changes how paged prefills; the others only see equal tokens
    [("none", 0), ("concat", 0), ("static", 0), ("paged", 0), ("paged", 5)],
)
def test_each_sequence_gets_the_tokens_it_gets_alone(model, alone, kv_mode, shared_prefix):
    prompt = torch.randint(0, model.config.vocab_size, (4, 18), generator=torch.Generator().manual_seed(2))
    layout = layout_prompt(prompt, 0.6, shared_prefix, seed=1)
    assert len(set(layout.lengths.tolist())) > 1
    plan = GenerationPlan({"block_tokens": 4} if kv_mode == "paged" else {}, layout)
    batch = generate(model, prompt, 5, kv_mode, plan=plan).tokens
    for b, n in enumerate(layout.lengths.tolist()):
        assert torch.equal(batch[b : b + 1], alone(prompt[b : b + 1, :n])), f"sequence {b} (length {n})"


def test_the_gap_is_masked_and_positions_continue_per_sequence():
    prompt = torch.ones(2, 6, dtype=torch.long)
    layout = layout_prompt(prompt, 0.5, 0, seed=0)
    short = int(layout.lengths.argmin())
    assert prompt[short, 3:].eq(0).all()  # the gap holds pads
    assert layout.positions(6, 1)[short].tolist() == [3]  # the first decoded token follows its own prompt
    mask = layout.mask(6, 1)[short, 0, 0]
    assert mask.tolist() == [True, True, True, False, False, False, True]


@pytest.mark.parametrize(
    "fields, field",
    [
        ({"prompt_spread": 1.0}, "prompt_spread"),
        ({"shared_prefix": 16}, "shared_prefix"),
        ({"prompt_spread": 0.5, "batch": 4, "shared_prefix": 8}, "shared_prefix"),
        ({"prompt_spread": 0.5, "kv_mode": "sliding"}, "prompt_spread"),
        ({"shared_prefix": 2, "compile": True}, "shared_prefix"),
        ({"block_tokens": 0, "kv_mode": "paged"}, "block_tokens"),
    ],
)
def test_bad_ragged_settings_are_one_line_errors(fields, field):
    spec = CellSpec(model="tiny", device="cpu", prompt_len=16, new_tokens=4, **fields)
    with pytest.raises(UsageError, match=field):
        spec.check()


def test_the_token_check_reads_each_sequence_after_its_own_prompt(model):
    prompt = torch.randint(0, model.config.vocab_size, (3, 12), generator=torch.Generator().manual_seed(4))
    layout = layout_prompt(prompt, 0.5, 3, seed=0)
    run = functools.partial(generate, model, plan=GenerationPlan({"block_tokens": 4}, layout))
    checked = token_check(model, lambda *a, **k: run(*a, **k), prompt, "paged", 4, True, layout=layout)
    assert checked.fields["matches_reference"] is True
    rectangular = replace(layout, lengths=torch.full_like(layout.lengths, 12))  # the pads read as prompt
    wrong = token_check(model, lambda *a, **k: run(*a, **k), prompt, "paged", 4, True, layout=rectangular)
    assert wrong.fields["matches_reference"] is False
