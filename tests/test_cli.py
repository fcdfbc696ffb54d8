"""`kvbench <command>`: an OSError in any command is one line naming the path, exit code 1, no traceback."""

import errno
import importlib
import resource
import subprocess

import pytest

from kvbench.cli import dispatch as cli
from kvbench.core.record import os_error_line


def test_an_os_error_is_one_line_naming_its_paths():
    assert os_error_line(FileNotFoundError(errno.ENOENT, "No such file or directory", "/r/t.csv")) == (
        "/r/t.csv: No such file or directory"
    )
    moved = OSError(errno.EXDEV, "Invalid cross-device link", "/a/r.json", None, "/b/r.json")
    assert os_error_line(moved) == "/a/r.json -> /b/r.json: Invalid cross-device link"
    assert os_error_line(OSError("the cache at /c is damaged")) == "the cache at /c is damaged"


@pytest.mark.parametrize("command", sorted(cli.DELEGATED))
def test_every_delegated_command_turns_an_os_error_into_one_line(command, monkeypatch, capsys):
    module = importlib.import_module(cli.DELEGATED[command][0])

    def fail(argv):
        raise PermissionError(errno.EACCES, "Permission denied", "/results/t/tables/cells.csv")

    monkeypatch.setattr(module, "main", fail)
    assert cli.main([command, "--whatever"]) == 1
    assert capsys.readouterr().err == f"kvbench {command}: error: /results/t/tables/cells.csv: Permission denied\n"


def test_a_file_size_limit_hit_while_writing_a_gif_is_one_line(tmp_path, kvbench_exe):
    """A real write failure (RLIMIT_FSIZE, as `ulimit -f` sets it): Python ignores SIGXFSZ, write() fails."""
    out = tmp_path / "att.gif"

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, 1024))

    argv = [*kvbench_exe, "visualize", "--model", "tiny", "--new-tokens", "8", "--out", str(out)]
    p = subprocess.run(argv, preexec_fn=limit, capture_output=True, text=True, timeout=300)
    assert p.returncode == 1 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr == f"kvbench visualize: error: {out}: File too large\n"
    assert list(tmp_path.iterdir()) == []  # the writer took its temp file away


def test_check_records_of_a_folder_that_is_not_there_is_one_line_and_fails(tmp_path, capsys):
    assert cli.main(["check-records", str(tmp_path / "nonexistent")]) == 1
    err = capsys.readouterr().err
    assert (
        err
        == f"kvbench check-records: error: {tmp_path / 'nonexistent'}: no such folder (give results/<sweep>/cells)\n"
    )


def test_the_help_names_what_each_command_and_option_takes(capsys):
    assert "tokenizer.json" in cli.DELEGATED["sample"][1]  # a Llama checkpoint's tokenizer too, not tiktoken only
    with pytest.raises(SystemExit):
        cli.main(["cell", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "paged (blocks taken" in text and "smollm2-135m" in text and "LlamaForCausalLM" in text
