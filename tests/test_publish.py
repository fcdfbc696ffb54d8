"""publish: a verified bundle copied and unpacked under results/published/<device>/<sweep>/, once."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixtures import SWEEP, Sweep, grid_records, make_record, rewrite_zip

from kvbench.analysis import aggregate as agg
from kvbench.analysis import bundle as bnd
from kvbench.analysis import figures as fig
from kvbench.analysis import publish as pub


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("sweep"), grid_records())
    agg.aggregate(s.paths, s.tables)
    s.rendered = fig.render(s.tables, s.figures, only=["decode_ms_per_token"])
    return s


@pytest.fixture(scope="module")
def bundle_zip(sweep: Sweep) -> Path:
    out = sweep.dir / "bundle.zip"
    bnd.build_bundle(sweep.dir, out, None, [])
    return out


def test_publish_copies_unpacks_is_idempotent_and_refuses_a_different_bundle(
    sweep: Sweep, bundle_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    root = tmp_path / "published"
    dest, written = pub.publish(bundle_zip, root)
    assert written and dest == root / "nvidia-test-gpu-80gb" / SWEEP
    assert (dest / "bundle.zip").read_bytes() == bundle_zip.read_bytes()
    assert (dest / "figures" / "decode_ms_per_token.png").is_file()
    assert (dest / "tables" / "speedup.csv").read_bytes() == (sweep.tables / "speedup.csv").read_bytes()
    assert (dest / "index.md").is_file() and not (dest / "cells").exists()
    assert not [p for p in dest.parent.iterdir() if p.name.startswith(".")]  # no temp left
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*")}

    assert pub.publish(bundle_zip, root) == (dest, False)  # the same bundle again: a no-op
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*")} == before

    other = tmp_path / "other.zip"
    note = tmp_path / "note.txt"
    note.write_text("a different bundle\n")
    bnd.build_bundle(sweep.dir, other, None, [note])
    assert bnd.verify_bundle(other) == []
    with pytest.raises(pub.PublishError, match="refusing to overwrite"):
        pub.publish(other, root)
    assert (dest / "bundle.zip").read_bytes() == bundle_zip.read_bytes()
    capsys.readouterr()
    assert pub.main([str(other), "--dest", str(root)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("publish: error: refusing to overwrite") and err.count("\n") == 1
    assert pub.main([str(other), "--dest", str(root), "--device", "Other Box"]) == 0
    assert (root / "other-box" / SWEEP / "bundle.zip").read_bytes() == other.read_bytes()


def test_publish_names_cpu_runs_by_cpu_and_refuses_broken_bundles(tmp_path: Path) -> None:
    s = Sweep(tmp_path / "cpu", [make_record("static", 1, 8, device_name=None)])
    agg.aggregate(s.paths, s.tables)
    zpath = s.dir / "bundle.zip"
    bnd.build_bundle(s.dir, zpath, None, [])
    assert pub.publish(zpath, tmp_path / "pub") == (tmp_path / "pub" / "test-cpu" / SWEEP, True)
    broken = tmp_path / "broken.zip"
    rewrite_zip(zpath, broken, {"tables/cells.csv": b"x\n"})
    with pytest.raises(pub.PublishError, match="does not verify"):
        pub.publish(broken, tmp_path / "pub2")
    assert not (tmp_path / "pub2").exists()
