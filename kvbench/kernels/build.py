"""Build kvbench's C++ kernels for this CPU and load them; `make setup` runs `python -m kvbench.kernels.build`.

One shared library per source, compiled with `-march=native` against the running torch: it is only valid
for this CPU's instruction set and this torch's ABI, so its folder is named by a hash of the source, the
compiler flags, the torch version and the CPU's model and flags, under the Python environment
(`sys.prefix/kvbench-kernels`, or kvbench's cache folder where that is not writable). A `stamp.json`
beside the library holds its sha256, checked before each load: a damaged or half-written library is
rebuilt, never loaded. Built in a temporary folder and moved into place, so two processes building at
once leave one whole library. Where there is no compiler (or the build fails) `load` says so in one line
on stderr, once per process, and returns None: the caller keeps the library's ops (its GEMM, SDPA).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from functools import cache
from pathlib import Path

import torch

from kvbench.core import env_vars

SOURCES = Path(__file__).parent
FLAGS = ("-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", "-std=c++17")


def cpu_signature() -> str:
    """The CPU model and instruction-set flags: a library built with -march=native runs where these match."""
    model, flags = platform.processor(), ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = " ".join(sorted(value.split()))
                break
    except OSError:
        pass
    return f"{platform.machine()} {model} {flags}"


def compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")


def key(name: str) -> str:
    source = (SOURCES / f"{name}.cpp").read_bytes()
    parts = [source, " ".join(FLAGS).encode(), torch.__version__.encode(), cpu_signature().encode()]
    digest = hashlib.sha256(b"\0".join(parts)).hexdigest()
    return f"{name}-{digest[:16]}"


def home() -> Path:
    prefix = Path(sys.prefix) / "kvbench-kernels"
    if os.access(sys.prefix, os.W_OK) or prefix.is_dir() and os.access(prefix, os.W_OK):
        return prefix
    return env_vars.cache_dir() / "kernels"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def verified(folder: Path) -> Path | None:
    """The library in `folder` if its stamp says it is whole, else None."""
    library = folder / "library.so"
    try:
        stamp = json.loads((folder / "stamp.json").read_text())
        return library if stamp.get("sha256") == sha256(library) else None
    except (OSError, ValueError, AttributeError):
        return None


def command(name: str, out: Path) -> list[str]:
    torch_dir = Path(torch.__file__).parent
    from torch.utils import cpp_extension

    includes = [f"-I{p}" for p in cpp_extension.include_paths()]
    abi = f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}"
    return [
        compiler() or "g++",
        *FLAGS,
        abi,
        f"-I{sysconfig.get_paths()['include']}",
        *includes,
        str(SOURCES / f"{name}.cpp"),
        f"-L{torch_dir / 'lib'}",
        "-lc10",
        "-ltorch_cpu",
        f"-Wl,-rpath,{torch_dir / 'lib'}",
        "-o",
        str(out),
    ]


def build(name: str) -> Path:
    """Compile `name`.cpp into its folder (if not there and whole already); returns the library. Raises OSError."""
    folder = home() / key(name)
    if (library := verified(folder)) is not None:
        return library
    if compiler() is None:
        raise OSError("no C++ compiler (g++ or $CXX) on PATH")
    folder.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=folder.parent))
    try:
        run = subprocess.run(command(name, work / "library.so"), capture_output=True, text=True)
        if run.returncode != 0:
            last = (run.stderr.strip().splitlines() or ["(no output)"])[-1]
            raise OSError(f"the compiler failed: {last}")
        stamp = {"sha256": sha256(work / "library.so"), "cpu": cpu_signature()[:200], "torch": torch.__version__}
        (work / "stamp.json").write_text(json.dumps(stamp))
        if verified(folder) is not None:  # another process built it meanwhile: theirs is whole
            return folder / "library.so"
        if folder.exists():  # damaged: replaced whole
            shutil.rmtree(folder, ignore_errors=True)
        try:
            os.replace(work, folder)
        except OSError:  # another process put a whole one there first
            if verified(folder) is None:
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return folder / "library.so"


@cache
def load(name: str) -> Path | None:
    """Build (once per environment and CPU) and load kernel `name` into torch.ops; None, with one line, if it cannot."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return None
    try:
        library = build(name)
        torch.ops.load_library(str(library))
    except Exception as e:  # noqa: BLE001 (no compiler, a failing build, a torch without its headers: the library's GEMM)
        why = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        print(f"kvbench: kernel {name} not available ({why}); using the library's ops instead", file=sys.stderr)
        return None
    return library


def main() -> int:
    for source in sorted(SOURCES.glob("*.cpp")):
        library = load(source.stem)
        print(f"kernel {source.stem}: {library or 'not built'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
