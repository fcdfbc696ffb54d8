"""kvbench's small-batch CPU kernel: F.linear's numbers for 1-8 rows, every tile, odd shapes; the
model routed through it decodes the same tokens; a damaged build is rebuilt, not trusted."""

import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from kvbench import small_batch_linear as sbl
from kvbench.generate import generate
from kvbench.models import build_random
from kvbench.presets import preset
from kvbench.weights import prepare_for_decoding

WHY = sbl.why_unavailable()
pytestmark = pytest.mark.skipif(WHY is not None, reason=f"small-batch kernel unavailable: {WHY}")
ALL_TILES = [(4, 1), (4, 2), (4, 3), (3, 4), (2, 4), (6, 1), (6, 2), (8, 1)]


@pytest.mark.parametrize("rows", range(1, 9))
@pytest.mark.parametrize("in_f,out_f", [(768, 2304), (37, 51), (3072, 5)])
def test_kernel_equals_f_linear(rows, in_f, out_f):
    g = torch.Generator().manual_seed(rows)
    x, w, b = (torch.randn(s, generator=g) for s in ((rows, in_f), (out_f, in_f), (out_f,)))
    for tile in ALL_TILES:
        for bias in (b, None):
            got = torch.ops.kvbench.small_batch_linear(x, w, bias, *tile)
            torch.testing.assert_close(got, F.linear(x, w, bias), atol=1e-4, rtol=1e-4)


def test_kernel_is_the_same_on_one_and_two_threads():
    x, w = torch.randn(8, 768), torch.randn(3001, 768)
    saved = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = sbl.linear(x, w, None)
        torch.set_num_threads(2)
        two = sbl.linear(x, w, None)
    finally:
        torch.set_num_threads(saved)
    assert torch.equal(one, two)  # each output is one thread's sum in one order


def test_kernel_refuses_what_it_cannot_do():
    w = torch.randn(16, 8)
    with pytest.raises(RuntimeError, match="1 to 8 rows"):
        torch.ops.kvbench.small_batch_linear(torch.randn(9, 8), w, None, 4, 1)
    with pytest.raises(RuntimeError, match="float32 only"):
        torch.ops.kvbench.small_batch_linear(torch.randn(2, 8).double(), w.double(), None, 4, 1)
    with pytest.raises(RuntimeError, match="no tile 5x5"):
        torch.ops.kvbench.small_batch_linear(torch.randn(2, 8), w, None, 5, 5)


def test_decode_linear_takes_the_kernel_only_for_few_float32_rows(monkeypatch):
    layer = torch.nn.Linear(24, 40)
    sbl.use_kernel(layer)
    assert isinstance(layer, sbl.DecodeLinear)
    calls = []
    monkeypatch.setattr(sbl, "linear", lambda *a: calls.append(a[0].shape) or F.linear(*a))
    layer(torch.randn(2, 1, 24))
    layer(torch.randn(3, 3, 24))  # 9 rows: a prefill, F.linear
    layer.double()(torch.randn(1, 24, dtype=torch.float64))
    assert calls == [torch.Size([2, 1, 24])]


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_model_through_the_kernel_decodes_the_same_tokens(name):
    model = build_random(preset(name), "cpu", torch.float32, seed=0)
    prompt = torch.randint(0, model.config.vocab_size, (3, 7), generator=torch.Generator().manual_seed(1))
    before = generate(model, prompt, 8, "static", keep_logits=True)
    storage = [p.data_ptr() for p in model.parameters()]
    assert prepare_for_decoding(model) == "small-batch-kernel"
    assert any(isinstance(m, sbl.DecodeLinear) for m in model.modules())
    assert [p.data_ptr() for p in model.parameters()] == storage  # no weight copied, a tied head stays tied
    after = generate(model, prompt, 8, "static", keep_logits=True)
    assert torch.equal(before.tokens, after.tokens)
    for a, b in zip(before.logits, after.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled_model_calls_the_kernel():
    layer = torch.nn.Linear(64, 96)
    sbl.use_kernel(layer)
    x = torch.randn(4, 1, 64)
    compiled = torch.compile(layer, fullgraph=True)  # fullgraph: the op traces without a graph break
    torch.testing.assert_close(compiled(x), F.linear(x, layer.weight, layer.bias))


@pytest.mark.slow
def test_damaged_build_is_moved_aside_and_rebuilt(tmp_path):
    env = {**os.environ, "KVBENCH_CACHE_DIR": str(tmp_path)}
    use = "from kvbench import small_batch_linear as s; s.load(); print(s.build_dir())"
    first = subprocess.run([sys.executable, "-c", use], env=env, capture_output=True, text=True, check=True)
    folder = first.stdout.strip()
    so = next(p for p in os.listdir(folder) if p.endswith(".so"))
    with open(os.path.join(folder, so), "r+b") as f:
        f.truncate(1000)
    again = subprocess.run([sys.executable, "-c", use], env=env, capture_output=True, text=True, check=True)
    assert f"small-batch kernel cache {folder} is damaged ({so} changed since it was written)" in again.stderr
    assert os.path.getsize(os.path.join(folder, so)) > 1000  # built again, in place
