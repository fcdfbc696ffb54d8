"""One sweep -> one deterministic zip: figures, tables, records, config, environment, index, and
MANIFEST.sha256 over every other file (``sha256sum -c MANIFEST.sha256`` after unzipping).

Deterministic so that rebuilding from unchanged inputs gives the same bytes: publish can then tell
"same bundle again" (no-op) from "a different bundle" (refuse) by comparing bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import re
import sys
import zipfile
import zlib
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from kvbench.analysis import command
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.core import record as kvrecord

MANIFEST = "MANIFEST.sha256"
INDEX = "index.md"
ENVIRONMENT = "environment.json"
META = "bundle.json"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # the earliest a zip can say; no build time leaks in
MACHINE = ("device_name", "cpu", "torch", "cuda", "driver", "git_commit", "kvbench_version", "container_image")
_MANIFEST_LINE = re.compile(r"^([0-9a-f]{64}) [ *](.+)$")


def _files_under(root: Path, prefix: str, pattern: str = "*") -> dict[str, Path]:
    """prefix + name relative to root -> path of root's regular files, sorted (none if root is missing);
    dot-named ones, hidden or the temp files of interrupted writes, left out."""
    found = {p.relative_to(root).as_posix(): p for p in root.rglob(pattern) if p.is_file()}
    return {prefix + n: found[n] for n in sorted(found) if not any(part.startswith(".") for part in n.split("/"))}


def environment(df: pd.DataFrame) -> dict:
    """Each environment field's distinct values with how many records had each: one glance says whether the sweep
    ran on one machine, one driver, one commit. From the records' frame: nested fields and lists as in cells.csv."""

    def spelled(v) -> str:  # as JSON would spell it: numpy scalars as Python ones, missing as null
        return json.dumps(None if pd.isna(v) else v.item() if hasattr(v, "item") else v, sort_keys=True)

    values = {}
    for col in sorted(c for c in df.columns if c.startswith("environment.")):
        counts = df[col].map(spelled).value_counts().sort_index()
        values[col.removeprefix("environment.")] = [{"value": json.loads(v), "records": n} for v, n in counts.items()]
    return {"records": len(df), "values": values}


def _index(entries: dict[str, bytes], meta: dict, env: dict) -> str:
    """index.md: readable on GitHub once unpacked (figures inline, tables linked)."""

    def under(prefix: str) -> dict[str, int]:
        return {n: len(entries[n]) for n in sorted(entries) if n.startswith(prefix)}

    pngs = [n.removeprefix("figures/").removesuffix(".png") for n in under("figures/") if n.endswith(".png")]
    return rp.render(
        "index.md.j2",
        sweep=meta["sweep"],
        records=meta["records"],
        statuses=", ".join(f"{s} {n}" for s, n in meta["status_counts"].items()) or "none",
        machine={k: [str(v["value"]) for v in env["values"][k]] for k in MACHINE if env["values"].get(k)},
        figures={stem: f"figures/{stem}.svg" in entries for stem in pngs},
        groups={"Tables": under("tables/"), "Config": under("config/"), "Extra": under("extra/")},
        cells=list(under("cells/")),
    )


def build_bundle(
    sweep_dir: Path, out_zip: Path, config_path: Path | None, extra: list[Path], *, sweep: str | None = None
) -> None:
    """Write ``out_zip`` atomically from sweep_dir's figures/, tables/ and cells/*.json, the config, the extra
    files and folders, and what is made from them: environment.json, bundle.json, index.md, MANIFEST.sha256."""
    sweep_dir = Path(sweep_dir)
    files = _files_under(sweep_dir / "figures", "figures/") | _files_under(sweep_dir / "tables", "tables/")
    records = _files_under(sweep_dir / "cells", "cells/", "*.json")
    if not records:
        raise ValueError(f"{sweep_dir / 'cells'}: no cell records to bundle")
    files |= records
    if config_path is not None:
        files[f"config/{Path(config_path).name}"] = Path(config_path)
    for x in map(Path, extra):  # a folder keeps its name above its files
        more = _files_under(x, f"extra/{x.name}/") if x.is_dir() else {f"extra/{x.name}": x}
        if clash := sorted(more.keys() & files.keys()):
            raise ValueError(f"two files would be stored as {clash[0]}")
        files |= more
    entries = {name: p.read_bytes() for name, p in files.items()}
    df = fr.from_records(list(records.values()))  # refuses damaged records, each named
    env = environment(df)
    statuses = df["status"].value_counts(sort=False)  # in STATUS_ORDER: an ordered Categorical
    sweep = sweep or sweep_dir.resolve().name
    meta = {"sweep": sweep, "records": len(df), "status_counts": {s: int(n) for s, n in statuses.items() if n}}
    entries[ENVIRONMENT] = (json.dumps(env, indent=1, sort_keys=True) + "\n").encode()
    entries[META] = (json.dumps(meta, indent=1, sort_keys=True) + "\n").encode()
    entries[INDEX] = _index(entries, meta, env).encode()
    # sha256sum would escape these names, and zips disagree on backslashes
    if bad := [n for n in entries if "\n" in n or "\\" in n]:
        raise ValueError(f"file names a manifest cannot carry: {bad}")
    entries[MANIFEST] = "".join(f"{hashlib.sha256(entries[n]).hexdigest()}  {n}\n" for n in sorted(entries)).encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:  # sorted members, fixed date, mode and creator system, one compression
        for name in sorted(entries):
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 3  # unix, so external_attr means a mode everywhere
            info.external_attr = 0o100644 << 16  # regular file, rw-r--r--
            zf.writestr(info, entries[name], zipfile.ZIP_DEFLATED, compresslevel=9)
    kvrecord.write_atomic_bytes(Path(out_zip), buf.getvalue())


