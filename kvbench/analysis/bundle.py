"""One sweep -> one deterministic zip: figures, tables, records, config, environment, index,
and MANIFEST.sha256 over every other file (``sha256sum -c MANIFEST.sha256`` after unzipping).

Deterministic so that rebuilding from unchanged inputs gives the same bytes: publish can then
tell "same bundle again" (no-op) from "a different bundle" (refuse) by comparing hashes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import zipfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.record import write_atomic_bytes

MANIFEST = "MANIFEST.sha256"
INDEX = "index.md"
ENVIRONMENT = "environment.json"
META = "bundle.json"
REQUIRED_MEMBERS = (MANIFEST, INDEX, ENVIRONMENT, META)
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say; no build time leaks in
FILE_MODE = 0o100644  # regular file, rw-r--r--
MACHINE = ("device_name", "cpu", "torch", "cuda", "driver", "git_commit", "kvbench_version", "container_image")
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_under(root: Path, pattern: str = "*") -> dict[str, Path]:
    """Name relative to root -> path of its regular files, sorted; hidden ones and the temp files
    of interrupted writes (dot-named) left out."""
    found = {p.relative_to(root).as_posix(): p for p in root.rglob(pattern) if p.is_file()} if root.is_dir() else {}
    return {n: found[n] for n in sorted(found) if not any(part.startswith(".") for part in n.split("/"))}


def _plain(value):
    """A frame's cell as JSON would spell it (numpy scalars as Python ones, missing as null)."""
    return None if pd.isna(value) else value.item() if hasattr(value, "item") else value


def environment(df: pd.DataFrame) -> dict[str, Any]:
    """Each environment field's distinct values with how many records had each: one glance
    says whether the sweep ran on one machine, one driver, one commit. From the records' frame,
    so nested fields and lists are spelled as in cells.csv."""
    values = {}
    for col in sorted(c for c in df.columns if c.startswith("environment.")):
        counts = df[col].map(lambda v: json.dumps(_plain(v), sort_keys=True)).value_counts().sort_index()
        values[col.removeprefix("environment.")] = [{"value": json.loads(v), "records": n} for v, n in counts.items()]
    return {"records": len(df), "values": values}


def _index(sweep: str, entries: dict[str, bytes], meta: dict[str, Any], env: dict[str, Any]) -> str:
    """index.md: readable on GitHub once unpacked (figures inline, tables linked)."""

    def under(prefix: str) -> dict[str, int]:
        return {n: len(entries[n]) for n in sorted(entries) if n.startswith(prefix)}

    pngs = [n.removeprefix("figures/").removesuffix(".png") for n in under("figures/") if n.endswith(".png")]
    return rp.render(
        "index.md.j2",
        sweep=sweep,
        records=meta["records"],
        statuses=", ".join(f"{s} {n}" for s, n in meta["status_counts"].items()) or "none",
        machine={k: [str(v["value"]) for v in env["values"][k]] for k in MACHINE if env["values"].get(k)},
        figures={stem: f"figures/{stem}.svg" in entries for stem in pngs},
        groups={"Tables": under("tables/"), "Config": under("config/"), "Extra": under("extra/")},
        cells=list(under("cells/")),
    )


