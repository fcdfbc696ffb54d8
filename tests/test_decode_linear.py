"""oneDNN-packed decoding: the same numbers and tokens as F.linear, the same bytes and parameter
count, a tied head left shared and dense, a dense state dict for exports."""

import json

import pytest
import torch
import torch.nn.functional as F

from kvbench.cli import main
from kvbench.core.presets import preset
from kvbench.engines.generate import generate
from kvbench.kernels import small_batch_linear as kernel
from kvbench.measure import roofline
from kvbench.measure.memory import LiveTensorBytes, resident_tensors
from kvbench.models import decode_linear, linear_choice
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
def test_only_our_eager_cells_pack(tmp_path, engine, layout, monkeypatch):
    monkeypatch.setenv("KVBENCH_NO_KERNELS", "1")  # the library's layouts alone (the kernel: below)
    pytest.importorskip("transformers")
    fast = ["cell", "--model", "tiny", "--prompt-len", "8", "--new-tokens", "4", "--warmup", "0", "--iters", "1"]
    kv_mode = "static" if engine == "kvbench" else "concat"
    assert main([*fast, "--engine", engine, "--kv-mode", kv_mode, "--out", str(tmp_path / "r.json")]) == 0
    record = json.loads((tmp_path / "r.json").read_text())
    assert record["status"] == "ok" and record["model_info"]["weight_layout"] == layout  # peers export, unpacked


def kernel_wins(monkeypatch, winner: str = "small-batch") -> None:
    times = (1.0, 2.0) if winner == "small-batch" else (2.0, 1.0)
    monkeypatch.setattr(linear_choice, "measure", lambda n, k, rows: times)


@pytest.fixture
def fresh_choices(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))


needs_kernel = pytest.mark.skipif(not kernel.available(), reason="the kernel is not built for this machine")


@needs_kernel
@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
@pytest.mark.parametrize("eager", [True, False])
def test_the_kernel_decodes_the_same_tokens_with_the_same_bytes(name, eager, monkeypatch, fresh_choices):
    kernel_wins(monkeypatch)
    model = build_random(preset(name), "cpu", torch.float32, seed=0, for_decoding=True)
    prompt = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    before = generate(model, prompt, 8, "static", keep_logits=True)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    counts = model.num_params(), roofline.step_read_bytes(model), LiveTensorBytes(resident_tensors(model)).live
    layout = prepare_for_decoding(model, pack=eager, kernel_rows=3)
    assert layout == ("small-batch+onednn-packed" if eager else "small-batch+wide-input-major")
    assert (model.num_params(), roofline.step_read_bytes(model)) == counts[:2]
    assert LiveTensorBytes(resident_tensors(model)).live == counts[2]
    mlp = model.blocks[0].mlp.c_fc if name == "tiny" else model.blocks[0].mlp.gate_up_proj
    assert isinstance(mlp, decode_linear.SmallBatchLinear) and mlp.weight.dim() == 1
    head, table = model.lm_head, model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if name == "tiny":  # tied: one packed copy, the table looking its rows up there
        table = model.transformer.wte
        assert head.weight is table.weight and isinstance(table, decode_linear.PackedEmbedding)
    after = generate(model, prompt, 8, "static", keep_logits=True)
    assert torch.equal(before.tokens, after.tokens)
    for a, b in zip(before.logits, after.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    dense = model.state_dict()
    assert all(torch.equal(state[k], dense[k]) for k in state)  # exports read the plain matrices
    recorded = decode_linear.kernel_choices_of(model)
    assert recorded and all(r["kernel"] == "small-batch" and r["rows"] == 3 for r in recorded)


@needs_kernel
def test_where_onednn_measured_faster_it_keeps_the_matrix(monkeypatch, fresh_choices):
    kernel_wins(monkeypatch, "onednn")
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    assert prepare_for_decoding(model, pack=True, kernel_rows=2) == "onednn-packed"
    assert model.transformer.h[0].mlp.c_fc.weight.is_mkldnn
    assert {r["kernel"] for r in decode_linear.kernel_choices_of(model)} == {"onednn"}  # measured, recorded


def test_no_kernel_above_eight_rows_or_for_a_peer(monkeypatch, fresh_choices):
    monkeypatch.setattr(linear_choice, "measure", lambda *a: pytest.fail("measured"))
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    assert prepare_for_decoding(model, pack=True, kernel_rows=9) == "onednn-packed"
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    assert prepare_for_decoding(model) == "wide-input-major" and not decode_linear.kernel_choices_of(model)


@needs_kernel
@pytest.mark.parametrize("compiled", [False, True])
def test_a_cell_records_the_kernel_and_its_times(tmp_path, monkeypatch, fresh_choices, compiled):
    kernel_wins(monkeypatch)
    fast = ["cell", "--model", "tiny", "--prompt-len", "8", "--new-tokens", "4", "--warmup", "0", "--iters", "1"]
    out = tmp_path / "r.json"
    flags = ["--kv-mode", "static", "--batch", "2", "--out", str(out), *(["--compile"] if compiled else [])]
    assert main([*fast, *flags]) == 0
    record = json.loads(out.read_text())
    info = record["model_info"]
    assert record["status"] == "ok" and record["check"]["matches_reference"] is True
    assert info["weight_layout"] == ("small-batch+wide-input-major" if compiled else "small-batch+onednn-packed")
    assert {(k["kernel"], k["rows"], k["small_batch_ms"]) for k in info["linear_kernels"]} == {("small-batch", 2, 1.0)}


def test_kernels_off_by_setting(monkeypatch):
    monkeypatch.setenv("KVBENCH_NO_KERNELS", "1")
    assert not kernel.available()
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    assert prepare_for_decoding(model, pack=True, kernel_rows=1) == "onednn-packed"
