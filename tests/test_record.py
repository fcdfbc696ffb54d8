"""Records on disk: written atomically (all or nothing), and damaged ones (truncated JSON, valid JSON
that is not a record, another schema version) never a traceback: named in one line, moved aside so
Snakemake measures the cell again, and refused by the aggregate (one line per file, with the remedy)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures import REPO, Sweep, grid_records, make_record

from kvbench.analysis import aggregate as agg
from kvbench.core import record as kvrecord

DAMAGE = {
    "truncated": lambda text: text[: len(text) // 2],
    "not a record": lambda text: json.dumps([1, 2, 3]),
    "other schema": lambda text: json.dumps({**json.loads(text), "schema_version": 99}),
}
WHY = {
    "truncated": "not readable JSON",
    "not a record": "JSON but not a kvbench record",
    "other schema": "schema_version 99, this kvbench reads 1",
}


@pytest.fixture()
def damaged(tmp_path: Path, request) -> tuple[Sweep, Path, str]:
    s = Sweep(tmp_path, grid_records())
    kind = request.param
    path = s.paths[3]
    path.write_text(DAMAGE[kind](path.read_text()))
    return s, path, kind


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_load_names_the_file_and_the_damage(damaged) -> None:
    _, path, kind = damaged
    with pytest.raises(kvrecord.RecordError) as err:
        kvrecord.load(path)
    assert str(err.value).startswith(f"{path}: {WHY[kind]}") and "\n" not in str(err.value)


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_aggregate_refuses_one_line_per_damaged_file_with_the_remedy(damaged, capsys) -> None:
    s, path, kind = damaged
    second = s.paths[5]
    second.write_text("{")
    assert agg.main(["--records", str(s.dir / "cells"), "--out", str(s.tables)]) == 1
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith("aggregate: refused: ") for line in lines)
    assert {p for p in (str(path), str(second)) if any(p in line for line in lines)} == {str(path), str(second)}
    assert all(kvrecord.REMEDY in line for line in lines)
    assert not s.tables.exists()  # nothing half-written


@pytest.mark.parametrize("damaged", list(DAMAGE), indirect=True)
def test_quarantine_moves_damaged_records_aside_and_keeps_good_ones(damaged) -> None:
    s, path, kind = damaged
    before = path.read_bytes()
    lines = kvrecord.quarantine(s.dir / "cells")
    dest = s.dir / "damaged" / path.relative_to(s.dir / "cells")
    assert len(lines) == 1 and lines[0].startswith(f"damaged record {path} ({WHY[kind]}")
    assert f"moved to {dest}; its cell will be measured again" in lines[0]
    assert not path.exists() and dest.read_bytes() == before
    assert kvrecord.quarantine(s.dir / "cells") == []  # the rest are whole
    agg.aggregate(kvrecord.find([s.dir / "cells"]), s.tables)  # and aggregate again
    assert len((s.tables / "cells.csv").read_text().splitlines()) == len(s.paths)  # header + the 11 left


def test_check_records_cli_is_one_line_per_file(tmp_path: Path) -> None:
    s = Sweep(tmp_path, [make_record("none", 1, 8), make_record("static", 1, 8)])
    s.paths[0].write_text('{"schema_version": 1')
    proc = subprocess.run(
        [sys.executable, "-m", "kvbench.cli", "check-records", str(s.dir / "cells")],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(f"kvbench check-records: damaged record {s.paths[0]} (not readable JSON")


def test_atomic_write_leaves_nothing_when_interrupted(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    rec = json.loads((tmp_path / "x").with_suffix(".json").write_text("{}") and "{}")
    with pytest.raises(ValueError, match="record"):
        kvrecord.write_atomic(out, rec)  # not schema-valid: refused before anything is written
    assert list(tmp_path.iterdir()) == [tmp_path / "x.json"]


def test_atomic_write_interrupted_mid_write(tmp_path, monkeypatch):
    good = tmp_path / "good.json"
    kvrecord.write_atomic(good, make_record("static", 1, 8))
    rec = json.loads(good.read_text())
    target = tmp_path / "target.json"

    def boom(fd):
        raise KeyboardInterrupt  # as if the job were interrupted while flushing

    monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(KeyboardInterrupt):
        kvrecord.write_atomic(target, rec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["good.json"]
