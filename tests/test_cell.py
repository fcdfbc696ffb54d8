"""`kvbench cell`: one process, one schema-valid record; bad input, OOM and kills handled."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from kvbench.cli import main
from kvbench.record import validate, write_atomic

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
    assert rec["model_info"]["weight_layout"] == "wide-input-major"  # the CPU layout, recorded
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


BAD_INPUTS = [
    (["--model", "gpt5"], "model: 'gpt5' is not one of tiny, gpt2"),
    (["--kv-mode", "paged"], "kv_mode: 'paged' is not one of none, concat, static"),
    (["--dtype", "fp8"], "dtype: 'fp8' is not one of fp32, bf16, fp16"),
    (["--attention", "flash"], "attention: 'flash' is not one of sdpa, math"),
    (["--device", "tpu"], "device: 'tpu' is not one of auto, cpu, cuda"),
    (["--batch", "0"], "batch: 0 must be an integer >= 1"),
    (["--prompt-len", "0"], "prompt_len: 0 must be an integer >= 1"),
    (["--new-tokens", "1"], "new_tokens: 1 must be an integer >= 2"),
    (["--iters", "0"], "iters: 0 must be an integer >= 1"),
    (["--prompt-len", "60", "--new-tokens", "8"], "exceeds the model's block_size 64"),
    (["--batch", "two"], "argument --batch: invalid int value: 'two'"),
    (["--checkpoint", "/nonexistent/ckpt.pt"], "checkpoint: '/nonexistent/ckpt.pt' does not exist"),
    (["--prompt-file", "/nonexistent.txt"], "prompt_file: '/nonexistent.txt' does not exist"),
    (["--n-kv-head", "3"], "n_kv_head: 3 must divide n_head (4)"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[a[0] for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2_and_no_file(tmp_path, capsys, args, message):
    out = tmp_path / "cell.json"
    code, err = run_cli(["--model", "tiny", *args, "--out", str(out)], capsys)
    assert code == 2
    assert message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()


def test_cuda_on_a_machine_without_one_is_bad_input(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    code, err = run_cli(["--device", "cuda", "--out", str(tmp_path / "x.json")], capsys)
    assert code == 2 and "device: 'cuda' requested but torch sees no CUDA device" in err


def test_malformed_checkpoint_and_unwritable_out(tmp_path, capsys):
    junk = tmp_path / "ckpt.pt"
    junk.write_text("garbage")
    code, err = run_cli(["--checkpoint", str(junk), "--out", str(tmp_path / "a.json")], capsys)
    assert code == 2 and "is not a readable torch checkpoint" in err
    blocker = tmp_path / "file.txt"
    blocker.write_text("")
    code, err = run_cli(["--out", str(blocker / "cell.json")], capsys)
    assert code == 2 and "out: " in err and "not writable" in err
    code, err = run_cli(["--out", str(tmp_path)], capsys)
    assert code == 2 and "is a directory" in err


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_read_only_directory_for_a_non_root_user_is_refused_before_any_work(capsys):
    import tempfile

    import kvbench.cell  # noqa: F401  (imported as root: `nobody` cannot read root's Python)

    top = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is root-only all the way up
    try:
        top.chmod(0o755)
        ro = top / "ro"
        ro.mkdir(mode=0o555)  # anyone may enter it, nobody but root may create files in it
        os.seteuid(65534)  # act as `nobody` (the real uid stays root, so it can be given back)
        try:
            code, err = run_cli(["--model", "tiny", "--out", str(ro / "cell.json")], capsys)
        finally:
            os.seteuid(0)
        assert code == 2 and err.count("\n") == 1 and "out: " in err and "not writable" in err, err
        assert "built" not in err and list(ro.iterdir()) == []
    finally:
        shutil.rmtree(top)


def test_a_path_os_access_calls_writable_but_is_not_is_refused(capsys):
    # As root os.access says yes to /proc; only creating a file there tells the truth.
    code, err = run_cli(["--model", "tiny", "--out", "/proc/kvbench-cell.json"], capsys)
    assert code == 2 and err.count("\n") == 1 and "out: '/proc/kvbench-cell.json' is not writable" in err


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
        assert "measuring" in line, line
        time.sleep(1.0)
        assert p.poll() is None, "the cell finished before it could be killed"
        p.send_signal(signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        p.kill()
    assert p.returncode == -signal.SIGKILL
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    rec = json.loads((tmp_path / "x").with_suffix(".json").write_text("{}") and "{}")
    with pytest.raises(ValueError, match="record"):
        write_atomic(out, rec)  # not schema-valid: refused before anything is written
    assert list(tmp_path.iterdir()) == [tmp_path / "x.json"]


def test_atomic_write_interrupted_mid_write(tmp_path, monkeypatch, capsys):
    import os

    good = tmp_path / "good.json"
    assert run_cli([*FAST, "--out", str(good)], capsys)[0] == 0
    rec = json.loads(good.read_text())
    target = tmp_path / "target.json"

    def boom(fd):
        raise KeyboardInterrupt  # as if the job were interrupted while flushing

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        write_atomic(target, rec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.json"]


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
