"""What a user can type or damage: one line on stderr, the documented exit code (0 ok, 1 error,
2 bad input, 130 interrupted), nothing partial left, never a traceback (kvbench.cli.ending)."""

from __future__ import annotations

import errno
import importlib
import json
import signal
import subprocess
import zipfile
import zlib
from pathlib import Path

import pytest
import torch
from fixtures import Sweep, grid_records

from kvbench.analysis import aggregate as agg
from kvbench.analysis import bundle as bnd
from kvbench.cli import dispatch as cli
from kvbench.core import record as kvrecord
from kvbench.measure.spec import UsageError
from kvbench.models import checkpoint


def run(argv: list[str], capsys) -> tuple[int, str]:
    """`kvbench <argv>` in this process: its exit code (argparse's SystemExit too) and its stderr."""
    try:
        code = cli.main(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    return code, err


def one_line(err: str) -> str:
    assert err.count("\n") == 1, err
    return err


# ------------------------------------------------------------------ the guard every command runs under


@pytest.mark.parametrize("command", sorted({*cli.DELEGATED, "cell"}))
@pytest.mark.parametrize(
    "exc,code,says",
    [
        (KeyboardInterrupt(), 130, "interrupted"),
        (zlib.error("Error -3 while decompressing data"), 1, "error: a damaged zip archive: Error -3"),
        (zipfile.BadZipFile("Bad magic number for file header"), 1, "error: a damaged zip archive: Bad magic"),
        (UsageError("batch: 0 must be an integer >= 1"), 2, "error: batch: 0 must be"),
        (checkpoint.CheckpointError("checkpoint: x is damaged"), 2, "error: checkpoint: x is damaged"),
        (OSError(errno.ENOSPC, "No space left on device", "/r/t.csv"), 1, "error: /r/t.csv: No space left"),
    ],
    ids=["interrupt", "zlib", "badzip", "usage", "checkpoint", "oserror"],
)
def test_every_command_ends_what_stops_it_in_one_line_and_its_exit_code(command, exc, code, says, monkeypatch, capsys):
    """The next command added gets this for free: dispatch.main is the one place a command ends."""

    def stopped(*args, **kwargs):
        raise exc

    if command == "cell":
        monkeypatch.setattr(cli, "cmd_cell", stopped)
    else:
        monkeypatch.setattr(importlib.import_module(cli.DELEGATED[command][0]), "main", stopped)
    argv = [command] if command != "cell" else ["cell", "--model", "tiny"]
    got, err = run(argv, capsys)
    assert got == code and one_line(err).startswith(f"kvbench {command}: {says}"), err


def test_a_safetensors_error_is_bad_input_and_a_bug_keeps_its_traceback(monkeypatch, capsys):
    from safetensors import SafetensorError

    for exc, code in ((SafetensorError("incomplete metadata"), 2), (RuntimeError("a bug"), None)):
        monkeypatch.setattr(cli, "cmd_cell", lambda *a, exc=exc, **k: (_ for _ in ()).throw(exc))
        if code is None:
            with pytest.raises(RuntimeError, match="a bug"):
                cli.main(["cell", "--model", "tiny"])
        else:
            assert run(["cell", "--model", "tiny"], capsys) == (2, "kvbench cell: error: incomplete metadata\n")


@pytest.mark.slow
def test_ctrl_c_during_a_cell_is_one_line_exit_130_and_no_record(tmp_path, kvbench_exe):
    out = tmp_path / "cell.json"
    argv = [*kvbench_exe, "cell", "--model", "tiny", "--device", "cpu", "--iters", "100000", "--out", str(out)]
    p = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    try:
        for line in p.stderr:  # read up to the line that says measuring has begun: no sleeps
            if "measuring" in line:
                break
        else:
            pytest.fail(f"the cell ended before measuring (exit {p.wait()})")
        p.send_signal(signal.SIGINT)
        _, rest = p.communicate(timeout=120)  # never a read that waits forever on a cell that runs on
        assert p.returncode == 130
    finally:
        p.kill()
    assert rest == "kvbench cell: interrupted; no record written\n"
    assert list(tmp_path.iterdir()) == []  # no record, no temp file


# ------------------------------------------------------------------ a bundle damaged inside


@pytest.fixture(scope="module")
def damaged_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """(a sweep folder, its bundle with bytes of one compressed member flipped: the zip's directory and
    headers whole, only inflating that member fails)."""
    s = Sweep(tmp_path_factory.mktemp("sweep"), grid_records())
    agg.aggregate(s.paths, s.tables)
    whole = s.dir / "bundle.zip"
    bnd.build_bundle(s.dir, whole, None, [])
    data = bytearray(whole.read_bytes())
    with zipfile.ZipFile(whole) as zf:
        info = zf.getinfo("tables/cells.csv")
    start = info.header_offset + 30 + len(info.filename.encode()) + len(info.extra)
    data[start + 10 : start + 60] = bytes(b ^ 0xFF for b in data[start + 10 : start + 60])
    bad = s.dir.parent / "damaged.zip"
    bad.write_bytes(bytes(data))
    return s.dir, bad


def test_a_bundle_whose_compressed_bytes_are_damaged_is_named_by_verify_publish_and_compare(
    damaged_bundle, tmp_path, capsys
):
    sweep_dir, bad = damaged_bundle
    code, err = run(["bundle", "--verify", str(bad)], capsys)
    assert code == 1 and one_line(err).startswith(f"bundle: {bad}: tables/cells.csv: unreadable"), err
    code, err = run(["publish", str(bad), "--dest", str(tmp_path / "pub")], capsys)
    assert code == 1 and "tables/cells.csv: unreadable" in one_line(err) and not (tmp_path / "pub").exists()
    code, err = run(["compare", str(bad), str(sweep_dir), "--out", str(tmp_path / "cmp")], capsys)
    assert code == 2 and "tables/cells.csv: unreadable" in one_line(err) and not (tmp_path / "cmp").exists()


# ------------------------------------------------------------------ a checkpoint damaged or inconsistent

CELL = ["--device", "cpu", "--prompt-len", "4", "--new-tokens", "4", "--iters", "1", "--warmup", "0"]


def gpt2_dir(d: Path, n_head: int = 2, tensors: dict | None = None) -> Path:
    """A transformers-style GPT-2 folder: config.json and a model.safetensors (not necessarily of that shape)."""
    from safetensors.torch import save_file

    d.mkdir(parents=True, exist_ok=True)
    config = {"model_type": "gpt2", "n_positions": 32, "vocab_size": 300, "n_layer": 1, "n_head": n_head, "n_embd": 16}
    (d / "config.json").write_text(json.dumps(config))
    save_file(tensors or {"wte.weight": torch.zeros(300, 16)}, str(d / "model.safetensors"))
    return d


def truncated(d: Path) -> Path:
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])  # a download cut short
    return f


