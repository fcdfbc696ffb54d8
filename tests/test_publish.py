"""publish: a verified bundle copied and unpacked under results/published/<device>/<sweep>/, once."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from fixtures import SWEEP, Sweep, broken_links, grid_records, make_record, rewrite_zip

from kvbench.analysis import aggregate as agg
from kvbench.analysis import bundle as bnd
from kvbench.analysis import figures as fig
from kvbench.analysis import publish as pub
from kvbench.analysis import published_index as pi


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
    assert not (dest / "cells").exists() and not list(dest.rglob("*.svg"))  # the records and SVGs stay in the zip
    facts = json.loads((dest / "published.json").read_text())
    assert facts["sweep"] == SWEEP and facts["cells"] == len(sweep.paths) and facts["commit"]
    assert facts["headline"].startswith("best decode speedup")
    readme = (dest / "README.md").read_text()
    assert facts["headline"][1:] in readme and "![decode_ms_per_token](figures/decode_ms_per_token.png)" in readme
    assert broken_links(dest / "README.md") == [] and broken_links(root / "README.md") == []
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
    # the index, written again by each publish: both runs, each linked
    index = (root / "README.md").read_text()
    assert f"[{SWEEP}](nvidia-test-gpu-80gb/{SWEEP}/)" in index and f"[{SWEEP}](other-box/{SWEEP}/)" in index
    assert broken_links(root / "README.md") == []


def test_the_index_is_newest_first_and_made_again_from_the_folders(tmp_path: Path) -> None:
    root = tmp_path / "published"
    for device, date in (("a", "2026-01-02"), ("b", "2026-03-04"), ("c", "2026-02-03")):
        folder = root / device / "s"
        folder.mkdir(parents=True)
        facts = {"device": device, "device_name": device.upper(), "sweep": "s", "date": date, "commit": "abc"}
        (folder / "published.json").write_text(json.dumps(facts | {"cells_ok": 1, "cells": 2, "headline": "h"}))
    pi.write_index(root)
    rows = [line for line in (root / "README.md").read_text().splitlines() if line.startswith("| 2026")]
    assert [r.split(" | ")[1] for r in rows] == ["B", "C", "A"]
    assert all("| 1/2 |" in r for r in rows)


def test_broken_links_finds_a_missing_target(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"")
    page = tmp_path / "p.md"
    page.write_text("![a](x.png) [b](y.csv) [c](https://example.org) [d](#anchor)\n")
    assert broken_links(page) == ["y.csv"]


@pytest.mark.parametrize("device_name", [None, "cpu"])  # a CPU record names its device "cpu": the CPU names the folder
def test_publish_names_cpu_runs_by_cpu_and_refuses_broken_bundles(tmp_path: Path, device_name) -> None:
    s = Sweep(tmp_path / "cpu", [make_record("static", 1, 8, device_name=device_name)])
    agg.aggregate(s.paths, s.tables)
    zpath = s.dir / "bundle.zip"
    bnd.build_bundle(s.dir, zpath, None, [])
    assert pub.publish(zpath, tmp_path / "pub") == (tmp_path / "pub" / "test-cpu" / SWEEP, True)
    broken = tmp_path / "broken.zip"
    rewrite_zip(zpath, broken, {"tables/cells.csv": b"x\n"})
    with pytest.raises(pub.PublishError, match="does not verify"):
        pub.publish(broken, tmp_path / "pub2")
    assert not (tmp_path / "pub2").exists()
