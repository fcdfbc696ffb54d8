"""The engine interface (kvbench/engines/): every engine builds from our weights, generates the same greedy
tokens with one `on_token` per step, and refuses what it cannot run in one line naming the field."""

import importlib.util
import re

import pytest
import torch

from kvbench.core.presets import ENGINES, KV_MODES
from kvbench.engines import registry as engines
from kvbench.engines.generate import generate

HAVE = {
    "kvbench": True,
    "hf": importlib.util.find_spec("transformers") is not None,
    "ct2": importlib.util.find_spec("ctranslate2") is not None and importlib.util.find_spec("transformers"),
    "llamacpp": importlib.util.find_spec("llama_cpp") is not None and importlib.util.find_spec("transformers"),
}
# each engine's cached mode: ours, transformers' and llama.cpp's static caches, CTranslate2's own growing one
CACHED_MODE = {"kvbench": "static", "hf": "static", "ct2": "concat", "llamacpp": "static"}
# llama.cpp's q8_0/q4_0 caches need head_dim a multiple of 32; tiny's is 16 (tests/test_llamacpp.py runs them)
SHAPE_BOUND = {("llamacpp", "static-int8"), ("llamacpp", "static-int4")}


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("name", ENGINES)
def test_every_engine_gives_our_recompute_tokens(name, tiny_model, cache_dir):
    if not HAVE[name]:
        pytest.skip(f"engine {name}: its package is not installed")
    prompt = torch.randint(0, 50257, (2, 7), generator=torch.Generator().manual_seed(3))
    ref = generate(tiny_model, prompt, 10, "none").tokens
    engine = engines.build(name, tiny_model)
    assert isinstance(engine, engines.Engine) and engine.name == name
    marks: list[int] = []
    gen = engine.generate(prompt, 10, CACHED_MODE[name], on_token=marks.append)
    assert torch.equal(gen.tokens, ref) and marks == list(range(10))
    if engine.module is not None:  # the weights the CPU allocator tracker counts live in this module
        assert sum(p.numel() for p in engine.module.parameters()) > 0
    for mode in KV_MODES:  # every mode it declares runs; the rest are refused in one line
        if mode in engine.kv_modes and (name, mode) not in SHAPE_BOUND:
            try:
                engines.check(name, kv_mode=mode)
            except ValueError as e:  # a peer's backend this environment lacks (transformers' quantized caches)
                assert re.match(rf"^kv_mode \(engine {name}\): {mode} .* which is not installed", str(e)), e
                continue
            assert torch.equal(engine.generate(prompt, 10, mode).tokens, ref), mode
        elif mode not in engine.kv_modes:
            with pytest.raises(ValueError, match=rf"^kv_mode \(engine {name}\): '{mode}' is not one of "):
                engines.check(name, kv_mode=mode)


def test_engine_names_are_checked():
    with pytest.raises(ValueError, match="^engine: 'vllm' is not one of kvbench, hf, ct2, llamacpp$"):
        engines.build("vllm", None)


@pytest.mark.parametrize("name", ["hf", "ct2"])
def test_engines_without_grouped_query_attention_refuse_it(name):
    if not HAVE[name]:
        pytest.skip(f"engine {name}: its package is not installed")
    with pytest.raises(ValueError, match=f"^n_kv_head: engine {name}"):
        engines.check(name, kv_mode=CACHED_MODE[name], n_kv_head=2)


def test_our_engine_runs_grouped_query_attention():
    from kvbench.core.presets import preset
    from kvbench.models.family import build_random

    assert engines.check("kvbench", kv_mode="static", n_kv_head=2) is None  # accepted, not refused
    grouped = build_random(preset("tiny", n_kv_head=2), "cpu", torch.float32, seed=0)
    gen = engines.build("kvbench", grouped).generate(torch.zeros(1, 3, dtype=torch.long), 4, "static")
    assert gen.tokens.shape == (1, 4) and gen.cache.k.size(2) == 2  # two K/V heads cached, not four
