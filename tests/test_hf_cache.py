"""Engine hf's quantized caches: transformers' QuantizedCache (fp8; 4-bit through optimum-quanto) as the peers of
kvbench's static-fp8 and static-int4, on the same weights, priced and measured like ours."""

import json
from dataclasses import replace

import pytest
import torch

pytest.importorskip("transformers")

from kvbench.cli import main  # noqa: E402
from kvbench.engines import hf_cache  # noqa: E402
from kvbench.engines.hf import hf_generate, to_hf  # noqa: E402

needs_quanto = pytest.mark.skipif(not hf_cache.quanto_available(), reason="optimum-quanto is not installed")
needs_fp8 = pytest.mark.skipif(not hf_cache.fp8_available(), reason="this transformers has no fp8 QuantizedCache")


@pytest.fixture(scope="module")
def long_tiny():
    """tiny with room for 200 positions, so int4's 128-token residual fills and is quantized."""
    from kvbench.models.gpt2 import build_random, preset

    return build_random(replace(preset("tiny"), block_size=256), "cpu", torch.float32, seed=0)


@needs_fp8
def test_fp8_cache_holds_one_byte_codes_and_a_scale_per_layer(long_tiny):
    hf = to_hf(long_tiny)
    prompt = torch.randint(0, 50257, (2, 40), generator=torch.Generator().manual_seed(1))
    gen = hf_generate(hf, prompt, 9, "static-fp8", keep_logits=True)
    layer = gen.cache.cache.layers[0]
    assert layer._quantized_keys[0].dtype == torch.float8_e4m3fn
    c = long_tiny.config
    cached = 40 + 9 - 1  # the last token is chosen, never cached
    # K and V per layer: B x H x T x D one-byte codes and one fp32 scale; no full-precision copy kept
    assert gen.cache.nbytes() == c.n_layer * 2 * (2 * c.n_head * cached * c.head_dim + 4)


@needs_quanto
def test_int4_cache_is_transformers_quanto_layer_and_quantizes_its_residual(long_tiny):
    from transformers import QuantizedCache
    from transformers.cache_utils import QuantoQuantizedLayer

    hf = to_hf(long_tiny)
    prompt = torch.randint(0, 50257, (2, 150), generator=torch.Generator().manual_seed(1))
    gen = hf_generate(hf, prompt, 9, "static-int4", keep_logits=True)
    cache = gen.cache.cache
    assert isinstance(cache, QuantizedCache) and isinstance(cache.layers[0], QuantoQuantizedLayer)
    assert cache.layers[0].nbits == 4
    static = hf_generate(hf, prompt, 9, "static")
    # 4-bit codes, group scales and shifts, and a residual of fewer than 128 fp32 tokens: well under a
    # quarter of the fp32 cache, and more than an eighth of it (the codes alone)
    assert static.cache.nbytes() / 8 < gen.cache.nbytes() < static.cache.nbytes() / 4


@pytest.mark.parametrize(
    "kv_mode", [pytest.param("static-fp8", marks=needs_fp8), pytest.param("static-int4", marks=needs_quanto)]
)
def test_quantized_cell_is_priced_against_the_exact_model(tmp_path, capsys, kv_mode):
    out = tmp_path / "hf.json"
    args = ["--model", "tiny", "--kv-mode", kv_mode, "--prompt-len", "40", "--new-tokens", "8", "--iters", "1"]
    assert main(["cell", "--engine", "hf", *args, "--out", str(out)]) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    assert rec["status"] == "ok" and rec["cell"]["engine"] == "hf"
    check = rec["check"]
    assert 0.0 <= check["agreement_rate"] <= 1.0
    assert 0.0 < check["kl_mean"] < 0.1  # a price is paid, and it is small
    assert check["logit_diff_max"] > 0.0
    assert rec["memory"]["kv_cache_bytes_measured"] < rec["memory"]["kv_cache_bytes_formula"] * 1.6


def test_hf_quantized_modes_refuse_compile_and_a_missing_backend(tmp_path, capsys, monkeypatch):
    base = ["cell", "--engine", "hf", "--model", "tiny", "--out", str(tmp_path / "x.json")]
    monkeypatch.setattr(hf_cache, "quanto_available", lambda: True)
    monkeypatch.setattr(hf_cache, "fp8_available", lambda: True)
    assert main([*base, "--kv-mode", "static-fp8", "--compile"]) == 2
    assert "compile (engine hf): static-fp8 is transformers' QuantizedCache" in capsys.readouterr().err
    monkeypatch.setattr(hf_cache, "quanto_available", lambda: False)
    assert main([*base, "--kv-mode", "static-int4"]) == 2
    assert "pip install optimum-quanto==" in capsys.readouterr().err
    monkeypatch.setattr(hf_cache, "fp8_available", lambda: False)
    assert main([*base, "--kv-mode", "static-fp8"]) == 2
    assert "with its fp8 backend, which is not installed: transformers" in capsys.readouterr().err
    assert not (tmp_path / "x.json").exists()
