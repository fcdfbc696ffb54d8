"""Copy a verified bundle to results/published/<device>/<sweep>/ for committing to git.

Beside bundle.zip go its figures, tables and index unpacked, so they can be browsed on GitHub.
A published result is a claim: an identical bundle again is a no-op, a different one is
refused rather than silently replacing numbers someone may already cite.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from kvbench.analysis.bundle import META, verify_bundle

DEFAULT_DEST = Path("results/published")
# What is unpacked next to the zip: what a browser of the repository wants to see.
UNPACKED_PREFIXES = ("figures/", "tables/")
UNPACKED_FILES = ("index.md", "environment.json", "bundle.json")


class PublishError(RuntimeError):
    """A refusal, with a one-line reason."""


def slugify(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': a safe single path component."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug:
        raise PublishError(f"cannot make a folder name from {text!r}")
    return slug


def _sha256_file(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def bundle_device(zf: zipfile.ZipFile) -> str:
    """The records' environment.device_name (the CPU's name where a record has none)."""
    names: set[str] = set()
    for info in zf.infolist():
        if info.filename.startswith("cells/") and info.filename.endswith(".json"):
            env = json.loads(zf.read(info)).get("environment") or {}
            names.add(env.get("device_name") or env.get("cpu") or "cpu")
    if not names:
        raise PublishError("the bundle holds no cell records to name a device from")
    if len(names) > 1:
        raise PublishError(f"records come from several devices ({', '.join(sorted(names))}); pass --device")
    return names.pop()


def publish(bundle_zip: Path, dest_root: Path = DEFAULT_DEST, device: str | None = None, *, sweep=None) -> Path:
    """Publish ``bundle_zip``; return the folder it lives in.  Raises PublishError when the
    bundle does not verify or a different bundle is already published at that place."""
    return _publish(bundle_zip, dest_root, device, sweep)[0]


def _publish(bundle_zip: Path, dest_root: Path, device: str | None, sweep: str | None) -> tuple[Path, bool]:
    """(folder, whether anything was written: False for the same bundle again)."""
    bundle_zip, dest_root = Path(bundle_zip), Path(dest_root)
    problems = verify_bundle(bundle_zip)
    if problems:
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PublishError(f"{bundle_zip} does not verify: {problems[0]}{more}")
    with zipfile.ZipFile(bundle_zip) as zf:
        meta = json.loads(zf.read(META))
        device_slug = slugify(device or bundle_device(zf))
        sweep_slug = slugify(sweep or meta["sweep"])
        dest = dest_root / device_slug / sweep_slug
        target = dest / "bundle.zip"
        if dest.exists():
            if target.is_file() and _sha256_file(target) == _sha256_file(bundle_zip):
                return dest, False  # the same bundle again: nothing to do
            what = "a different bundle" if target.is_file() else "a folder that is not a published bundle"
            raise PublishError(
                f"refusing to overwrite {dest}: it holds {what}; remove it first or publish with another --device"
            )
        # Build the whole folder beside its final place, then rename it in one step: a reader
        # or a second publisher never sees half a publication.
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{sweep_slug}.", dir=dest.parent))
        try:
            shutil.copyfile(bundle_zip, tmp / "bundle.zip")
            for info in sorted(zf.infolist(), key=lambda i: i.filename):
                name = info.filename
                if info.is_dir() or not (name.startswith(UNPACKED_PREFIXES) or name in UNPACKED_FILES):
                    continue
                out = tmp / name  # names were checked safe by verify_bundle
                out.parent.mkdir(parents=True, exist_ok=True)
                out.write_bytes(zf.read(info))
            for p in [tmp, *tmp.rglob("*")]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            try:
                os.rename(tmp, dest)
            except OSError as exc:  # someone published here meanwhile
                raise PublishError(f"refusing to overwrite {dest}: {exc.strerror}") from exc
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return dest, True


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvbench publish",
        description="Copy a bundle to results/published/<device>/<sweep>/ (bundle.zip plus "
        "unpacked figures and tables), refusing to replace a different one.",
    )
    parser.add_argument("bundle", type=Path, help="results/<sweep>/bundle.zip")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"published root (default {DEFAULT_DEST})")
    parser.add_argument(
        "--device", default=None, help="device folder name (default: the records' device_name, slugified)"
    )
    parser.add_argument("--sweep", default=None, help="sweep folder name (default: the bundle's)")
    args = parser.parse_args(argv)
    try:
        dest, written = _publish(args.bundle, args.dest, args.device, args.sweep)
    except (PublishError, OSError, ValueError, KeyError) as exc:
        print(f"publish: error: {exc}", file=sys.stderr)
        return 1
    print(f"publish: {dest / 'bundle.zip'}" + ("" if written else " already holds this bundle; nothing to do"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