def verify_bundle(bundle_zip: Path) -> list[str]:
    """Problems found (empty list: the bundle is whole and matches its manifest)."""
    try:
        zf = zipfile.ZipFile(bundle_zip)
    except (OSError, zipfile.BadZipFile) as exc:
        return [f"{bundle_zip}: not a readable zip: {exc}"]
    with zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        problems = [f"{name}: stored {n} times" for name, n in sorted(Counter(names).items()) if n > 1]
        unsafe = [n for n in names if n.startswith("/") or ".." in n.split("/") or "\\" in n]
        problems += [f"{n}: unsafe path in archive" for n in unsafe]
        problems += [f"{name}: missing" for name in (MANIFEST, INDEX, ENVIRONMENT, META) if name not in names]
        data: dict[str, bytes] = {}
        for name in dict.fromkeys(names):
            try:
                data[name] = zf.read(name)
            except (zipfile.BadZipFile, zlib.error, OSError, ValueError) as exc:  # a bad header, CRC or inflate
                problems.append(f"{name}: unreadable (its compressed bytes are damaged): {exc}")
    if MANIFEST not in data:
        return problems
    lines = enumerate(data[MANIFEST].decode("utf-8", "replace").splitlines(), 1)
    matched = [(lineno, line, _MANIFEST_LINE.match(line)) for lineno, line in lines]
    problems += [f"{MANIFEST}:{lineno}: malformed line {line!r}" for lineno, line, m in matched if not m]
    listed = {m.group(2): m.group(1) for _, _, m in matched if m}
    for name, digest in listed.items():
        if name not in data:
            if name not in names:  # one that is there but unreadable has been said already
                problems.append(f"{name}: in the manifest but not in the archive")
        elif hashlib.sha256(data[name]).hexdigest() != digest:
            problems.append(f"{name}: sha256 differs from the manifest")
    unlisted = [n for n in data if n != MANIFEST and n not in listed]
    return problems + [f"{n}: in the archive but not in the manifest" for n in unlisted]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench bundle", description="Build and check a bundle.zip or --verify one.")
    parser.add_argument("--sweep-dir", type=Path, help="results/<sweep>: figures/ tables/ cells/")
    parser.add_argument("--out", type=Path, help="zip to write (default <sweep-dir>/bundle.zip)")
    parser.add_argument("--config", type=Path, help="config file to include")
    parser.add_argument("--extra", type=Path, nargs="*", default=[], help="more files or folders to put under extra/")
    parser.add_argument("--sweep", help="sweep name (default: the folder's name)")
    parser.add_argument("--verify", type=Path, metavar="ZIP", help="only check an existing bundle against its manifest")
    args = parser.parse_args(argv)
    if args.verify is None and args.sweep_dir is None:
        parser.error("--sweep-dir is required unless --verify is given")
    target = args.verify or args.out or args.sweep_dir / "bundle.zip"
    if args.verify is None and command.run(
        "bundle", lambda: build_bundle(args.sweep_dir, target, args.config, args.extra, sweep=args.sweep)
    ):
        return 1
    problems = verify_bundle(target)
    for p in problems:
        print(f"bundle: {target}: {p}", file=sys.stderr)
    if not problems:
        print(f"bundle: {target} OK")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
