"""Weight layout for decoding: strides change, values, tying and tokens do not (both families).

The packed path of `prepare_for_decoding` is tested in test_decode_linear.py; here the layout of the
CPU cells that do not pack (compiled ones, peers, other dtypes).
"""

import pytest
import torch

from kvbench.core.presets import preset
from kvbench.engines.generate import generate
from kvbench.models.family import build_random
from kvbench.models.weights import prepare_for_decoding, store_wide_weights_input_major


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_cpu_weight_layout_changes_strides_only(name):
    model = build_random(preset(name), "cpu", torch.float32, seed=0)
    cfg = model.config
    prompt = torch.randint(0, cfg.vocab_size, (2, 6), generator=torch.Generator().manual_seed(1))
    before = generate(model, prompt, 8, "static", keep_logits=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    store_wide_weights_input_major(model)
    head = model.lm_head.weight
    assert head.shape == (cfg.vocab_size, cfg.n_embd) and head.stride() == (1, cfg.vocab_size)
    narrowing = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features < m.in_features]
    assert narrowing and all(w.is_contiguous() for w in narrowing)  # narrowing matrices stay row-major
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    after = generate(model, prompt, 8, "static", keep_logits=True)
    assert torch.equal(before.tokens, after.tokens)
    for a, b in zip(before.logits, after.logits):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_layout_keeps_a_tied_head_tied():
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.stride() == (1, 50257)
    assert prepare_for_decoding(model) == "wide-input-major"  # not asked to pack


def test_bf16_on_the_cpu_is_not_packed():
    model = build_random(preset("tiny"), "cpu", torch.bfloat16, seed=0, for_decoding=True)
    assert prepare_for_decoding(model, pack=True) == "wide-input-major"
