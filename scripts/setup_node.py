"""`make setup` on a GPU node: a venv over the image's own packages, plus only what the image lacks.

Run by the node's Python (the one holding its CUDA torch). The venv sees the packages that Python sees
(also when it is itself a venv's, as on images that keep PyTorch in /opt/.../.venv: a .pth file
adds its site-packages). Every package pyproject.toml asks for is kept from the image
when its version is in pyproject's range (pinned so no dependency can upgrade it: a second numpy
under a CUDA torch is how such images break); the others are installed from WHEELS (no index) or
from the index when no WHEELS is given. A package missing with no wheel is one line naming it.
The versions used land in <venv>/setup-versions.txt, which `make gpu-check` packs.

    python scripts/setup_node.py --venv .venv [--wheels .gpu-wheels]
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import os
import re
import site
import subprocess
import sys
import tomllib
from pathlib import Path

try:
    from packaging.requirements import Requirement
except ImportError:  # pip always carries it
    from pip._vendor.packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
EXTRAS = ("pipeline", "hf", "test")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirements(wheels: Path | None) -> list[Requirement]:
    """pyproject's dependencies and the GPU check's extras; ct2 only where its wheel or package is at hand."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    if installed("ctranslate2") or (wheels and any(wheels.glob("ctranslate2-*.whl"))):
        lines += project["optional-dependencies"]["ct2"]
    reqs: dict[str, Requirement] = {}
    for line in lines:
        reqs.setdefault(norm(Requirement(line).name), Requirement(line))
    return list(reqs.values())


def installed(name: str) -> str | None:
    try:
        return md.version(name)
    except md.PackageNotFoundError:
        return None


def has_wheel(wheels: Path, name: str) -> bool:
    return any(norm(w.name.split("-")[0]) == norm(name) for w in wheels.glob("*.whl"))


def make_venv(venv: Path) -> Path:
    """A venv that sees this Python's packages, as this Python sees them, after its own."""
    # No pip (nor, on 3.11, setuptools) of its own: the image's are newer and build kvbench. Not
    # --system-site-packages: where this Python is a venv's, the base's packages are not the image's.
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    vpy = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(vpy), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    seen = [*site.getsitepackages(), *([site.getusersitepackages()] if site.ENABLE_USER_SITE else [])]
    dirs = [d for d in dict.fromkeys(seen) if os.path.isdir(d)]
    # addsitedir, not a bare path: the image's own .pth files (namespace packages, editables) count too.
    (Path(purelib) / "_kvbench_image_site.pth").write_text(
        "".join(f"import site; site.addsitedir({d!r})\n" for d in dirs)
    )
    if subprocess.run([str(vpy), "-m", "pip", "--version"], capture_output=True).returncode != 0:
        subprocess.run([str(vpy), "-m", "ensurepip", "-q"], check=True)
    return vpy


def pip_install(vpy: Path, log: Path, *args: str) -> None:
    """pip, its output in the log; a failure is one line (pip's last error) and exit 1."""
    with log.open("a") as out:
        p = subprocess.run([str(vpy), "-m", "pip", "install", *args], stdout=out, stderr=subprocess.STDOUT)
    if p.returncode != 0:
        sys.exit(f"setup: error: {pip_failure(log.read_text().splitlines()) or f'pip exited {p.returncode}'} ({log})")


def pip_failure(lines: list[str]) -> str | None:
    """pip's reason in one line: a conflict's causes (the image's pins named so), else its last error."""
    if "The conflict is caused by:" in lines:
        causes = []
        for line in lines[lines.index("The conflict is caused by:") + 1 :]:
            if not line.startswith("    "):
                break
            causes.append(line.strip().replace("The user requested (constraint)", "the image's version is kept:"))
        return "; ".join(causes)
    errors = [line for line in lines if line.lower().startswith("error:")]
    return errors[-1][len("error: ") :] if errors else None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", type=Path, required=True)
    ap.add_argument("--wheels", type=Path, help="a folder from `make gpu-wheels`: install from it, no index")
    args = ap.parse_args(argv)
    wheels = args.wheels.resolve() if args.wheels else None
    if wheels and not wheels.is_dir():
        sys.exit(f"setup: error: WHEELS={args.wheels}: no such folder (fill it with `make gpu-wheels`)")

    kept, needed, missing = [], [], []
    for req in requirements(wheels):
        have = installed(req.name)
        if have and req.specifier.contains(have, prereleases=True):
            kept.append((req, have))
        elif wheels and not has_wheel(wheels, req.name):
            missing.append(f"{req}" + (f" (the image has {have})" if have else ""))
        else:
            needed.append(req)
    if missing:
        sys.exit(
            f"setup: error: missing from {sys.executable} and with no wheel in {args.wheels}: {', '.join(missing)};"
            " fill the folder with `make gpu-wheels` on a machine with internet"
        )

    torch_v = installed("torch")
    print(f"setup: reusing torch {torch_v} and {len(kept) - 1} more packages of {sys.executable} in pyproject's ranges")
    vpy = make_venv(args.venv)
    pins = args.venv / "image-pins.txt"
    pins.write_text("".join(f"{norm(r.name)}=={v}\n" for r, v in kept))
    log = args.venv / "setup-pip.log"
    log.write_text("")
    source = ["--no-index", "--find-links", str(wheels)] if wheels else []
    if needed:
        pip_install(vpy, log, *source, "--constraint", str(pins), *(str(r) for r in needed))
    pip_install(vpy, log, "--no-index", "--no-deps", "--no-build-isolation", "-e", str(REPO))

    report = subprocess.run(
        [str(vpy), "-c", VERSIONS, *(norm(r.name) for r, _ in kept), "--", *(norm(r.name) for r in needed)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    (args.venv / "setup-versions.txt").write_text(report)
    print(f"setup: from {'WHEELS' if wheels else 'the index'}: " + (", ".join(str(r) for r in needed) or "nothing"))
    print(f"setup: versions used: {args.venv / 'setup-versions.txt'}")
    return 0


# Run in the new venv: each package's version and where it is imported from.
VERSIONS = """
import importlib.metadata as md, sys
args = sys.argv[1:]
split = args.index("--")
print("python", sys.version.split()[0], sys.executable)
for how, names in (("image", args[:split]), ("installed", args[split + 1:]), ("project", ["kvbench"])):
    for name in names:
        d = md.distribution(name)
        print(f"{name}=={d.version}  # {how}: {d.locate_file('')}")
"""


if __name__ == "__main__":
    sys.exit(main())
