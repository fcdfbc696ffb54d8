"""A cell's settings (measure/spec.py): every field checked before anything is built, bad input one line, exit 2."""

import os
import shutil
from pathlib import Path

import pytest

from kvbench.cli import main
from kvbench.measure.spec import CellSpec, UsageError


def run_cli(args, capsys):
    try:
        code = main(["cell", *args])
    except SystemExit as e:  # argparse's own errors
        code = e.code
    err = capsys.readouterr().err
    return code, err


BAD_INPUTS = [
    (["--model", "gpt5"], "model: 'gpt5' is not one of tiny, gpt2"),
    (["--kv-mode", "radix"], "kv_mode: 'radix' is not one of none, concat, static"),
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
def test_read_only_directory_for_a_non_root_user_is_refused_before_any_work(capsys, monkeypatch):
    import tempfile

    import kvbench.measure.cell  # noqa: F401  (imported as root: `nobody` cannot read root's Python)

    top = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's tmp_path is root-only all the way up
    try:
        top.chmod(0o755)
        ro = top / "ro"
        ro.mkdir(mode=0o555)  # anyone may enter it, nobody but root may create files in it
        cache = top / "cache"  # a cache folder `nobody` may write, so the out path is what is judged
        cache.mkdir()
        cache.chmod(0o777)
        monkeypatch.setenv("KVBENCH_CACHE_DIR", str(cache))
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


def test_all_heads_is_none_in_the_spec_and_the_record_cell_and_a_count_in_model_info():
    spec = CellSpec(model="tiny", device="cpu", check_steps=40, new_tokens=8)
    cfg, device = spec.check()
    cell = spec.as_record_cell(device)
    assert spec.n_kv_head is None and cell["n_kv_head"] is None and cfg.kv_heads == cfg.n_head == 4
    assert cell["check_steps"] == 8  # no more steps are checked than are generated
    grouped, _ = CellSpec(model="tiny", device="cpu", n_kv_head=2).check()
    assert grouped.kv_heads == 2
    with pytest.raises(UsageError, match="^n_kv_head: 0 must be an integer >= 1$"):
        CellSpec(model="tiny", device="cpu", n_kv_head=0).check()


def test_a_peer_engine_refuses_only_k_v_heads_the_model_lacks():
    pytest.importorskip("transformers")
    CellSpec(model="tiny-llama", engine="hf", device="cpu", n_kv_head=2).check()  # its own two: accepted
    with pytest.raises(UsageError, match="^n_kv_head: engine hf runs the model's own K/V heads"):
        CellSpec(model="tiny-llama", engine="hf", device="cpu", n_kv_head=1).check()
    with pytest.raises(UsageError, match="^n_kv_head: engine hf"):
        CellSpec(model="tiny", engine="hf", device="cpu", n_kv_head=2).check()  # GPT-2 has one K/V per query head
