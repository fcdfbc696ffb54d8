"""The source files a workflow job depends on, so that editing code reruns only what it can change.

A cell's record depends on the shared measurement code (every layer package but the analysis, the
commands other than `cell`, and the engines) and on its own engine's file, with the engine files that
one imports (ct2 and llamacpp convert the hf engine's model). So editing llama.cpp's engine re-measures
llama.cpp's cells alone, and editing a figure re-measures none. Found by reading the sources (ast), not
by importing them: the workflow loads without torch.
"""

from __future__ import annotations

import ast
from pathlib import Path

# Files under the package a cell's measurement never runs: other commands, the sweep expansion (the
# workflow's own), and the analysis (a downstream rule's input).
NOT_MEASUREMENT = ("cli/sample.py", "cli/visualize.py", "core/sweep.py", "core/code_inputs.py")
ENGINE_INTERFACE = ("__init__.py", "base.py", "generate.py", "registry.py")


def kvbench_imports(path: Path) -> list[str]:
    """The kvbench modules `path` imports (dotted names, as written: a package's `from x import y` gives x and x.y)."""
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module:
            names += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names += [a.name for a in node.names]
    return [n for n in names if n.split(".")[0] == "kvbench"]


def engine_files(package: Path, engine: str) -> list[Path]:
    """`engines/<engine>.py` and, transitively, the other engine files it imports."""
    found: list[Path] = []
    todo = [engine]
    while todo:
        path = package / "engines" / f"{todo.pop()}.py"
        if path in found:
            continue
        found.append(path)
        for name in kvbench_imports(path):
            parts = name.split(".")
            if parts[:2] == ["kvbench", "engines"] and len(parts) == 3:
                leaf = parts[2]
                if f"{leaf}.py" not in ENGINE_INTERFACE and (package / "engines" / f"{leaf}.py").is_file():
                    todo.append(leaf)
    return sorted(found)


def module_files(package: Path, *paths: str) -> list[Path]:
    """The files `paths` (relative to the package) and every kvbench module they import, transitively: what a
    downstream rule's command runs, so editing any of it re-runs the rule (and nothing it does not import)."""
    found: set[Path] = set()
    todo = [package / p for p in paths]
    while todo:
        path = todo.pop()
        if path in found:
            continue
        found.add(path)
        for name in kvbench_imports(path):
            rel = Path(*name.split(".")[1:])
            for candidate in (package / rel.with_suffix(".py"), package / rel / "__init__.py"):
                if candidate.is_file() and candidate.name != "__init__.py":
                    todo.append(candidate)
    return sorted(found)


def shared_measurement_code(package: Path) -> list[Path]:
    """What every cell runs, whatever its engine: the layers below the analysis, the engine interface and
    decode loop, kvbench's C++ kernels, the record schema."""
    out = []
    for p in package.rglob("*.py"):
        rel = p.relative_to(package).as_posix()
        top = rel.split("/")[0]
        if top == "analysis" or rel in NOT_MEASUREMENT or "__pycache__" in rel:
            continue
        if top == "engines" and p.name not in ENGINE_INTERFACE:
            continue
        out.append(p)
    kernels = sorted((package / "kernels").glob("*.cpp"))  # compiled on first use: a cell runs them too
    return sorted(out) + kernels + [package / "schemas" / "record.schema.json"]


def cell_code(package: Path, engine: str) -> list[str]:
    """A cell's code inputs: the shared measurement code plus its engine's files."""
    return [str(p) for p in shared_measurement_code(package) + engine_files(package, engine)]
