"""Engine llamacpp: llama.cpp (llama-cpp-python) on our weights, converted to GGUF by llama.cpp's own converter."""

import importlib.util
import json
import shutil
import subprocess
import sys

import pytest
import torch

from kvbench.cli import main
from kvbench.core.record import validate
from kvbench.engines import registry as engines
from kvbench.engines.generate import generate

# llama.cpp's fp32 CPU kernels round differently from torch's (GPT-2's GELU reads an fp16 lookup table,
# GGML_GELU_FP16 in ggml-cpu/vec.h): measured 1.2e-4 (tiny-llama) to 1.7e-4 (tiny) from our logits, tokens equal.
ATOL = 1e-3
needs_llama_cpp = pytest.mark.skipif(
    importlib.util.find_spec("llama_cpp") is None or importlib.util.find_spec("transformers") is None,
    reason="llama_cpp is not installed (make llamacpp builds it)",
)

CELL = [
    "cell",
    "--engine",
    "llamacpp",
    "--model",
    "tiny",
    "--kv-mode",
    "static",
    "--prompt-len",
    "8",
    "--new-tokens",
    "6",
    "--iters",
    "2",
    "--warmup",
    "1",
]


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory):
    """One cache for the tests that only use conversions: each set of weights converts once per file."""
    return tmp_path_factory.mktemp("llamacpp-cache")


@pytest.fixture()
def cache_dir(shared_cache, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(shared_cache))
    return shared_cache / "llamacpp"


@pytest.fixture()
def fresh_cache(tmp_path, monkeypatch):
    """A cache of the test's own, so it sees (and can count) its own conversions."""
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "llamacpp"


@needs_llama_cpp
def test_llamacpp_tokens_and_logits_equal_ours_batched(tiny_model, cache_dir):
    """Two sequences (one llama.cpp sequence id each) give our no-cache tokens and logits, step by step."""
    prompt = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = generate(tiny_model, prompt, 12, "none", keep_logits=True)
    engine = engines.build("llamacpp", tiny_model)
    assert engine.path.name == "model.gguf" and engine.path.parent.parent == cache_dir
    marks: list[int] = []
    gen = engine.generate(prompt, 12, "static", keep_logits=True, on_token=marks.append)
    assert torch.equal(gen.tokens, ref.tokens)
    assert marks == list(range(12))  # once per step, after every sequence of the batch has its token
    for a, b in zip(gen.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)
    assert gen.cache is None  # llama.cpp's cache is its own: nothing to measure from Python
    again = engine.generate(prompt[:1], 12, "static")  # a smaller batch: a context of its own, same tokens
    assert torch.equal(again.tokens, ref.tokens[:1])


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("variant", ["llama", "qwen2"])
def test_llamacpp_llama_family_tokens_equal_ours(variant, cache_dir):
    """The converter's Llama and Qwen2 classes on transformers' model of our weights (GQA, q/k/v bias kept)."""
    from test_hf_engine import llama_model

    model = llama_model(variant)
    prompt = torch.randint(0, model.config.vocab_size, (2, 21), generator=torch.Generator().manual_seed(1))
    ref = generate(model, prompt, 10, "none", keep_logits=True)
    gen = engines.build("llamacpp", model).generate(prompt, 10, "static", keep_logits=True)
    assert torch.equal(gen.tokens, ref.tokens)
    for a, b in zip(gen.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=0)


@needs_llama_cpp
def test_llamacpp_cell_record_matches_none(tmp_path, cache_dir, capsys):
    out = tmp_path / "llamacpp.json"
    assert main([*CELL, "--batch", "2", "--out", str(out)]) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["status"] == "ok" and rec["cell"]["engine"] == "llamacpp" and rec["cell"]["kv_mode"] == "static"
    assert rec["check"]["matches_reference"] is True and rec["check"]["max_logit_diff"] < ATOL
    assert rec["check"]["timed_equals_checked"] is True
    mem = rec["memory"]
    assert mem["kv_cache_bytes_formula"] > 0 and mem["kv_cache_bytes_measured"] is None
    assert "llama.cpp manages its own cache" in mem["kv_cache_note"]
    assert len(rec["latency"]["per_step_decode_ms"]) == 5 and rec["latency"]["compile_s"] is None


