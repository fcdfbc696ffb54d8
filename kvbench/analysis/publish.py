"""Copy a verified bundle to results/published/<device>/<sweep>/ for committing to git.

Beside bundle.zip go its PNG figures, tables and explanation unpacked, and a README.md saying what the run is
(device, date, commit, cells, the headline: published_index.py), so they can be browsed on a code host; the
index of every published run, results/published/README.md, is written again each time. A published result
is a claim: an identical bundle again is a no-op (the index aside), a different one is refused rather than
silently replacing numbers someone may already cite.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

from kvbench.analysis import command
from kvbench.analysis import published_index as pi
from kvbench.analysis.bundle import ENVIRONMENT, META, verify_bundle

DEFAULT_DEST = Path("results/published")
EXPLANATION = "extra/explanation.md"
# What is unpacked next to the zip: what a browser of the repository wants to see. PNG figures only (the SVGs,
# and the records, stay in the zip: a repository's size is what every clone pays).
UNPACKED_FILES = (ENVIRONMENT, META, EXPLANATION)


def unpacked(name: str) -> bool:
    return (
        (name.startswith("figures/") and name.endswith(".png")) or name.startswith("tables/") or name in UNPACKED_FILES
    )


class PublishError(RuntimeError):
    """A refusal, with a one-line reason."""


def slugify(text: str) -> str:
    """'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3': a safe single path component."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    if not slug:
        raise PublishError(f"cannot make a folder name from {text!r}")
    return slug


def bundle_device(zf: zipfile.ZipFile) -> str:
    """The records' accelerator (environment.device_name), or on a CPU run the CPU's model: runs on an Intel and
    an AMD machine are different devices, not both 'cpu'."""
    records = [i for i in zf.infolist() if i.filename.startswith("cells/") and i.filename.endswith(".json")]
    envs = [json.loads(zf.read(i)).get("environment") or {} for i in records]
    names = {
        env.get("device_name") if env.get("device_name") not in (None, "", "cpu") else env.get("cpu") or "cpu"
        for env in envs
    }
    if not names:
        raise PublishError("the bundle holds no cell records to name a device from")
    if len(names) > 1:
        raise PublishError(f"records come from several devices ({', '.join(sorted(names))}); pass --device")
    return names.pop()


def publish(
    bundle_zip: Path, dest_root: Path = DEFAULT_DEST, device: str | None = None, *, sweep=None
) -> tuple[Path, bool]:
    """Publish ``bundle_zip``: (its folder, False if that already held this very bundle, so nothing was written).
    Raises PublishError when the bundle does not verify or a different bundle is already published there."""
    bundle_zip, dest_root = Path(bundle_zip), Path(dest_root)
    if problems := verify_bundle(bundle_zip):
        more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
        raise PublishError(f"{bundle_zip} does not verify: {problems[0]}{more}")
    with zipfile.ZipFile(bundle_zip) as zf:
        meta = json.loads(zf.read(META))
        dest = dest_root / slugify(device or bundle_device(zf)) / slugify(sweep or meta["sweep"])
        target = dest / "bundle.zip"
        if dest.exists():
            if target.is_file() and target.read_bytes() == bundle_zip.read_bytes():
                pi.write_index(dest_root)
                return dest, False  # the same bundle again: nothing to do but the index
            what = "a different bundle" if target.is_file() else "a folder that is not a published bundle"
            raise PublishError(
                f"refusing to overwrite {dest}: it holds {what}; remove it first or publish with another --device"
            )
        unpack(bundle_zip, zf, dest, pi.facts(zf, dest.parent.name, dest.name))
    pi.write_index(dest_root)
    return dest, True


def unpack(bundle_zip: Path, zf: zipfile.ZipFile, dest: Path, facts: dict) -> None:
    """Build the whole folder beside its final place, then rename it in one step: a reader or a
    second publisher never sees half a publication. Once renamed, there is nothing left to clean up."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix=f".{dest.name}.", dir=dest.parent, ignore_cleanup_errors=True) as tmp:
            shutil.copyfile(bundle_zip, Path(tmp, "bundle.zip"))
            wanted = [n for n in zf.namelist() if unpacked(n) and not n.endswith("/")]
            zf.extractall(tmp, wanted)  # names were checked safe by verify_bundle
            Path(tmp, pi.FACTS).write_text(json.dumps(facts, indent=1, sort_keys=True) + "\n")
            figures = [n.removeprefix("figures/").removesuffix(".png") for n in wanted if n.startswith("figures/")]
            tables = [n.removeprefix("tables/") for n in wanted if n.startswith("tables/")]
            readme = pi.folder_readme(facts, figures, tables, EXPLANATION in wanted)
            Path(tmp, pi.README).write_text(readme)
            for p in [Path(tmp), *Path(tmp).rglob("*")]:
                os.chmod(p, 0o755 if p.is_dir() else 0o644)
            try:
                os.rename(tmp, dest)
            except OSError as exc:  # someone published here meanwhile
                raise PublishError(f"refusing to overwrite {dest}: {exc.strerror}") from exc
    except OSError as exc:  # a full disk names no file: name the folder that could not be written
        raise OSError(exc.errno, exc.strerror or str(exc), str(dest)) from None


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench publish", description=__doc__)
    parser.add_argument("bundle", type=Path, help="results/<sweep>/bundle.zip")
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"published root (default {DEFAULT_DEST})")
    parser.add_argument("--device", help="device folder name (default: the records' device_name, slugified)")
    parser.add_argument("--sweep", help="sweep folder name (default: the bundle's)")
    args = parser.parse_args(argv)

    def action() -> str:
        dest, written = publish(args.bundle, args.dest, args.device, sweep=args.sweep)
        return f"publish: {dest / 'bundle.zip'}" + ("" if written else " already holds this bundle; nothing to do")

    return command.run("publish", action, PublishError)


if __name__ == "__main__":
    raise SystemExit(main())
