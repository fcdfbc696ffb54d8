"""Engine ct2: CTranslate2's Generator on our weights (converted from the hf engine's GPT-2), through the same cell."""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("ctranslate2")
pytest.importorskip("transformers")

from kvbench.cli import main  # noqa: E402
from kvbench.core.record import validate  # noqa: E402
from kvbench.engines import registry as engines  # noqa: E402
from kvbench.engines.generate import generate  # noqa: E402

CELL = [
    "cell",
    "--engine",
    "ct2",
    "--model",
    "tiny",
    "--kv-mode",
    "concat",
    "--prompt-len",
    "8",
    "--new-tokens",
    "6",
    "--iters",
    "2",
    "--warmup",
    "1",
]


@pytest.fixture()
def cache_dir(tmp_path, monkeypatch):
    """Converted models go to a fresh folder, so each test sees (and can count) its own conversions."""
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "ct2"


def test_ct2_tokens_and_logits_equal_ours(tiny_model, cache_dir):
    prompt = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(1))
    ref = generate(tiny_model, prompt, 12, "none", keep_logits=True)
    ct2 = engines.build("ct2", tiny_model)
    marks: list[int] = []
    gen = ct2.generate(prompt, 12, "concat", keep_logits=True, on_token=marks.append)
    assert torch.equal(gen.tokens, ref.tokens)
    assert marks == list(range(12))  # once per step, after every sequence of the batch has its token
    for a, b in zip(gen.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
    assert gen.cache is None  # CTranslate2's cache is its own: nothing to measure from Python


@pytest.mark.parametrize("variant", ["llama", "qwen2", "llama3-rope"])
def test_ct2_llama_family_tokens_and_logits_equal_ours(variant, cache_dir):
    """CTranslate2's own Llama and Qwen2 loaders convert transformers' model of our weights (GQA kept)."""
    from test_hf_engine import llama_model

    model = llama_model(variant)
    prompt = torch.randint(0, model.config.vocab_size, (3, 37), generator=torch.Generator().manual_seed(1))
    ref = generate(model, prompt, 12, "none", keep_logits=True)
    gen = engines.build("ct2", model).generate(prompt, 12, "concat", keep_logits=True)
    assert torch.equal(gen.tokens, ref.tokens)
    for a, b in zip(gen.logits, ref.logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_ct2_refuses_a_rope_scaling_its_converter_drops(cache_dir):
    from dataclasses import replace

    from kvbench.core.presets import llama3_scaling, preset
    from kvbench.models.family import build_random

    cfg = replace(preset("tiny-llama"), rope_scaling=llama3_scaling(8.0, 16))
    with pytest.raises(
        ValueError, match="^rope_scaling \\(engine ct2\\): original_max_position_embeddings 16 is not 8192"
    ):
        engines.build("ct2", build_random(cfg, "cpu", torch.float32, seed=0))
    assert not cache_dir.exists()


def test_ct2_llama_cell_record(tmp_path, cache_dir, capsys):
    out = tmp_path / "ct2.json"
    cell = [*CELL, "--model", "tiny-llama", "--out", str(out)]  # the later --model wins
    assert main(cell) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["status"] == "ok" and rec["cell"]["model"] == "tiny-llama"
    assert rec["check"]["matches_reference"] is True and rec["check"]["max_logit_diff"] < 1e-4


def test_ct2_converts_once_per_weights(tiny_model, cache_dir, monkeypatch):
    first = engines.build("ct2", tiny_model).path
    assert first.parent == cache_dir and (first / "model.bin").is_file()
    from ctranslate2.converters import TransformersConverter

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("converted again")

    monkeypatch.setattr(TransformersConverter, "convert", no_second_conversion)
    assert engines.build("ct2", tiny_model).path == first  # found by hash
    with torch.no_grad():
        tiny_model.transformer.h[0].mlp.c_fc.bias.add_(1.0)  # other weights: another hash, a new conversion
    with pytest.raises(AssertionError, match="converted again"):
        engines.build("ct2", tiny_model)


def test_ct2_cell_record_is_schema_valid(tmp_path, cache_dir, capsys):
    out = tmp_path / "ct2.json"
    assert main([*CELL, "--out", str(out)]) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["status"] == "ok" and rec["cell"]["engine"] == "ct2" and rec["cell"]["kv_mode"] == "concat"
    assert rec["check"]["matches_reference"] is True and rec["check"]["max_logit_diff"] < 1e-4
    assert rec["check"]["timed_equals_checked"] is True
    mem = rec["memory"]
    assert mem["kv_cache_bytes_formula"] > 0 and mem["kv_cache_bytes_measured"] is None
    assert "CTranslate2 manages its own cache" in mem["kv_cache_note"]
    assert len(rec["latency"]["per_step_decode_ms"]) == 5 and rec["latency"]["compile_s"] is None


def test_ct2_refuses_what_it_cannot_run(tmp_path, cache_dir, capsys):
    for args, message in (
        (["--kv-mode", "static"], "kv_mode (engine ct2): 'static' is not one of concat"),
        (["--kv-mode", "none"], "kv_mode (engine ct2): 'none' is not one of concat"),
        (["--compile"], "compile: engine ct2 has no compiled form"),
        (["--attention", "math"], "attention (engine ct2): 'math' is not one of sdpa"),
        (["--n-kv-head", "2"], "n_kv_head: engine ct2"),
    ):
        code = main([*CELL, *args, "--out", str(tmp_path / "x.json")])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x.json").exists() and not cache_dir.exists()  # refused before anything was built


def test_missing_ctranslate2_is_one_line(tmp_path):
    """The package made unimportable in a fresh interpreter: exit 2 and one line naming what to install."""
    code = (
        "import sys; sys.modules['ctranslate2'] = None\n"
        "from kvbench.cli import main\n"
        f"sys.exit(main({[*CELL, '--out', str(tmp_path / 'x.json')]!r}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "ct2 needs the ctranslate2 package" in lines[0] and "ctranslate2==" in lines[0], lines
    assert not (tmp_path / "x.json").exists()
