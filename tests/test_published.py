"""What the repository publishes (results/published/, the README's figures): every published bundle verifies, the
index lists every published folder and nothing else, and every link and embedded figure resolves."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from fixtures import broken_links

from kvbench.analysis.bundle import verify_bundle

REPO = Path(__file__).resolve().parent.parent
PUBLISHED = REPO / "results" / "published"
FOLDERS = sorted(p.parent for p in PUBLISHED.glob("*/*/bundle.zip"))


def test_runs_are_published():
    assert FOLDERS, "results/published holds no published run"


@pytest.mark.parametrize("folder", FOLDERS, ids=lambda p: p.relative_to(PUBLISHED).as_posix())
def test_a_published_run_verifies_and_its_page_links_resolve(folder: Path):
    assert verify_bundle(folder / "bundle.zip") == []
    facts = json.loads((folder / "published.json").read_text())
    assert (facts["device"], facts["sweep"]) == (folder.parent.name, folder.name)
    assert broken_links(folder / "README.md") == []
    assert not list(folder.rglob("*.svg")), "SVG duplicates of the PNGs stay in the bundle"


def test_the_index_lists_every_published_folder_and_links_it():
    index = PUBLISHED / "README.md"
    linked = set(re.findall(r"\]\(([^)]+)/\)", index.read_text()))
    assert linked == {f.relative_to(PUBLISHED).as_posix() for f in FOLDERS}
    assert broken_links(index) == []


def test_the_readmes_figures_are_published_files():
    readme = REPO / "README.md"
    figures = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", readme.read_text())
    assert figures, "the README shows no figure"
    assert all(f.startswith("results/published/") for f in figures), figures
    assert broken_links(readme) == []


def test_what_is_published_stays_small():
    size = sum(p.stat().st_size for p in PUBLISHED.rglob("*") if p.is_file())
    assert size < 20 * 2**20, f"results/published holds {size / 2**20:.1f} MiB"
