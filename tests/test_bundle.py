"""bundle.zip: deterministic, complete, verified against its manifest."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import zipfile
from pathlib import Path

import pytest
from fixtures import (
    DEVICE_NAME,
    SWEEP,
    Sweep,
    grid_records,
    rewrite_zip,
)

from kvbench.analysis import aggregate as agg
from kvbench.analysis import bundle as bnd
from kvbench.analysis import figures as fig


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("sweep"), grid_records())
    agg.aggregate(s.paths, s.tables)
    s.rendered = fig.render(s.tables, s.figures)
    return s


@pytest.fixture(scope="module")
def bundle_zip(sweep: Sweep, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cfg = tmp_path_factory.mktemp("cfg") / "config.yaml"
    cfg.write_text("sweeps:\n  tiny: {}\n")
    out = sweep.dir / "bundle.zip"
    bnd.build_bundle(sweep.dir, out, cfg, [])
    return out


# ---------------------------------------------------------------------------------- bundle


def test_bundle_is_deterministic_complete_and_verifies(sweep: Sweep, bundle_zip: Path, tmp_path: Path) -> None:
    assert bnd.verify_bundle(bundle_zip) == []
    cfg = tmp_path / "config.yaml"
    cfg.write_text("sweeps:\n  tiny: {}\n")
    again = tmp_path / "again.zip"
    bnd.build_bundle(sweep.dir, again, cfg, [])
    assert again.read_bytes() == bundle_zip.read_bytes()
    with zipfile.ZipFile(bundle_zip) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names == sorted(names)
        assert all(i.date_time == (1980, 1, 1, 0, 0, 0) for i in infos)
        assert all(i.external_attr >> 16 == 0o100644 for i in infos)
        assert {
            "MANIFEST.sha256",
            "index.md",
            "environment.json",
            "bundle.json",
            "config/config.yaml",
            "tables/cells.csv",
            "tables/speedup.csv",
            "figures/decode_ms_per_token.png",
        } <= set(names)
        assert len([n for n in names if n.startswith("cells/")]) == len(sweep.records)
        manifest = zf.read("MANIFEST.sha256").decode().splitlines()
        assert [line.split("  ", 1)[1] for line in manifest] == [n for n in names if n != "MANIFEST.sha256"]
        for line in manifest:
            digest, name = line.split("  ", 1)
            assert hashlib.sha256(zf.read(name)).hexdigest() == digest
        env = json.loads(zf.read("environment.json"))
        assert env["records"] == len(sweep.records)
        assert env["values"]["device_name"] == [{"value": DEVICE_NAME, "records": 12}]
        meta = json.loads(zf.read("bundle.json"))
        assert meta == {"sweep": SWEEP, "records": 12, "status_counts": {"ok": 11, "oom": 1}}
        index = zf.read("index.md").decode()
        assert "![decode_ms_per_token](figures/decode_ms_per_token.png)" in index
        assert "[tables/speedup.csv](tables/speedup.csv)" in index


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_bundle_manifest_passes_sha256sum(bundle_zip: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(bundle_zip) as zf:
        zf.extractall(tmp_path)
    proc = subprocess.run(
        ["sha256sum", "--strict", "-c", "MANIFEST.sha256"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (tmp_path / "tables" / "cells.csv").write_text("changed\n")
    assert subprocess.run(["sha256sum", "-c", "MANIFEST.sha256"], cwd=tmp_path, capture_output=True).returncode != 0


def test_tampered_bundle_fails_verification(bundle_zip: Path, tmp_path: Path) -> None:
    changed = tmp_path / "changed.zip"
    rewrite_zip(bundle_zip, changed, {"tables/speedup.csv": b"kv_mode,decode_speedup\nstatic,99\n"})
    assert bnd.verify_bundle(changed) == ["tables/speedup.csv: sha256 differs from the manifest"]
    dropped = tmp_path / "dropped.zip"
    rewrite_zip(bundle_zip, dropped, {"figures/peak_memory.png": None})
    assert bnd.verify_bundle(dropped) == ["figures/peak_memory.png: in the manifest but not in the archive"]
    added = tmp_path / "added.zip"
    rewrite_zip(bundle_zip, added, {}, add={"tables/extra.csv": b"a\n1\n"})
    assert bnd.verify_bundle(added) == ["tables/extra.csv: in the archive but not in the manifest"]
    no_manifest = tmp_path / "no_manifest.zip"
    rewrite_zip(bundle_zip, no_manifest, {"MANIFEST.sha256": None})
    assert bnd.verify_bundle(no_manifest) == ["MANIFEST.sha256: missing"]
    not_zip = tmp_path / "not.zip"
    not_zip.write_bytes(b"plain text")
    assert len(bnd.verify_bundle(not_zip)) == 1
    assert bnd.main(["--verify", str(changed)]) == 1
    assert bnd.main(["--verify", str(bundle_zip)]) == 0
