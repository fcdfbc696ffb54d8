"""The cell record: its schema, validation, loading, and the one atomic writer of the project.

A record on disk is either whole and valid or *damaged* (truncated JSON, JSON that is not a
record, another schema_version, a schema violation). Damage is never a traceback: `load`
raises RecordError with one line naming the file and what is wrong, and `quarantine` moves
damaged records aside to results/<sweep>/damaged/ so Snakemake sees the cell missing and
measures it again (`kvbench check-records`: the workflow's set_aside job, when it finds damage).
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import sys
import tempfile
from datetime import UTC, datetime
from functools import cache
from pathlib import Path

SCHEMA_VERSION = 1
REMEDY = "run `snakemake` again: it moves damaged records aside and measures their cells again"


class RecordError(ValueError):
    """A damaged record: one line naming the file and what is wrong with it."""


def schema_path() -> Path:
    """Shipped inside the package (workflow/schemas/record.schema.json links to it)."""
    return Path(__file__).resolve().parent.parent / "schemas" / "record.schema.json"


@cache
def schema() -> dict:
    return json.loads(schema_path().read_text())


@cache
def _validator():
    import jsonschema

    return jsonschema.Draft202012Validator(schema())


def validate(record: dict) -> None:
    """Raise ValueError with the first schema violation, naming its path."""
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path) or "<record>"
        raise ValueError(f"record {where}: {e.message}")


def now_utc() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def os_error_line(e: OSError) -> str:
    """The path(s) an OSError names and what the system said, on one line.

    A path that goes under a regular file fails with "Not a directory", or with "File exists" where
    mkdir met the file: neither says which part is the file. That part is named, and mkdir's
    "File exists" (true of the file, misleading about the folder wanted) said as what it means.
    """
    paths = " -> ".join(str(p) for p in (e.filename, e.filename2) if p is not None)
    what = e.strerror or str(e)
    if e.errno in (errno.EEXIST, errno.ENOTDIR) and e.filename is not None:
        blocking = _file_in_the_way(Path(e.filename), itself=e.errno == errno.EEXIST)  # mkdir's EEXIST: itself
        if blocking is not None:
            what = f"Not a directory ({blocking} is a file, not a folder)"
    return f"{paths}: {what}" if paths else what


def _file_in_the_way(path: Path, itself: bool) -> Path | None:
    """The first of `path`'s parents (and `path` itself) that exists as something other than a folder, or None."""
    for parent in [*reversed(path.parents), *([path] if itself else [])]:
        if parent.exists() and not parent.is_dir():
            return parent
    return None


def write_atomic_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, rename: readers (and a killed job) see all or nothing.

    An OSError names `path` (a failed write() names no file), so every command can say where it failed.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; outputs are meant to be shared
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(e.errno, e.strerror or str(e), str(path)) from e
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic_text(path: Path, text: str) -> None:
    """UTF-8 with '\\n' line ends on every platform, so the bytes are reproducible."""
    write_atomic_bytes(path, text.encode("utf-8"))


def write_atomic(path: Path, record: dict) -> None:
    """Validate, then write the record atomically."""
    validate(record)
    write_atomic_text(Path(path), json.dumps(record, indent=2) + "\n")


def load(path: Path) -> dict:
    """A valid record, or RecordError naming the file and the damage."""
    try:
        rec = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RecordError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(rec, dict) or "schema_version" not in rec:
        raise RecordError(f"{path}: JSON but not a kvbench record (no schema_version)")
    if rec["schema_version"] != SCHEMA_VERSION:
        raise RecordError(f"{path}: schema_version {rec['schema_version']!r}, this kvbench reads {SCHEMA_VERSION}")
    try:
        validate(rec)
    except ValueError as exc:
        raise RecordError(f"{path}: {exc}") from None
    return rec


def find(paths) -> list[Path]:
    """Files as given, folders searched for *.json (temp files of interrupted writes left out); sorted."""
    found: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found.update(q for q in p.rglob("*.json") if q.is_file() and not q.name.startswith("."))
        elif p.is_file():
            found.add(p)
        else:
            raise FileNotFoundError(f"no such record file or directory: {p}")
    return sorted(found, key=lambda q: q.as_posix())


def damaged(cells_dir: Path) -> dict[Path, str]:
    """Every damaged record under results/<sweep>/cells and what is wrong with it; reads only."""
    cells_dir = Path(cells_dir)
    found = {}
    for path in find([cells_dir]) if cells_dir.is_dir() else []:
        try:
            load(path)
        except RecordError as exc:
            found[path] = str(exc).removeprefix(f"{path}: ")
    return found


def aside(cells_dir: Path, path: Path) -> Path:
    """Where a damaged record goes: results/<sweep>/damaged, same relative path; a record damaged
    twice keeps both (a numbered suffix), as nothing a user measured is ever deleted."""
    dest = Path(cells_dir).parent / "damaged" / Path(path).relative_to(cells_dir)
    n = 0
    while dest.exists():
        n += 1
        dest = dest.with_name(f"{Path(path).name}.{n}")
    return dest


def quarantine(cells_dir: Path) -> list[str]:
    """Move every damaged record under results/<sweep>/cells aside (`aside`); one line per file moved,
    saying why and that the cell will be measured again."""
    lines = []
    for path, reason in damaged(cells_dir).items():
        dest = aside(cells_dir, path)
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, dest)
        lines.append(f"damaged record {path} ({reason}) moved to {dest}; its cell will be measured again")
    return lines


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="kvbench check-records", description=quarantine.__doc__)
    p.add_argument("cells", nargs="+", type=Path, help="results/<sweep>/cells folders")
    args = p.parse_args(argv)
    for cells in args.cells:  # a mistyped path would otherwise read as "nothing damaged"
        if not cells.is_dir():
            what = "is a file, not a folder" if cells.exists() else "no such folder"
            print(f"kvbench check-records: error: {cells}: {what} (give results/<sweep>/cells)", file=sys.stderr)
            return 1
    for cells in args.cells:
        for line in quarantine(cells):
            print(f"kvbench check-records: {line}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
