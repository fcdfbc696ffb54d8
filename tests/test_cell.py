"""`kvbench cell`: one process, one schema-valid record; bad input, OOM and kills handled."""

import json
import os
import signal
import subprocess

import pytest

from kvbench.cli import main
from kvbench.core.record import validate

FAST = ["--model", "tiny", "--prompt-len", "8", "--new-tokens", "6", "--warmup", "1", "--iters", "2"]


def run_cli(args, capsys):
    try:
        code = main(["cell", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize("mode", ["none", "concat", "static"])
def test_cell_writes_a_schema_valid_record(tmp_path, capsys, mode):
    out = tmp_path / "deep" / "dir" / "cell.json"
    code, _ = run_cli([*FAST, "--kv-mode", mode, "--batch", "2", "--out", str(out)], capsys)
    assert code == 0
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["status"] == "ok" and rec["error"] is None
    assert rec["cell"]["kv_mode"] == mode and rec["cell"]["batch"] == 2 and rec["cell"]["device"] == "cpu"
    # the eager CPU path, recorded: oneDNN, or kvbench's kernel for the shapes it measured faster at
    assert rec["model_info"]["weight_layout"] in ("onednn-packed", "small-batch+onednn-packed")
    lat = rec["latency"]
    assert len(lat["per_step_decode_ms"]) == lat["decode_steps"] == 5
    for key in ("prefill_ms", "decode_ms_per_token", "total_generate_ms"):
        s = lat[key]
        assert 0 < s["min"] <= s["median"] <= s["max"]
        assert s["n"] == 2 and 0 <= s["std"] <= s["max"] - s["min"]  # over the 2 timed iterations
    assert lat["decode_tokens_per_s"] == pytest.approx(2 * 1e3 / lat["decode_ms_per_token"]["median"])
    mem = rec["memory"]
    assert mem["rss_peak_bytes"] > mem["weights_bytes"] > 0
    assert mem["kv_cache_bytes_measured"] == mem["kv_cache_bytes_formula"]
    if mode == "none":
        assert mem["kv_cache_bytes_formula"] is None
    else:  # 2 (K,V) x 2 layers x batch 2 x 4 heads x (8 + 6 - 1) positions x 16 dims x 4 bytes
        assert mem["kv_cache_bytes_formula"] == 2 * 2 * 2 * 4 * 13 * 16 * 4
    assert rec["check"]["matches_reference"] is True and rec["check"]["timed_equals_checked"] is True
    a = rec["analytic"]
    assert a["floor_ms_per_token"] > 0 and 0 < a["fraction_of_floor"] and a["bandwidth_bytes_per_s"] > 1e9
    assert rec["energy"] == {"decode_joules_per_token": None, "method": None}  # no GPU here
    env = rec["environment"]
    assert env["torch"] and env["python"] and env["host"] and env["kvbench_version"]


def test_all_modes_produce_the_same_token_hash(tmp_path, capsys):
    hashes = set()
    for mode in ("none", "concat", "static"):
        out = tmp_path / f"{mode}.json"
        assert run_cli([*FAST, "--kv-mode", mode, "--attention", "math", "--out", str(out)], capsys)[0] == 0
        hashes.add(json.loads(out.read_text())["check"]["tokens_sha256"])
    assert len(hashes) == 1


def test_absurd_batch_is_an_oom_record_not_a_crash(tmp_path, capsys):
    out = tmp_path / "oom.json"
    code, err = run_cli(
        ["--model", "tiny", "--batch", str(10**9), "--prompt-len", "32", "--new-tokens", "4", "--out", str(out)], capsys
    )
    assert code == 0
    rec = json.loads(out.read_text())
    validate(rec)
    assert rec["status"] == "oom" and "allocate" in rec["error"]
    assert rec["latency"] is None
    assert "oom" in err


def test_cli_end_to_end_in_its_own_process(tmp_path, kvbench_exe):
    out = tmp_path / "c.json"
    p = subprocess.run(
        [*kvbench_exe, "cell", *FAST, "--kv-mode", "concat", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    assert json.loads(out.read_text())["status"] == "ok"
    bad = subprocess.run(
        [*kvbench_exe, "cell", "--model", "nope", "--out", str(out.with_name("b.json"))],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and not out.with_name("b.json").exists()


def test_a_killed_cell_leaves_no_file(tmp_path, kvbench_exe):
    out = tmp_path / "killed.json"
    p = subprocess.Popen(
        [*kvbench_exe, "cell", "--model", "tiny", "--iters", "100000", "--out", str(out)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        line = p.stderr.readline()  # printed once the model is built and measurement starts
        assert "measuring" in line, line  # 100000 iterations: no machine ends them before the kill
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_int8_and_gqa_cells_record_their_cache_and_logit_error(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert run_cli([*FAST, "--kv-mode", "static-int8", "--n-kv-head", "2", "--out", str(out)], capsys)[0] == 0
    rec = json.loads(out.read_text())
    assert rec["cell"]["n_kv_head"] == 2 and rec["model_info"]["n_kv_head"] == 2
    # 2 (K,V) x 2 layers x 1 x 2 kv heads x 13 positions x (16 int8 + 4-byte scale)
    assert rec["memory"]["kv_cache_bytes_measured"] == rec["memory"]["kv_cache_bytes_formula"] == 2 * 2 * 2 * 13 * 20
    assert rec["check"]["max_logit_diff"] > 0 and rec["check"]["reference_steps"] == 6


def test_a_threads_cell_records_and_uses_its_count_and_more_than_the_cores_is_unsupported(tmp_path, capsys):
    import torch

    before, cores = torch.get_num_threads(), len(os.sched_getaffinity(0))
    try:
        out = tmp_path / "t1.json"
        assert run_cli([*FAST, "--threads", "1", "--out", str(out)], capsys)[0] == 0
        rec = json.loads(out.read_text())
        assert rec["status"] == "ok" and rec["cell"]["threads"] == 1 and rec["environment"]["torch_threads"] == 1
        out = tmp_path / "many.json"
        assert run_cli([*FAST, "--threads", str(cores + 1), "--out", str(out)], capsys)[0] == 0
        rec = json.loads(out.read_text())
        assert rec["status"] == "unsupported" and rec["cell"]["threads"] == cores + 1 and rec["latency"] is None
        assert rec["error"].startswith(f"threads: {cores + 1} exceeds the {cores} CPU cores")
    finally:
        torch.set_num_threads(before)  # the cells ran in this process


@pytest.mark.slow
def test_compiled_decode_gives_the_eager_tokens_and_records_compile_time_apart(tmp_path, capsys):
    out = tmp_path / "compiled.json"
    code, err = run_cli([*FAST, "--kv-mode", "static", "--compile", "--out", str(out)], capsys)
    assert code == 0, err
    rec = json.loads(out.read_text())
    assert rec["cell"]["compile"] is True and rec["latency"]["compile_s"] > 0
    assert rec["check"]["matches_reference"] is True and rec["check"]["timed_equals_checked"] is True
    # compile time is far longer than any timed generation: it was not inside one
    assert rec["latency"]["total_generate_ms"]["max"] < 1e3 * rec["latency"]["compile_s"]
