"""What a published run says about itself, and the index of every published run.

Each folder under results/published/<device>/<sweep>/ carries `published.json` (device, sweep, date, commit,
cells ok/total, the headline) read off its bundle's records when it is published, and a README.md made from
it. The index, results/published/README.md, is made from every folder's published.json, newest first:
`kvbench publish` writes it again each time, so it is never edited by hand.
"""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path

import pandas as pd

from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.core import record as kvrecord

FACTS = "published.json"
README = "README.md"


def headline(df: pd.DataFrame, sweep: str) -> str:
    """One sentence of the run's result: the best decode speedup over `none` where the sweep has pairs, else the
    fastest decode step of each engine."""
    s = rp.summary(df, sweep)
    if s["best"] is not None:
        b = s["best"]
        at = f"{b['mode']} vs none at {b['at']}: {b['ms']} vs {b['none_ms']} ms/token"
        return f"best decode speedup {b['speedup']} ({at})"
    dec = "latency.decode_ms_per_token.median"
    ok = df[df["ok"] & df[dec].notna()]
    if ok.empty:
        return "no cell finished ok"
    fastest = ok.assign(ms=ok[dec].astype(float)).sort_values("ms").groupby("cell.engine", observed=True).head(1)
    return "fastest decode: " + "; ".join(
        f"{r['cell.engine']} {r['cell.kv_mode']} {r['ms']:.2f} ms/token (batch {r['cell.batch']})"
        for _, r in fastest.iterrows()
    )


def facts(zf: zipfile.ZipFile, device: str, sweep: str) -> dict:
    """published.json's fields, from the bundle's records (read through the analysis frame, as every table is)."""
    names = sorted(n for n in zf.namelist() if n.startswith("cells/") and n.endswith(".json"))
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, name in enumerate(names):  # flat names: a record's path inside the zip is not trusted here
            paths.append(Path(tmp, f"{i}.json"))
            paths[-1].write_bytes(zf.read(name))
        df = fr.from_records(paths)
    commits = sorted({str(c) for c in df["environment.git_commit"].dropna()}) if "environment.git_commit" in df else []
    return {
        "device": device,
        "device_name": ", ".join(rp.devices(df)),
        "sweep": sweep,
        "date": str(df["created_utc"].astype(str).max())[:10],
        "commit": ", ".join(c[:10] for c in commits) or "unknown",
        "cells_ok": int(df["ok"].sum()),
        "cells": len(df),
        "headline": headline(df, sweep),
    }


def folder_readme(f: dict, figures: list[str], tables: list[str], explanation: bool) -> str:
    return rp.render("published.md.j2", f=f, figures=figures, tables=tables, explanation=explanation)


def write_index(root: Path) -> Path:
    """results/published/README.md from every published folder's published.json, newest first."""
    runs = []
    for p in sorted(root.glob(f"*/*/{FACTS}")):
        runs.append(json.loads(p.read_text()) | {"folder": p.parent.relative_to(root).as_posix()})
    runs.sort(key=lambda r: (r["date"], r["device"], r["sweep"]), reverse=True)
    out = root / README
    kvrecord.write_atomic_text(out, rp.render("published_index.md.j2", runs=runs))
    return out
