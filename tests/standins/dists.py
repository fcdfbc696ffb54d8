"""Test stand-ins for Python distributions (tests/test_setup.py): metadata and an empty module, no code.

A GPU image's packages and a folder of wheels, shaped as pip sees them, so `make setup`'s choices
(keep the image's package, install the wheel, refuse a missing one) are checked in seconds and
offline. Never on a path outside those tests.
"""

from __future__ import annotations

import zipfile
from pathlib import Path


def _metadata(name: str, version: str, requires: tuple[str, ...]) -> str:
    lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}", "Summary: test stand-in"]
    return "\n".join(lines + [f"Requires-Dist: {r}" for r in requires]) + "\n"


def _module(name: str) -> str:
    return name.replace("-", "_")


def install(site: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> None:
    """As if pip had installed it into site (a site-packages folder)."""
    info = site / f"{_module(name)}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(_metadata(name, version, requires))
    (info / "INSTALLER").write_text("pip\n")
    (info / "RECORD").write_text("")
    package = site / _module(name)
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text(f'__version__ = "{version}"  # test stand-in\n')


def wheel(folder: Path, name: str, version: str, requires: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel of an empty module."""
    folder.mkdir(parents=True, exist_ok=True)
    mod, info = _module(name), f"{_module(name)}-{version}.dist-info"
    path = folder / f"{mod}-{version}-py3-none-any.whl"
    files = {
        f"{mod}/__init__.py": f'__version__ = "{version}"  # test stand-in\n',
        f"{info}/METADATA": _metadata(name, version, requires),
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test stand-in\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{f},,\n" for f in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for arc, text in files.items():
            z.writestr(arc, text)
    return path
