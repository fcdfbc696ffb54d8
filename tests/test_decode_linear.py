"""oneDNN-packed decoding: the same numbers and tokens as F.linear, the same bytes and parameter
count, a tied head left shared and dense, a dense state dict for exports."""

import json

import pytest
import torch
import torch.nn.functional as F

from kvbench.cli import main
from kvbench.core.presets import preset
from kvbench.engines.generate import generate
from kvbench.measure import roofline
from kvbench.measure.memory import LiveTensorBytes, resident_tensors
from kvbench.models import decode_linear
from kvbench.models.family import build_random
from kvbench.models.weights import prepare_for_decoding

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")


@pytest.mark.parametrize("rows", [1, 3, 8, 40])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_linear_equals_f_linear(rows, bias):
    layer = torch.nn.Linear(37, 51, bias=bias)
    x = torch.randn(2, rows, 37)
    want = F.linear(x, layer.weight, layer.bias)
    decode_linear.pack(layer)
    assert isinstance(layer, decode_linear.DecodeLinear) and layer.weight.is_mkldnn
    with torch.inference_mode():
        torch.testing.assert_close(layer(x), want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_packed_model_decodes_the_same_tokens_with_the_same_bytes(name):
    model = build_random(preset(name), "cpu", torch.float32, seed=0, for_decoding=True)
    prompt = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    before = generate(model, prompt, 8, "static", keep_logits=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}

    def counts():
        return model.num_params(), roofline.step_read_bytes(model), LiveTensorBytes(resident_tensors(model)).live

    unpacked = counts()
    assert prepare_for_decoding(model, pack=True) == "onednn-packed"
    assert counts() == unpacked
    after = generate(model, prompt, 8, "static", keep_logits=True)
    assert torch.equal(before.tokens, after.tokens)
    for a, b in zip(before.logits, after.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    dense = model.state_dict()  # what an export reads: plain tensors, the same values
    assert state.keys() == dense.keys() and not any(t.is_mkldnn for t in dense.values())
    assert all(torch.equal(state[k], dense[k]) for k in state)


def test_a_tied_head_stays_shared_and_dense():
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    prepare_for_decoding(model, pack=True)
    head, table = model.lm_head.weight, model.transformer.wte.weight
    assert head is table and not head.is_mkldnn and head.is_contiguous()
    assert model.transformer.h[0].mlp.c_fc.weight.is_mkldnn  # the rest packed


@pytest.mark.parametrize("engine,layout", [("kvbench", "onednn-packed"), ("hf", "wide-input-major")])
def test_only_our_eager_cells_pack(tmp_path, engine, layout):
    pytest.importorskip("transformers")
    fast = ["cell", "--model", "tiny", "--prompt-len", "8", "--new-tokens", "4", "--warmup", "0", "--iters", "1"]
    kv_mode = "static" if engine == "kvbench" else "concat"
    assert main([*fast, "--engine", engine, "--kv-mode", kv_mode, "--out", str(tmp_path / "r.json")]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["status"] == "ok" and record["model_info"]["weight_layout"] == layout  # peers export, unpacked
