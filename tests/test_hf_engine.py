"""The peer engine: transformers' GPT-2 on our weights, measured through the same cell."""

import json

import pytest
import torch

pytest.importorskip("transformers")

from kvbench.cli import main  # noqa: E402
from kvbench.engines.generate import generate  # noqa: E402
from kvbench.engines.hf import hf_generate, to_hf  # noqa: E402


@pytest.mark.parametrize("attention", ["sdpa", "math"])
def test_hf_tokens_and_logits_equal_ours_in_every_mode(tiny_model, attention):
    tiny_model.set_attention(attention)
    hf = to_hf(tiny_model)
    prompt = torch.randint(0, 50257, (2, 9), generator=torch.Generator().manual_seed(1))
    ours = generate(tiny_model, prompt, 12, "static", keep_logits=True)
    for mode in ("none", "concat", "static"):
        theirs = hf_generate(hf, prompt, 12, mode, keep_logits=True)
        assert torch.equal(theirs.tokens, ours.tokens), mode
        for a, b in zip(theirs.logits, ours.logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# tiny-llama: 8 query heads over 2 K/V heads. The variants are the other Llama-family forms transformers
# builds from our config: Qwen2 (q/k/v bias, tied head) with one K/V head, and Llama 3's rope scaling.
LLAMA_VARIANTS = {
    "llama": ({}, "LlamaForCausalLM"),
    "qwen2": ({"attention_bias": True, "tie_word_embeddings": True, "n_kv_head": 1}, "Qwen2ForCausalLM"),
    "llama3-rope": ({"n_kv_head": 4, "rope_theta": 5e5, "rope_scaling": "llama3"}, "LlamaForCausalLM"),
}


def llama_model(variant: str):
    """A random-weight tiny-llama of the variant, laid out for decoding as a cell lays it out; biases
    drawn non-zero (the random init zeroes them), so a dropped bias would show."""
    from dataclasses import replace

    from kvbench.core.presets import llama3_scaling, preset
    from kvbench.models.family import build_random

    over = dict(LLAMA_VARIANTS[variant][0])
    if over.get("rope_scaling"):
        # Llama 3's published original context, inside a longer one (transformers warns otherwise)
        over.update(rope_scaling=llama3_scaling(8.0, 8192), block_size=16384)
    model = build_random(replace(preset("tiny-llama"), **over), "cpu", torch.float32, seed=0, for_decoding=True)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0.0, 0.5, generator=torch.Generator().manual_seed(2))
    return model


@pytest.mark.parametrize("variant", list(LLAMA_VARIANTS))
def test_hf_llama_family_tokens_and_logits_equal_ours_in_every_mode(variant):
    model = llama_model(variant)
    hf = to_hf(model)
    assert type(hf).__name__ == LLAMA_VARIANTS[variant][1]
    assert hf.config.num_key_value_heads == model.config.kv_heads < hf.config.num_attention_heads
    prompt = torch.randint(0, model.config.vocab_size, (3, 37), generator=torch.Generator().manual_seed(1))
    ours = generate(model, prompt, 12, "none", keep_logits=True)
    for mode in ("none", "concat", "static"):
        theirs = hf_generate(hf, prompt, 12, mode, keep_logits=True)
        assert torch.equal(theirs.tokens, ours.tokens), mode
        for a, b in zip(theirs.logits, ours.logits):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_hf_llama_cell_record_caches_only_the_kv_heads(tmp_path, capsys):
    out = tmp_path / "hf.json"
    args = ["--model", "tiny-llama", "--kv-mode", "static", "--prompt-len", "8", "--new-tokens", "6", "--iters", "1"]
    assert main(["cell", "--engine", "hf", *args, "--out", str(out)]) == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    assert rec["status"] == "ok" and rec["check"]["matches_reference"] is True
    # transformers' StaticCache measured from its tensors equals the formula with 2 K/V heads, not 8
    assert rec["memory"]["kv_cache_bytes_measured"] == rec["memory"]["kv_cache_bytes_formula"]
    assert (
        rec["memory"]["kv_cache_bytes_formula"] == 2 * 2 * 2 * 13 * 8 * 4
    )  # K,V x layers x heads x tokens x dim x fp32


def test_hf_cell_record(tmp_path, capsys):
    out = tmp_path / "hf.json"
    code = main(
        [
            "cell",
            "--engine",
            "hf",
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
            "--out",
            str(out),
        ]
    )
    assert code == 0, capsys.readouterr().err
    rec = json.loads(out.read_text())
    assert rec["status"] == "ok" and rec["cell"]["engine"] == "hf"
    assert rec["check"]["matches_reference"] is True  # HF's static cache == our recompute
    assert rec["memory"]["kv_cache_bytes_measured"] == rec["memory"]["kv_cache_bytes_formula"]


def test_hf_engine_refuses_what_transformers_gpt2_lacks(tmp_path, capsys):
    for args, message in (
        (["--kv-mode", "static-int8"], "kv_mode (engine hf): 'static-int8' is not one of"),
        (["--n-kv-head", "2"], "n_kv_head: engine hf"),
        (["--engine", "vllm"], "engine: 'vllm' is not one of kvbench, hf, ct2"),
    ):
        code = main(["cell", "--engine", "hf", "--model", "tiny", *args, "--out", str(tmp_path / "x.json")])
        err = capsys.readouterr().err
        assert code == 2 and message in err, err
    assert not (tmp_path / "x.json").exists()


