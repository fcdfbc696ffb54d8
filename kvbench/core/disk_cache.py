"""Folders kvbench keeps on disk for reuse, each checked before it is reused.

Inductor's compiled kernels and CTranslate2's converted models live under $KVBENCH_CACHE_DIR and
are reused by every later cell; a damaged file there would fail each of those cells with a
message that does not say where it is. So a folder carries a manifest, the sha256 of every file
in it, written after a use succeeded (`seal`). Before the next use (`verified`) each listed file
is hashed again; a folder whose files changed or vanished is moved aside, said in one line naming
both paths, and its owner rebuilds it. Files the manifest does not list yet (written since, by
another cell) are not judged: their names are content hashes, so each is written once.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path

from kvbench.core import env_vars
from kvbench.core.record import write_atomic_text

MANIFEST = ".kvbench-manifest.json"


class CacheError(OSError):
    """A damaged cache that could not be moved aside: one line naming it and what to do."""


def inductor_dir() -> Path:
    """Where kvbench points inductor's on-disk caches (kernels, autotuning results)."""
    return env_vars.cache_dir() / "inductor"


def seal_inductor() -> None:
    """Seal kvbench's inductor folder after a compile succeeded, where it is the one in use."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR") == str(inductor_dir()):
        seal(inductor_dir())


def _digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _files(folder: Path) -> list[str]:
    """Files worth judging: not the manifest, not temp files (dot names), not lock files."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not p.name.startswith(".") and "locks" not in p.relative_to(folder).parts
    )


def seal(folder: Path) -> None:
    """Record the sha256 of every file in `folder` now, after a use of it succeeded.

    Best effort: a file another cell removes meanwhile is left out, and a manifest that cannot be
    written is said in one line (the folder is then reused unchecked, as before it was sealed).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return
    manifest = {}
    for name in _files(folder):
        try:
            manifest[name] = _digest(folder / name)
        except FileNotFoundError:
            continue
    try:
        write_atomic_text(folder / MANIFEST, json.dumps(manifest, indent=0, sort_keys=True))
    except OSError as e:
        print(f"kvbench: cannot seal the cache {folder} ({e.strerror or e}); it is reused unchecked", file=sys.stderr)


def damage(folder: Path) -> str | None:
    """What is wrong with `folder` against its manifest, or None (sound, or nothing recorded yet)."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text())
        listed = [(str(name), str(sha)) for name, sha in manifest.items()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        return f"its manifest {MANIFEST} is unreadable ({type(e).__name__})"
    for name, sha in listed:
        try:
            if _digest(Path(folder) / name) != sha:
                return f"{name} changed since it was written"
        except OSError as e:
            return f"{name} is {'missing' if isinstance(e, FileNotFoundError) else 'unreadable'}"
    return None


def verified(folder: Path, what: str) -> Path:
    """`folder`, moved aside first if it is damaged, so that its owner rebuilds it in place.

    Raises CacheError, naming the folder, where a damaged one cannot be moved.
    """
    folder = Path(folder)
    why = damage(folder)
    if why is None:
        return folder
    aside = folder.with_name(f"{folder.name}.damaged-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}")
    try:
        os.replace(folder, aside)
    except OSError as e:
        raise CacheError(
            f"{what} cache {folder} is damaged ({why}) and cannot be moved aside ({e.strerror or e}); "
            f"remove it and run again"
        ) from None
    print(f"kvbench: {what} cache {folder} is damaged ({why}); moved to {aside}, rebuilding", file=sys.stderr)
    return folder
