"""The layers (ARCHITECTURE.md) as import-linter contracts in pyproject.toml: each package imports only those below
it, analysis only core, core never torch. The contracts hold here, and a copy of the package with one back arrow
breaks them (so the check can fail)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")
pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (make setup)")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    # The copy is found first on the path, before the editable install of this checkout.
    return subprocess.run(
        [str(LINT_IMPORTS), "--config", str(root / "pyproject.toml"), "--no-cache"],
        cwd=root,
        env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_layers_hold():
    p = lint_imports(REPO)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "3 kept, 0 broken" in p.stdout


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("caches/base.py", "from kvbench.measure import timing  # noqa", "layers"),
        ("models/attention.py", "from kvbench.engines import generate  # noqa", "layers"),
        ("core/presets.py", "import torch  # noqa", "core is torch-free"),
        ("analysis/frame.py", "from kvbench.measure import spec  # noqa", "analysis reads tables"),
    ],
)
def test_a_back_arrow_breaks_a_contract(tmp_path, module, line, contract):
    shutil.copytree(REPO / "kvbench", tmp_path / "kvbench", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    path = tmp_path / "kvbench" / module
    path.write_text(path.read_text() + f"\n{line}\n")
    p = lint_imports(tmp_path)
    assert p.returncode != 0
    broken = [ln for ln in p.stdout.splitlines() if ln.endswith("BROKEN")]
    # torch in core breaks analysis's contract too (analysis imports core): the named one is among those broken
    assert any(b.startswith(contract) for b in broken), p.stdout[-3000:]