@needs_llama_cpp
@pytest.mark.slow
@pytest.mark.parametrize("kv_mode", ["static-int8", "static-int4"])
def test_llamacpp_quantized_cache_is_priced_from_its_own_logits(kv_mode, cache_dir):
    """q8_0/q4_0 caches (head_dim 32: whole blocks): the cell's token check prices them from llama.cpp's own
    logits against our no-cache forward over the same tokens, as for every approximate mode."""
    from kvbench.core.presets import preset
    from kvbench.measure.token_check import token_check
    from kvbench.models.family import build_random

    model = build_random(preset("tiny", n_head=2), "cpu", torch.float32, seed=0)
    prompt = torch.randint(0, 50257, (2, 20), generator=torch.Generator().manual_seed(1))
    engine = engines.build("llamacpp", model)
    exact = token_check(model, engine.generate, prompt, "static", 12, runs_our_model=False).fields
    fields = token_check(model, engine.generate, prompt, kv_mode, 12, runs_our_model=False).fields
    assert exact["matches_reference"] is True and exact["kl_max"] < 1e-6
    assert 0 <= fields["agreement_rate"] <= 1 and fields["kl_mean"] >= 0
    # quantized K/V move the logits past the exact cache's rounding (measured on these weights: q8_0 4x, q4_0 57x)
    assert fields["logit_diff_max"] > 2 * exact["logit_diff_max"] and fields["kl_max"] > exact["kl_max"]


def test_llamacpp_refuses_quantized_caches_of_partial_blocks(tmp_path, fresh_cache, capsys):
    """tiny's heads are 16 wide, half a q8_0 block: refused in one line before anything is built."""
    code = main([*CELL, "--kv-mode", "static-int8", "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    if importlib.util.find_spec("llama_cpp") is None:
        assert code == 2 and "llamacpp needs the llama_cpp package" in err
        return
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "kv_mode (engine llamacpp): static-int8 is llama.cpp's q8_0 cache" in err and "this model's is 16" in err
    assert not (tmp_path / "x.json").exists() and not fresh_cache.exists()


@needs_llama_cpp
@pytest.mark.slow  # two conversions of its own
def test_llamacpp_converts_once_and_rebuilds_a_damaged_gguf(tiny_model, fresh_cache, monkeypatch, capsys):
    from kvbench.engines import llamacpp

    first = engines.build("llamacpp", tiny_model).path
    written = llamacpp.write_model_dir

    def no_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(llamacpp, "write_model_dir", no_conversion)
    assert engines.build("llamacpp", tiny_model).path == first  # found by hash, not converted again
    with open(first, "r+b") as f:  # one byte of a tensor flipped
        f.seek(-100, 2)
        byte = f.read(1)
        f.seek(-100, 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(AssertionError, match="converted again"):
        engines.build("llamacpp", tiny_model)
    assert "damaged (model.gguf changed since it was written)" in capsys.readouterr().err
    monkeypatch.setattr(llamacpp, "write_model_dir", written)
    prompt = torch.randint(0, 50257, (1, 5), generator=torch.Generator().manual_seed(3))
    rebuilt = engines.build("llamacpp", tiny_model)
    assert rebuilt.path == first and len(list(fresh_cache.glob("*.damaged-*"))) == 1  # moved aside, rebuilt once
    assert torch.equal(rebuilt.generate(prompt, 4, "static").tokens, generate(tiny_model, prompt, 4, "none").tokens)


@needs_llama_cpp
def test_llamacpp_refuses_a_converter_not_from_the_pin(tiny_model, fresh_cache, tmp_path, monkeypatch):
    from kvbench.engines import llamacpp

    copy = tmp_path / "converter"
    shutil.copytree(llamacpp.converter_dir(), copy)
    monkeypatch.setattr(llamacpp, "converter_dir", lambda: copy)
    llamacpp.checked_converter()  # the pinned one passes
    with open(copy / "conversion" / "gpt2.py", "a") as f:
        f.write("\n")
    with pytest.raises(ValueError, match=r"^engine llamacpp: llama.cpp's converter in .* is not the one from llama"):
        engines.build("llamacpp", tiny_model)
    shutil.rmtree(copy)
    with pytest.raises(ValueError, match=r"^engine llamacpp: llama.cpp's converter is missing from .*make llamacpp"):
        engines.build("llamacpp", tiny_model)


@needs_llama_cpp
def test_llamacpp_refuses_what_it_cannot_run(tmp_path, fresh_cache, capsys):
    for args, message in (
        (["--kv-mode", "concat"], "kv_mode (engine llamacpp): 'concat' is not one of static, static-int8, static-int4"),
        (["--kv-mode", "none"], "kv_mode (engine llamacpp): 'none' is not one of static"),
        (["--compile"], "compile: engine llamacpp has no compiled form"),
        (["--attention", "math"], "attention (engine llamacpp): 'math' is not one of sdpa"),
        (["--n-kv-head", "2"], "n_kv_head: engine llamacpp"),
    ):
        code = main([*CELL, *args, "--out", str(tmp_path / "x.json")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.json").exists() and not fresh_cache.exists()  # refused before anything was built


def test_missing_llama_cpp_is_one_line(tmp_path):
    """The package made unimportable in a fresh interpreter: exit 2 and one line saying how to install it."""
    code = (
        "import sys; sys.modules['llama_cpp'] = None\n"
        "from kvbench.cli import main\n"
        f"sys.exit(main({[*CELL, '--out', str(tmp_path / 'x.json')]!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "llamacpp needs the llama_cpp package" in lines[0] and "make llamacpp" in lines[0], lines
    assert not (tmp_path / "x.json").exists()
