"""Every analysis command ends in one line: a writer that cannot write (a read-only folder, a full
disk, a folder where its file should be, a file where its folder should be) names the path and
exits 1, never a traceback."""

from __future__ import annotations

import errno
import os
import shutil
import tempfile
from pathlib import Path

import pytest
from fixtures import Sweep, make_record

from kvbench.analysis import aggregate as agg
from kvbench.analysis import bundle as bnd
from kvbench.analysis import command
from kvbench.analysis import explain as ex
from kvbench.analysis import figures as fig
from kvbench.analysis import publish as pub
from kvbench.core import record as kvrecord


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    records = [make_record(mode, batch, 8) for mode in ("none", "static") for batch in (1, 2)]
    s = Sweep(tmp_path_factory.mktemp("sweep"), records)
    agg.aggregate(s.paths, s.tables)
    s.bundle = s.dir / "bundle.zip"
    bnd.build_bundle(s.dir, s.bundle, None, [])
    return s


# Each writer: (its main, its argv given the sweep and where to write).
WRITERS = {
    "aggregate": (agg.main, lambda s, out: ["--records", str(s.dir / "cells"), "--out", str(out)]),
    "figures": (fig.main, lambda s, out: ["--tables", str(s.tables), "--out", str(out), "--only", "speedup_heatmap"]),
    "explain": (ex.main, lambda s, out: ["--tables", str(s.tables), "--out", str(out)]),
    "bundle": (bnd.main, lambda s, out: ["--sweep-dir", str(s.dir), "--out", str(out)]),
    "publish": (pub.main, lambda s, out: [str(s.bundle), "--dest", str(out)]),
}
FOLDERS = ("aggregate", "figures", "publish")  # they write into a folder; the others write one file


def fails_in_one_line(prog: str, argv: list[str], capsys: pytest.CaptureFixture, path: Path, why: str) -> None:
    main = WRITERS[prog][0]
    capsys.readouterr()
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"{prog}: error: {path}") and why in err, err


@pytest.mark.parametrize("prog", sorted(set(WRITERS) - set(FOLDERS)))
def test_a_folder_where_the_file_should_be_is_one_line(prog, sweep, tmp_path, capsys) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    fails_in_one_line(prog, WRITERS[prog][1](sweep, out), capsys, out, "Is a directory")
    assert not list(out.iterdir())  # no temp file left beside it either
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("prog", FOLDERS)
def test_a_file_where_the_folder_should_be_is_one_line(prog, sweep, tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder\n")
    out = blocker / "out"
    fails_in_one_line(prog, WRITERS[prog][1](sweep, out), capsys, out, "Not a directory")


@pytest.mark.parametrize("prog", sorted(WRITERS))
def test_a_full_disk_is_one_line_naming_the_path(prog, sweep, tmp_path, capsys, monkeypatch) -> None:
    def full(*_args, **_kw):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))  # as a full disk says it: no file named

    monkeypatch.setattr(os, "fsync", full)
    monkeypatch.setattr(shutil, "copyfile", full)  # publish copies the bundle
    out = tmp_path / "out"
    path = {"aggregate": out / "cells.csv", "figures": out / "speedup_heatmap.png"}.get(prog, out)
    if prog == "publish":
        path = out / "nvidia-test-gpu-80gb" / sweep.dir.name
    fails_in_one_line(prog, WRITERS[prog][1](sweep, out), capsys, path, "No space left on device")


@pytest.mark.parametrize("prog", sorted(set(WRITERS) - {"publish"}))
def test_a_read_only_folder_is_one_line_naming_the_path(prog, sweep, tmp_path, capsys, monkeypatch) -> None:
    # as root a chmod'ed folder stays writable: the file system's refusal is simulated where it comes
    def read_only(*_args, dir=None, **_kw):
        raise PermissionError(errno.EROFS, os.strerror(errno.EROFS), dir)

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    out = tmp_path / "out"
    path = {"aggregate": out / "cells.csv", "figures": out / "speedup_heatmap.png"}.get(prog, out)
    fails_in_one_line(prog, WRITERS[prog][1](sweep, out), capsys, path, "Read-only file system")


def test_run_reports_each_kind_of_failure_in_one_line(tmp_path, capsys) -> None:
    def damaged() -> str:
        raise kvrecord.RecordError("a.json: bad\nb.json: worse")

    assert command.run("x", damaged) == 1
    assert capsys.readouterr().err == "x: refused: a.json: bad\nx: refused: b.json: worse\n"

    def missing() -> str:
        return (tmp_path / "nope.csv").read_text()

    assert command.run("x", missing) == 1
    assert capsys.readouterr().err == f"x: error: {tmp_path / 'nope.csv'}: No such file or directory\n"
    assert command.run("x", lambda: "x: done") == 0
    assert capsys.readouterr().out == "x: done\n"
