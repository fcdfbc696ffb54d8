"""The cell record: schema validation and an atomic write (a killed cell leaves no file)."""

from __future__ import annotations

import json
import os
import tempfile
from datetime import datetime, timezone
from functools import cache
from pathlib import Path

SCHEMA_VERSION = 1


def schema_path() -> Path:
    """Shipped inside the package (workflow/schemas/record.schema.json links to it)."""
    return Path(__file__).resolve().parent / "schemas" / "record.schema.json"


@cache
def _validator():
    import jsonschema
    schema = json.loads(schema_path().read_text())
    return jsonschema.Draft202012Validator(schema)


def validate(record: dict) -> None:
    """Raise ValueError with the first schema violation, naming its path."""
    errors = sorted(_validator().iter_errors(record), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = ".".join(str(p) for p in e.path) or "<record>"
        raise ValueError(f"record {where}: {e.message}")


def now_utc() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_atomic(path: Path, record: dict) -> None:
    """Validate, write to a temp file beside `path`, fsync, rename: readers see all or nothing."""
    validate(record)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(record, f, indent=2, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
