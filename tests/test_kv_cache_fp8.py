"""The fp8 cache: e4m3 storage with a scale, its bytes, its error, and its support probe."""

import torch

from kvbench.caches.scaled import fp8_unsupported_reason, quantize_fp8
from kvbench.core.presets import kv_cache_bytes
from kvbench.engines.generate import generate


def test_cpu_torch_holds_e4m3():
    assert fp8_unsupported_reason(torch.device("cpu")) is None


def test_round_trip_errs_by_at_most_e4m3s_relative_step():
    x = torch.randn(3, 2, 7, 64, generator=torch.Generator().manual_seed(0)) * 5
    q, scale = quantize_fp8(x)
    assert q.dtype == torch.float8_e4m3fn and q.element_size() == 1
    back = q.float() * scale
    # 3 mantissa bits: half a step is 1/16 of the value; below the smallest normal, a fixed step
    bound = x.abs() / 16 + scale * 2.0**-9
    assert bool(((back - x).abs() <= bound * 1.001).all()) and float((back - x).abs().max()) > 0


def test_generation_bytes_match_the_formula_and_tokens_stay(tiny_model):
    cfg = tiny_model.config
    prompt = torch.randint(0, 50257, (2, 10), generator=torch.Generator().manual_seed(1))
    gen = generate(tiny_model, prompt, 12, "static-fp8", keep_logits=True)
    ref = generate(tiny_model, prompt, 12, "static", keep_logits=True)
    assert gen.cache.nbytes() == kv_cache_bytes(cfg.n_layer, 2, cfg.kv_heads, 21, cfg.head_dim, 4, "static-fp8")
    assert gen.cache.k.dtype == torch.float8_e4m3fn
    worst = max(float((a - b).abs().max()) for a, b in zip(ref.logits, gen.logits))
    assert 0 < worst < 0.02 * max(float(x.abs().max()) for x in ref.logits)
    assert torch.equal(gen.tokens, ref.tokens)


def test_a_torch_without_e4m3_is_unsupported_with_the_reason(monkeypatch):
    monkeypatch.delattr(torch, "float8_e4m3fn")
    assert "has no float8_e4m3fn" in fp8_unsupported_reason(torch.device("cpu"))