@pytest.mark.slow  # the real Snakemake over every engine
def test_vs_peers_sweep_runs_on_tiny(tmp_path):
    """The shipped vs-peers-tiny sweep through the real snakemake to its tables: three engines side by side.
    Its figures come from the same tables (tests/test_figures.py draws a third engine's panels); compiled
    cells are proven one by one (tests/test_cell.py, the compiled hf cell below) and paired with the eager
    recompute in tests/test_frame.py."""
    pytest.importorskip("ctranslate2")  # its third engine (absent where its wheel did not travel: make gpu-wheels)
    import pandas as pd
    from test_pipeline import REPO, copy_workflow, snakemake

    copy_workflow(tmp_path)
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "config.yaml").write_text((REPO / "config" / "config.yaml").read_text())
    snakemake(tmp_path, "--config", "run=[vs-peers-tiny]", "--", "results/vs-peers-tiny/tables")
    cells = pd.read_csv(tmp_path / "results/vs-peers-tiny/tables/cells.csv")
    assert sorted(set(cells["cell.engine"])) == ["ct2", "hf", "kvbench"] and (cells["status"] == "ok").all()
    assert cells["check.matches_reference"].all()
    # each engine crosses only the kv modes it runs: CTranslate2 its own growing cache
    modes = cells.groupby("cell.engine")["cell.kv_mode"].apply(sorted).to_dict()
    assert modes == {"ct2": ["concat"], "hf": ["concat", "none", "static"], "kvbench": ["concat", "none", "static"]}
    speedup = pd.read_csv(tmp_path / "results/vs-peers-tiny/tables/speedup.csv")
    assert set(zip(speedup["cell.engine"], speedup["cell.kv_mode"])) >= {
        ("hf", "static"),
        ("hf", "concat"),
        ("kvbench", "static"),
        ("kvbench", "concat"),
    }
    # each engine's cached modes against its own recompute (CTranslate2 has none to pair with)
    assert speedup.loc[speedup["cell.engine"].isin(["hf", "kvbench"]), "decode_speedup"].notna().all()


# Run in a fresh interpreter (transformers logs a deprecation once per process): hf cells in every mode,
# recording each DeprecationWarning/FutureWarning raised while kvbench's code is on the stack, and each
# transformers log line that says "deprecated". A warning raised while a library is being imported is
# that library's own business (torch warns about itself while transformers imports it), not our call.
WARNING_PROBE = r"""
import json, logging, sys, traceback, warnings
from pathlib import Path

import kvbench
from kvbench.cli import main

OURS = str(Path(kvbench.__file__).parent)
found = []

def showwarning(message, category, filename, lineno, file=None, line=None):
    stack = traceback.extract_stack()
    during_import = any("importlib._bootstrap" in f.filename for f in stack)
    if issubclass(category, (DeprecationWarning, FutureWarning)) and not during_import \
            and any(f.filename.startswith(OURS) for f in stack):
        found.append(f"{category.__name__}: {message} ({filename}:{lineno})")

class Deprecations(logging.Handler):
    def emit(self, record):
        if "deprecat" in record.getMessage().lower():
            found.append(f"transformers log: {record.getMessage()}")

warnings.simplefilter("always")
warnings.showwarning = showwarning
logging.getLogger("transformers").addHandler(Deprecations())
def run(cells):
    found.clear()
    for args in cells:
        assert main(["cell", "--engine", "hf", "--model", "tiny", "--prompt-len", "8", "--new-tokens", "6",
                     "--iters", "1", "--warmup", "1", *args]) == 0
    return list(found)

cells = json.loads(sys.argv[1])
report = {"cells": run(cells)}
if sys.argv[2] == "inject":  # then the probe's own check: a deprecated call made from the engine is caught
    from kvbench.engines.hf import HFEngine
    real = HFEngine.generate
    def generate(self, *args, **kwargs):
        warnings.warn("past_key_values as a tuple is deprecated", FutureWarning)
        return real(self, *args, **kwargs)
    HFEngine.generate = generate
    report["injected"] = run(cells[:1])
print(json.dumps(report))
"""


def deprecations_in_hf_cells(cells: list[list[str]], inject: bool = False) -> dict[str, list[str]]:
    """What the probe found in the cells ("cells") and, with inject, in the first cell run again with a
    deprecated call injected ("injected"), in one fresh interpreter."""
    import subprocess
    import sys

    proc = subprocess.run(
        [sys.executable, "-c", WARNING_PROBE, json.dumps(cells), "inject" if inject else "-"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def hf_cells_probed(tmp_path_factory):
    """One fresh interpreter for both tests below: the eager cells in every mode, the compiled static
    cell, then the first cell again with a deprecated call injected."""
    d = tmp_path_factory.mktemp("hf-warnings")
    cells = [["--kv-mode", mode, "--out", str(d / f"{mode}.json")] for mode in ("none", "concat", "static")]
    cells.append(["--kv-mode", "static", "--compile", "--out", str(d / "compiled.json")])
    return d, deprecations_in_hf_cells(cells, inject=True)


@pytest.mark.slow  # a fresh interpreter running five hf cells
def test_hf_cells_raise_no_deprecation_or_future_warning(hf_cells_probed):
    _, found = hf_cells_probed
    assert found["cells"] == []
    # the probe sees a deprecated call when there is one
    injected = found["injected"]
    assert injected and all("FutureWarning: past_key_values as a tuple is deprecated" in f for f in injected)


@pytest.mark.slow
def test_hf_compiled_static_cell_raises_no_deprecation_or_future_warning(hf_cells_probed):
    d, found = hf_cells_probed
    assert found["cells"] == []  # the compiled cell is among the probed cells
    # the compiled hf cell's record: compiled, its compile timed apart, its tokens our recompute's
    rec = json.loads((d / "compiled.json").read_text())
    assert rec["status"] == "ok" and rec["cell"]["compile"] is True and rec["latency"]["compile_s"] > 0
    assert rec["check"]["matches_reference"] is True