@pytest.mark.parametrize("command", ["cell", "sample", "visualize"])
def test_a_truncated_safetensors_is_bad_input_naming_the_file_and_leaves_nothing(command, tmp_path, capsys):
    weights = truncated(gpt2_dir(tmp_path / "ckpt"))
    out = tmp_path / ("x.gif" if command == "visualize" else "x.json")
    argv = {
        "cell": ["cell", *CELL, "--out", str(out)],
        "sample": ["sample", "--encoding", "gpt2", "--max-new-tokens", "2"],
        "visualize": ["visualize", "--out", str(out)],
    }[command]
    code, err = run([*argv, "--checkpoint", str(tmp_path / "ckpt")], capsys)
    assert code == 2 and str(weights) in one_line(err) and "cut short" in err, err
    assert not out.exists()


def test_a_checkpoint_whose_weights_do_not_fit_its_config_is_bad_input_with_no_record(tmp_path, capsys):
    d = gpt2_dir(tmp_path / "ckpt")  # a sound file holding one tensor: no GPT-2 can be built from it
    out = tmp_path / "x.json"
    code, err = run(["cell", *CELL, "--checkpoint", str(d), "--out", str(out)], capsys)
    assert code == 2 and one_line(err).startswith("kvbench cell: error: checkpoint: weights do not fit"), err
    assert not out.exists()


def test_an_inconsistent_checkpoint_config_is_bad_input(tmp_path, capsys):
    d = gpt2_dir(tmp_path / "gpt2", n_head=3)  # 16 wide in 3 heads
    code, err = run(["cell", *CELL, "--checkpoint", str(d), "--out", str(tmp_path / "x.json")], capsys)
    assert code == 2 and f"{d / 'config.json'}: n_embd (16) must be divisible by n_head (3)" in one_line(err)
    llama = tmp_path / "llama"
    llama.mkdir()
    config = {"model_type": "llama", "vocab_size": 300, "hidden_size": 16, "intermediate_size": 32}
    config |= {"num_hidden_layers": 1, "num_attention_heads": 4, "num_key_value_heads": 3}
    (llama / "config.json").write_text(json.dumps(config))
    (llama / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes())
    with pytest.raises(checkpoint.CheckpointError, match="n_kv_head: 3 must divide n_head"):
        checkpoint.read_config(str(llama))
    config["num_hidden_layers"] = 0
    (llama / "config.json").write_text(json.dumps(config))
    with pytest.raises(checkpoint.CheckpointError, match="n_layer 0 must be an integer >= 1"):
        checkpoint.read_config(str(llama))


