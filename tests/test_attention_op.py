"""engines/attention_op.py: under --compile a growing cache's decode step is one graph with its attention as one
opaque op, and gives the eager tokens and logits."""

from __future__ import annotations

import pytest
import torch

from kvbench.core.presets import preset
from kvbench.engines import attention_op
from kvbench.engines.generate import GenerationPlan, generate
from kvbench.engines.kvbench import KvbenchEngine
from kvbench.models.family import build_random


@pytest.mark.slow  # the model compiled per kind
# concat: the growing kind a rectangular batch compiles through the op (paged and static-int4 take the static-shape
# step; a ragged paged batch's steps are masked, so eager)
@pytest.mark.parametrize("kind,options", [("concat", {})])
def test_a_compiled_growing_step_is_one_graph_with_the_eager_tokens(kind, options):
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    prompt = torch.randint(0, 500, (2, 40), generator=torch.Generator().manual_seed(0))
    plan = GenerationPlan(options)
    eager = generate(model, prompt, 12, kind, keep_logits=True, plan=plan)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    run = KvbenchEngine(model, plan).compiled_runner(kind, prompt, 12)
    got = run(prompt, 12, kind, keep_logits=True)
    assert torch.equal(got.tokens, eager.tokens) and attention_op._current == [got.cache]
    for a, b in zip(got.logits, eager.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    # The decode step is one graph with no break at its attention (as a call, each layer's attention broke it: three
    # graphs a step for two layers), compiled twice: at the first step and once the position is made symbolic.
    counters = torch._dynamo.utils.counters
    assert counters["stats"]["unique_graphs"] == 2 and not counters["graph_break"]