def collect(
    sweep_dir: Path, config_path: Path | None, extra: Sequence[Path], sweep: str | None = None
) -> dict[str, bytes]:
    """Archive name -> bytes, every generated file included, MANIFEST last."""
    sweep_dir = Path(sweep_dir)
    sweep = sweep or sweep_dir.resolve().name
    entries: dict[str, bytes] = {}

    def add(name: str, data: bytes) -> None:
        if name in entries:
            raise ValueError(f"two files would be stored as {name}")
        entries[name] = data

    for sub in ("figures", "tables"):
        for name, p in _files_under(sweep_dir / sub).items():
            add(f"{sub}/{name}", p.read_bytes())
    records = _files_under(sweep_dir / "cells", "*.json")
    if not records:
        raise ValueError(f"{sweep_dir / 'cells'}: no cell records to bundle")
    for name, p in records.items():
        add(f"cells/{name}", p.read_bytes())
    df = fr.from_records(list(records.values()))  # refuses damaged records, each named
    if config_path is not None:
        add(f"config/{Path(config_path).name}", Path(config_path).read_bytes())
    for x in map(Path, extra):  # a folder keeps its name above its files
        for name, p in (_files_under(x) if x.is_dir() else {"": x}).items():
            add(f"extra/{x.name}/{name}" if name else f"extra/{x.name}", p.read_bytes())
    env = environment(df)
    statuses = df["status"].value_counts(sort=False)  # in STATUS_ORDER: an ordered Categorical
    meta = {"sweep": sweep, "records": len(df), "status_counts": {s: int(n) for s, n in statuses.items() if n}}
    add(ENVIRONMENT, (json.dumps(env, indent=1, sort_keys=True) + "\n").encode())
    add(META, (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode())
    add(INDEX, _index(sweep, entries, meta, env).encode())
    bad = [n for n in entries if "\n" in n or "\\" in n]
    if bad:  # sha256sum would escape these names, and zips disagree on backslashes
        raise ValueError(f"file names a manifest cannot carry: {bad}")
    entries[MANIFEST] = "".join(f"{_sha256(entries[n])}  {n}\n" for n in sorted(entries)).encode()
    return entries


def zip_bytes(entries: dict[str, bytes]) -> bytes:
    """Sorted members, fixed date, mode and creator system, one compression level."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.create_system = 3  # unix, so external_attr means a mode everywhere
            info.external_attr = FILE_MODE << 16
            zf.writestr(info, entries[name], compresslevel=9)
    return buf.getvalue()


def build_bundle(
    sweep_dir: Path, out_zip: Path, config_path: Path | None, extra: list[Path], *, sweep: str | None = None
) -> None:
    """Write ``out_zip`` atomically (temp file + os.replace) from ``sweep_dir``'s figures/,
    tables/ and cells/, plus the config and extra files."""
    write_atomic_bytes(Path(out_zip), zip_bytes(collect(sweep_dir, config_path, extra, sweep)))


def verify_bundle(bundle_zip: Path) -> list[str]:
    """Problems found (empty list: the bundle is whole and matches its manifest)."""
    try:
        zf = zipfile.ZipFile(bundle_zip)
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"{bundle_zip}: not a readable zip: {exc}"]
    problems: list[str] = []
    with zf:
        infos = [i for i in zf.infolist() if not i.is_dir()]
        names = [i.filename for i in infos]
        for name, n in sorted(Counter(names).items()):
            if n > 1:
                problems.append(f"{name}: stored {n} times")
        for name in names:
            if name.startswith("/") or ".." in name.split("/") or "\\" in name:
                problems.append(f"{name}: unsafe path in archive")
        for name in REQUIRED_MEMBERS:
            if name not in names:
                problems.append(f"{name}: missing")
        data: dict[str, bytes] = {}
        for name in dict.fromkeys(names):
            try:
                data[name] = zf.read(name)
            except (zipfile.BadZipFile, OSError, ValueError) as exc:  # CRC or inflate failure
                problems.append(f"{name}: unreadable: {exc}")
    if MANIFEST not in data:
        return problems
    listed: dict[str, str] = {}
    for lineno, line in enumerate(data[MANIFEST].decode("utf-8", "replace").splitlines(), 1):
        m = _MANIFEST_LINE.match(line)
        if not m:
            problems.append(f"{MANIFEST}:{lineno}: malformed line {line!r}")
            continue
        listed[m.group(2)] = m.group(1)
    for name, digest in listed.items():
        if name not in data:
            problems.append(f"{name}: in the manifest but not in the archive")
        elif _sha256(data[name]) != digest:
            problems.append(f"{name}: sha256 differs from the manifest")
    for name in data:
        if name != MANIFEST and name not in listed:
            problems.append(f"{name}: in the archive but not in the manifest")
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvbench bundle", description="Build (and check) a sweep's deterministic bundle.zip, or --verify one."
    )
    parser.add_argument("--sweep-dir", type=Path, help="results/<sweep>: figures/ tables/ cells/")
    parser.add_argument("--out", type=Path, help="zip to write (default <sweep-dir>/bundle.zip)")
    parser.add_argument("--config", type=Path, default=None, help="config file to include")
    parser.add_argument(
        "--extra", type=Path, nargs="*", default=[], help="more files or folders to include under extra/"
    )
    parser.add_argument("--sweep", default=None, help="sweep name (default: the folder's name)")
    parser.add_argument("--verify", type=Path, metavar="ZIP", help="only check an existing bundle against its manifest")
    args = parser.parse_args(argv)
    if args.verify is not None:
        target = args.verify
    else:
        if args.sweep_dir is None:
            parser.error("--sweep-dir is required unless --verify is given")
        target = args.out or args.sweep_dir / "bundle.zip"
        try:
            build_bundle(args.sweep_dir, target, args.config, args.extra, sweep=args.sweep)
        except (ValueError, OSError) as exc:
            print(f"bundle: error: {exc}", file=sys.stderr)
            return 1
    problems = verify_bundle(target)
    for p in problems:
        print(f"bundle: {target}: {p}", file=sys.stderr)
    if problems:
        return 1
    print(f"bundle: {target} OK")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
