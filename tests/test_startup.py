"""A cell costs its measurement, not seconds of start-up: what it imports, builds and records."""

import json
import subprocess
import sys

import pytest
import torch

from kvbench.models.gpt2 import build_random, preset

PHASES = {"import", "build", "check", "warmup", "timed", "probe"}


def test_an_eager_cell_never_imports_dynamo_and_records_its_phases(tmp_path, kvbench_exe):
    script = (
        "import sys, json\n"
        "from kvbench.cli import main\n"
        "code = main(['cell', '--model', 'tiny', '--prompt-len', '8', '--new-tokens', '4',"
        f" '--out', {str(tmp_path / 'c.json')!r}])\n"
        "print(json.dumps({'code': code, 'dynamo': 'torch._dynamo' in sys.modules,"
        " 'inductor': any(m.startswith('torch._inductor') for m in sys.modules)}))\n"
    )
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    seen = json.loads(p.stdout.strip().splitlines()[-1])
    assert seen == {"code": 0, "dynamo": False, "inductor": False}, "an eager cell paid for torch.compile's import"
    phases = json.loads((tmp_path / "c.json").read_text())["environment"]["phases_s"]
    assert set(phases) == PHASES and all(v >= 0 for v in phases.values()), phases


def test_weights_laid_out_for_decoding_are_initialised_once_in_place():
    model = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    head, qkv, proj = (
        model.lm_head.weight,
        model.transformer.h[0].attn.c_attn.weight,
        model.transformer.h[0].attn.c_proj.weight,
    )
    assert head.t().is_contiguous() and qkv.t().is_contiguous() and proj.is_contiguous()
    assert head is model.transformer.wte.weight  # still tied
    assert abs(float(head.std()) - 0.02) < 1e-3 and abs(float(qkv.mean())) < 1e-3  # nanoGPT's N(0, 0.02), filled
    again = build_random(preset("tiny"), "cpu", torch.float32, seed=0, for_decoding=True)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), again.parameters()))  # seeded


@pytest.mark.slow  # six cell processes
def test_breakdown_benchmark_prints_every_phase(repo):
    p = subprocess.run(
        [
            sys.executable,
            str(repo / "benchmarks" / "cell_breakdown.py"),
            "--model",
            "tiny",
            "--rounds",
            "1",
            "--new-tokens",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr
    header = next(line for line in p.stdout.splitlines() if line.startswith("| cell |"))
    for column in (*sorted(PHASES), "rest", "wall", "fixed cost beyond import torch"):
        assert f" {column} |" in header, column
    rows = [line for line in p.stdout.splitlines() if line.startswith(("| first cell", "| later cells"))]
    assert len(rows) == 2
