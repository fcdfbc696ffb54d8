"""`make gpu-wheels`: the wheels a GPU node needs for kvbench and its image lacks, in one folder.

Run on a machine with internet. The node's image (scripts/gpu-node-packages.txt) already holds
torch, transformers, numpy, pandas and the rest; what kvbench needs beyond them (Snakemake,
jsonschema and their dependencies, CTranslate2 when it fits) is resolved from pyproject.toml's
ranges, not the CPU pins, and fetched as wheels for the node's Python and platform. Wheels of
packages the image holds are left out: the node keeps its own. The total must stay within the
budget (the working tree plus what travels with it stays under 64 MiB); CTranslate2 alone is
about 41 MiB, so it goes in only when it fits or when asked for.

    python scripts/gpu_wheels.py --python-version 3.12 --dest .gpu-wheels [--with-ct2]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries it
    from pip._vendor.packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
NODE_PACKAGES = REPO / "scripts" / "gpu-node-packages.txt"
# The extras a GPU check runs (snakemake, the hf peer, the tests); ct2 is weighed apart.
EXTRAS = ("pipeline", "hf", "test")
MIB = 2**20
# pip matches a --platform tag exactly: name every manylinux tag an x86-64 wheel may carry.
MANYLINUX_X86_64 = ["manylinux1_x86_64", "manylinux2010_x86_64", "manylinux2014_x86_64"] + [
    f"manylinux_2_{n}_x86_64" for n in range(5, 40)
]


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def node_packages() -> set[str]:
    lines = NODE_PACKAGES.read_text().splitlines()
    return {norm(line.split("==")[0]) for line in lines if line.strip() and not line.startswith("#")}


def requirements(extras: tuple[str, ...] = EXTRAS) -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in extras:
        lines += project["optional-dependencies"][extra]
    seen: dict[str, Requirement] = {}
    for line in lines:
        req = Requirement(line)
        seen.setdefault(norm(req.name), req)
    return list(seen.values())


def wheel_project(path: Path) -> str:
    return norm(path.name.split("-")[0])


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", *args], check=True)


def build_sdist_only(reqs: list[str], tmp: Path) -> Path:
    """Resolve for this interpreter; the dependencies published only as sdists become wheels here."""
    built = tmp / "built"
    built.mkdir()
    report = tmp / "report.json"
    pip("install", "-q", "--dry-run", "--ignore-installed", "--report", str(report), *reqs)
    for item in json.loads(report.read_text())["install"]:
        if not item["download_info"]["url"].endswith(".whl"):
            meta = item["metadata"]
            pip("wheel", "-q", "--no-deps", "-w", str(built), f"{meta['name']}=={meta['version']}")
    for whl in built.glob("*.whl"):
        if not whl.name.endswith("-none-any.whl"):
            sys.exit(f"gpu-wheels: error: {whl.name} builds for this machine only; the node needs a binary wheel")
    return built


def download(reqs: list[str], dest: Path, python_version: str, find_links: Path | None, no_deps: bool = False) -> None:
    platforms = [arg for tag in MANYLINUX_X86_64 for arg in ("--platform", tag)]
    pip(
        "download",
        "-q",
        "--only-binary=:all:",
        "--python-version",
        python_version,
        "--implementation",
        "cp",
        *platforms,
        *(["--find-links", str(find_links)] if find_links else []),
        *(["--no-deps"] if no_deps else []),
        "-d",
        str(dest),
        *reqs,
    )


def size(paths: list[Path]) -> int:
    return sum(p.stat().st_size for p in paths)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--python-version", default="3.12", help="the node's Python (default 3.12)")
    ap.add_argument("--dest", type=Path, default=REPO / ".gpu-wheels")
    ap.add_argument("--budget-mib", type=float, default=40.0)
    ap.add_argument("--with-ct2", action="store_true", help="take CTranslate2 even over the budget")
    args = ap.parse_args(argv)

    node = node_packages()
    wanted = [str(r) for r in requirements() if norm(r.name) not in node]
    ct2 = [str(r) for r in requirements(("ct2",)) if norm(r.name) == "ctranslate2"]
    print(f"gpu-wheels: Python {args.python_version}, manylinux x86-64: {' '.join(wanted)} (+ {ct2[0]} if it fits)")
    with tempfile.TemporaryDirectory(prefix="gpu-wheels-") as tmp_name:
        tmp = Path(tmp_name)
        built = build_sdist_only(wanted, tmp)
        download(wanted, tmp / "all", args.python_version, built)
        download(ct2, tmp / "ct2", args.python_version, None, no_deps=True)
        fetched = sorted((tmp / "all").glob("*.whl"))
        kept = [w for w in fetched if wheel_project(w) not in node]
        skipped = sorted({wheel_project(w) for w in fetched} - {wheel_project(w) for w in kept})
        ct2_wheels = sorted((tmp / "ct2").glob("*.whl"))
        ct2_note = f"{ct2_wheels[0].name} ({size(ct2_wheels) / MIB:.1f} MiB)"
        budget = int(args.budget_mib * MIB)
        take_ct2 = args.with_ct2 or size(kept) + size(ct2_wheels) <= budget
        if take_ct2:
            kept += ct2_wheels
        if args.dest.exists():
            shutil.rmtree(args.dest)
        args.dest.mkdir(parents=True)
        for whl in kept:
            shutil.copy2(whl, args.dest / whl.name)
    files = sorted(args.dest.glob("*.whl"), key=lambda p: p.stat().st_size, reverse=True)
    for whl in files:
        print(f"  {whl.stat().st_size / MIB:6.2f} MiB  {whl.name}")
    if skipped:
        print(f"left out, the node's image has them: {', '.join(skipped)}")
    if not take_ct2:
        print(
            f"left out: {ct2_note}, over the budget. It costs the ct2 cells on the node: the benchmark's"
            " CTranslate2 row and its ratio column stay empty and gpu-check's vs-peers sweep runs kvbench"
            " and hf only; make gpu-wheels CT2=1 takes it anyway"
        )
    total = size(files)
    print(f"gpu-wheels: {len(files)} wheels, {total / MIB:.1f} MiB in {args.dest} (budget {args.budget_mib:g} MiB)")
    return 0 if total <= budget or args.with_ct2 else 1


if __name__ == "__main__":
    sys.exit(main())