def test_loading_a_truncated_checkpoint_directly_names_the_file(tmp_path):
    weights = truncated(gpt2_dir(tmp_path / "ckpt"))
    with pytest.raises(checkpoint.CheckpointError, match=f"{weights}.*cut short"):
        checkpoint.load(str(tmp_path / "ckpt"), "cpu", torch.float32)


# ------------------------------------------------------------------ numbers nothing can use


@pytest.mark.parametrize(
    "argv,says",
    [
        (["sample", "--temperature", "nan"], "argument --temperature: 'nan' is not a finite number"),
        (["sample", "--temperature", "-0.5"], "argument --temperature: '-0.5' must be >= 0 (0 = greedy)"),
        (["sample", "--top-k", "0"], "argument --top-k: '0' must be >= 1"),
        (["visualize", "--frame-ms", "-250", "--out", "x.gif"], "argument --frame-ms: '-250' must be >= 1"),
        (["visualize", "--layer", "-1", "--out", "x.gif"], "argument --layer: '-1' must be >= 0"),
        (["cell", "--prompt-spread", "inf"], "argument --prompt-spread: 'inf' is not a finite number"),
    ],
    ids=["nan-temperature", "negative-temperature", "top-k", "frame-ms", "layer", "inf-spread"],
)
def test_a_number_nothing_can_use_is_refused_as_it_is_parsed(argv, says, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, err = run(argv, capsys)
    assert code == 2 and one_line(err) == f"kvbench {argv[0]}: error: {says}\n"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------ a config that is not a sweep config


@pytest.mark.parametrize(
    "text,says",
    [
        ("just some notes\n", "not a sweep config"),
        ("- tiny\n- small\n", "not a sweep config"),
        ("sweeps:\n  tiny: 3\n", "sweep 'tiny' is not a sweep"),
        ("sweeps:\n  tiny:\n    grid: {kv_mode: 3}\n", "sweep 'tiny' is not a valid sweep"),
        ("sweeps: [\n", "not valid YAML at line 2"),
    ],
    ids=["text", "list", "sweep-shape", "grid-shape", "syntax"],
)
def test_aggregate_with_a_file_that_is_not_a_sweep_config_is_one_line(text, says, tmp_path, capsys):
    config = tmp_path / "config.yaml"
    config.write_text(text)
    code, err = run(["aggregate", "--sweep", "tiny", "--config", str(config), "--out", str(tmp_path / "t")], capsys)
    assert code == 1 and one_line(err).startswith(f"aggregate: error: {config}: {says}"), err


# ------------------------------------------------------------------ a damaged table


@pytest.fixture(scope="module")
def tables(tmp_path_factory) -> Path:
    s = Sweep(tmp_path_factory.mktemp("tables"), grid_records())
    agg.aggregate(s.paths, s.tables)
    return s.tables


@pytest.mark.parametrize("command", ["figures", "explain"])
def test_a_cells_table_cut_mid_row_or_missing_a_column_is_named(command, tables, tmp_path, capsys):
    text = (tables / "cells.csv").read_text()
    cut, missing = tmp_path / "cut", tmp_path / "missing"
    cut.mkdir()
    missing.mkdir()
    (cut / "cells.csv").write_text(text[: len(text) * 2 // 3])
    header, *rows = text.splitlines()
    drop = header.split(",").index("cell.kv_mode")
    kept = [",".join(f for i, f in enumerate(line.split(",")) if i != drop) for line in (header, *rows)]
    (missing / "cells.csv").write_text("\n".join(kept) + "\n")
    for folder, says in ((cut, "cut off at line"), (missing, "no column cell.kv_mode")):
        out = tmp_path / f"{command}-{folder.name}" / ("e.md" if command == "explain" else "")
        code, err = run([command, "--tables", str(folder), "--out", str(out)], capsys)
        assert code == 1 and one_line(err).startswith(f"{command}: error: {folder / 'cells.csv'}: {says}"), err


# ------------------------------------------------------------------ messages that said the wrong thing


def test_a_prompt_file_that_is_a_directory_says_so(tmp_path, capsys):
    code, err = run(["cell", "--model", "tiny", "--prompt-file", str(tmp_path)], capsys)
    assert (
        code == 2
        and one_line(err) == f"kvbench cell: error: prompt_file: {str(tmp_path)!r} is a directory; give a text file\n"
    )


def test_check_records_on_a_file_says_it_is_a_file(tmp_path, capsys):
    f = tmp_path / "r.json"
    f.write_text("{}")
    code, err = run(["check-records", str(f)], capsys)
    assert (
        code == 1
        and one_line(err)
        == f"kvbench check-records: error: {f}: is a file, not a folder (give results/<sweep>/cells)\n"
    )


def test_an_out_under_a_regular_file_names_the_file(tables, tmp_path, capsys):
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    records = str(tables.parent / "cells")
    for argv in (
        ["aggregate", "--records", records, "--out", str(blocker)],
        ["aggregate", "--records", records, "--out", str(blocker / "tables")],
        ["explain", "--tables", str(tables), "--out", str(blocker / "e.md")],
    ):
        code, err = run(argv, capsys)
        assert code == 1 and f"Not a directory ({blocker} is a file, not a folder)" in one_line(err), err
        assert "File exists" not in err


def test_visualize_out_a_directory_asks_for_a_gif(tmp_path, capsys):
    code, err = run(["visualize", "--model", "tiny", "--out", str(tmp_path)], capsys)
    assert code == 2 and one_line(err).endswith("is a directory; give a file path ending in .gif\n"), err


def test_a_kv_mode_option_the_mode_does_not_use_is_said_in_one_line(tmp_path, capsys):
    out = str(tmp_path)  # a directory: refused after the flags are read, before anything is built
    code, err = run(["cell", "--model", "tiny", "--kv-mode", "static", "--block-tokens", "8", "--out", out], capsys)
    first, refused = err.splitlines()
    assert first == "kvbench cell: warning: --block-tokens applies to kv_mode paged only; ignored for static"
    assert code == 2 and refused.startswith("kvbench cell: error: out:")
    code, err = run(["cell", "--model", "tiny", "--kv-mode", "paged", "--block-tokens", "8", "--out", out], capsys)
    assert "warning" not in err  # it applies
    code, err = run(["cell", "--model", "tiny", "--kv-mode", "sliding", "--out", out], capsys)
    assert "warning" not in err  # not given: the defaults are no one's choice


def test_a_sweeps_static_cell_is_given_no_option_it_does_not_use():
    """The workflow passes a grid's block size only to paged cells: its cells never warn (nor fail)."""
    from kvbench.core import sweep as kvsweep

    sweep = {"grid": {"model": ["tiny"], "kv_mode": ["static", "paged"], "block_tokens": [16]}}
    flags = {c["kv_mode"]: kvsweep.cell_flags(c, kvsweep.sweep_settings(sweep)) for c in kvsweep.cells(sweep)}
    assert "--block-tokens" not in flags["static"] and "--block-tokens 16" in flags["paged"]
    # settings: a sliding window and an int4 group size reach only their own modes' cells
    modes = ["static", "sliding", "static-int4"]
    sweep = {"grid": {"model": ["tiny"], "kv_mode": modes}, "settings": {"window": 16, "sinks": 4, "kv_group_size": 32}}
    flags = {c["kv_mode"]: kvsweep.cell_flags(c, kvsweep.sweep_settings(sweep)) for c in kvsweep.cells(sweep)}
    assert not {"--window", "--sinks", "--kv-group-size"} & set(flags["static"].split())
    assert (
        "--window 16" in flags["sliding"] and "--sinks 4" in flags["sliding"] and "--kv-group" not in flags["sliding"]
    )
    assert "--kv-group-size 32" in flags["static-int4"] and "--window" not in flags["static-int4"]


def test_os_error_line_says_which_part_of_a_path_is_a_file(tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    exists = FileExistsError(errno.EEXIST, "File exists", str(blocker))
    assert kvrecord.os_error_line(exists) == f"{blocker}: Not a directory ({blocker} is a file, not a folder)"
    under = NotADirectoryError(errno.ENOTDIR, "Not a directory", str(blocker / "a" / "b.csv"))
    assert kvrecord.os_error_line(under) == f"{blocker}/a/b.csv: Not a directory ({blocker} is a file, not a folder)"
