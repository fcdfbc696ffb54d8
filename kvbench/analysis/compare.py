"""Two runs side by side: `kvbench compare A B`.

A and B are each a result folder (results/<sweep>/, its records under cells/), a bundle.zip, or a
published folder (results/published/<device>/<sweep>/, whose bundle.zip holds the records). Their
cells are joined on their settings by a merge; each timing gets B/A and a verdict that respects
the noise: **same** when the two min-max ranges over the timed iterations overlap, else **faster**
or **slower**. What differs between the two environments (device, torch, commit, ...) is named, and
cells found in one run only are listed. `--fail-above 1.10` exits 1 when a cell is slower by more
than 10 % (or stopped finishing), for CI; bad input exits 2 with one line naming the path.

    kvbench compare results/published/<device>/cpu results/cpu --out results/cpu/compare --fail-above 1.10
"""

from __future__ import annotations

import argparse
import io
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from kvbench.analysis import bundle as bnd
from kvbench.analysis import frame as fr
from kvbench.analysis import report as rp
from kvbench.core import record as kvrecord
from kvbench.core.presets import KV_MODES

# The settings that make two cells the same cell: all of a record's cell but where and how long it ran (the
# device is not one: comparing machines is the point; nor the seed, the iterations or a prompt file's path).
RUN_ONLY = ("device", "prompt_source", "seed", "warmup", "iters", "check_steps")
KEYS = [k for k in kvrecord.schema()["properties"]["cell"]["properties"] if k not in RUN_ONLY]
TIMINGS = {
    "decode": ("latency.decode_ms_per_token", "Decode ms/token"),
    "prefill": ("latency.prefill_ms", "Prefill ms"),
}
STATS = ("median", "min", "max", "std", "n")
ENVIRONMENT = (*bnd.MACHINE, "python", "torch_threads")
VERDICTS = {"faster": "#2ca02c", "same": "#9e9e9e", "slower": "#d62728"}
SIDES = ("a", "b")


class CompareError(ValueError):
    """Bad input: one line naming the path and what is wrong."""


def _from_bundle(path: Path) -> pd.DataFrame:
    """The records inside a bundle, loaded as from a sweep folder (the same names under cells/)."""
    if problems := bnd.verify_bundle(path):
        raise CompareError(f"{path}: not a whole bundle: {problems[0]}")
    with zipfile.ZipFile(path) as zf, tempfile.TemporaryDirectory(prefix="kvbench-compare-") as tmp:
        names = [n for n in zf.namelist() if n.startswith("cells/") and n.endswith(".json")]
        if not names:
            raise CompareError(f"{path}: the bundle holds no cell records")
        zf.extractall(tmp, names)  # names were checked safe by verify_bundle
        return fr.from_records([Path(tmp, n) for n in sorted(names)])


def load(path: Path) -> pd.DataFrame:
    """The frame of one run: its records (cells/, or a bundle's), else its tables/cells.csv."""
    path = Path(path)
    if not path.exists():
        raise CompareError(f"{path}: no such result folder or bundle")
    if path.is_file():
        if not zipfile.is_zipfile(path):
            raise CompareError(f"{path}: not a bundle.zip (give a results/<sweep> folder, a bundle or a published one)")
        return _from_bundle(path)
    cells = path if path.name == "cells" else path / "cells"
    if cells.is_dir() and (files := kvrecord.find([cells])):
        return fr.from_records(files)
    if (path / "bundle.zip").is_file():
        return _from_bundle(path / "bundle.zip")
    if (path / "tables" / "cells.csv").is_file():
        return fr.read_cells(path / "tables" / "cells.csv")
    raise CompareError(f"{path}: no cell records (looked for cells/*.json, bundle.zip and tables/cells.csv)")


def _text(v) -> str:
    """One spelling per setting: 16 and 16.0 alike (cells.csv reads some ints as floats), missing as 'none'."""
    if isinstance(v, (str, bool)):
        return str(v)
    if v is None or pd.isna(v):
        return "none"
    return str(int(v)) if float(v).is_integer() else str(v)


def _natural(text: str) -> tuple:
    """Numbers in numeric order (16 before 128), then text."""
    try:
        return (0, float(text), "")
    except ValueError:
        return (1, 0.0, text)


def _side(df: pd.DataFrame, path: Path) -> pd.DataFrame:
    """One run reduced to what is compared: its settings as text (16 and 16.0 alike, missing as
    'none'), the join's keys, beside each ok cell's numbers."""
    settings = df.reindex(columns=[f"cell.{k}" for k in KEYS]).astype(object).map(_text)
    side = settings.set_axis(list(KEYS), axis=1).assign(
        record=df["record"], status=df["status"].astype(str), peak_bytes=df["peak_bytes"].astype(float).where(df["ok"])
    )
    for name, (col, _) in TIMINGS.items():
        for s in STATS:
            got = df.get(f"{col}.{s}", pd.Series(np.nan, index=df.index))
            side[f"{name}.{s}"] = pd.to_numeric(got, errors="coerce").astype(float).where(df["ok"])
    twins = side.loc[side.duplicated(list(KEYS), keep=False), "record"]
    if len(twins):  # a merge would pair each with every partner
        raise CompareError(f"{path}: two records for the same settings: {' and '.join(sorted(twins)[:2])}")
    return side


def _verdict(m: pd.DataFrame, name: str) -> pd.Series:
    """same / faster / slower for the cells both ran ok; else why there is no verdict."""
    a_lo, a_hi, b_lo, b_hi = (m[f"{name}.{s}_{side}"] for side in SIDES for s in ("min", "max"))
    status_a, status_b = m["status_a"].fillna("missing"), m["status_b"].fillna("missing")
    overlap = (b_lo <= a_hi) & (a_lo <= b_hi)
    cases = [
        m["_merge"] == "left_only",
        m["_merge"] == "right_only",
        (status_a != "ok") | (status_b != "ok"),
        m[f"{name}_ratio"].isna(),
        overlap,
        m[f"{name}_ratio"] < 1,
    ]
    why = "A " + status_a + ", B " + status_b
    return pd.Series(
        np.select(cases, ["only in A", "only in B", why, "not measured", "same", "faster"], "slower"), index=m.index
    )


def joined(a: pd.DataFrame, b: pd.DataFrame, paths: tuple[Path, Path] = (Path("A"), Path("B"))) -> pd.DataFrame:
    """One row per cell of either run (a merge on the settings): each side's numbers (suffix _a, _b), B/A and
    the verdicts."""
    sa, sb = _side(a, paths[0]), _side(b, paths[1])
    m = sa.merge(sb, on=list(KEYS), how="outer", suffixes=("_a", "_b"), indicator=True, validate="one_to_one")
    for name in TIMINGS:
        m[f"{name}_ratio"] = m[f"{name}.median_b"] / m[f"{name}.median_a"].where(m[f"{name}.median_a"] > 0)
        # the extreme ratios the two ranges allow, and the ratio's relative spread from both std's
        m[f"{name}_ratio_lo"] = m[f"{name}.min_b"] / m[f"{name}.max_a"]
        m[f"{name}_ratio_hi"] = m[f"{name}.max_b"] / m[f"{name}.min_a"]
        cv = [m[f"{name}.std_{s}"] / m[f"{name}.median_{s}"] for s in SIDES]
        m[f"{name}_ratio_cv"] = np.hypot(*cv)
        m[f"{name}_verdict"] = _verdict(m, name)
    m["peak_ratio"] = m["peak_bytes_b"] / m["peak_bytes_a"].where(m["peak_bytes_a"] > 0)
    modes = [k for k in KV_MODES if k in set(m["kv_mode"])]
    m["kv_mode"] = pd.Categorical(m["kv_mode"], modes + sorted(set(m["kv_mode"]) - set(modes)))
    order = ["kv_mode", "engine", *(k for k in KEYS if k not in ("kv_mode", "engine"))]
    m = m.sort_values(order, key=lambda s: s if s.name == "kv_mode" else s.map(_natural), kind="stable")
    m["label"] = _labels(m)
    return m.reset_index(drop=True)


def _labels(m: pd.DataFrame) -> pd.Series:
    """A cell by its batch, prompt and new tokens (b1 p16 n12), then whatever else varies but the kv mode."""
    text = "b" + m["batch"] + " p" + m["prompt_len"] + " n" + m["new_tokens"]
    for key in [k for k in KEYS if k not in ("kv_mode", "batch", "prompt_len", "new_tokens")]:
        values = m[key].replace("none", "all") if key == "n_kv_head" else m[key]
        if values.nunique() > 1:
            text = text + f", {key}=" + values
    return text


def environments(a: pd.DataFrame, b: pd.DataFrame) -> pd.DataFrame:
    """Each environment field's values in A and B (with their record counts where several), and whether they differ."""

    def spelled(df: pd.DataFrame, field: str) -> str:
        found = bnd.environment(df)["values"].get(field, [])
        if len(found) == 1:
            return str(found[0]["value"])
        return "; ".join(f"{v['value']} ({v['records']} records)" for v in found) or "–"

    rows = [(field, spelled(a, field), spelled(b, field)) for field in ENVIRONMENT]
    t = pd.DataFrame(rows, columns=["field", "A", "B"])
    return t.assign(differs=t["A"] != t["B"])


def failures(m: pd.DataFrame, above: float) -> list[str]:
    """The cells slower than `above` times A in some timing (beyond the noise), or ok in A and not in B."""
    out = []
    for d in m.to_dict("records"):
        cell = f"{d['kv_mode']} {d['label']}"
        if d["status_a"] == "ok" and isinstance(d["status_b"], str) and d["status_b"] != "ok":
            out.append(f"{cell}: A ok, B {d['status_b']}")
        for name in TIMINGS:
            if d[f"{name}_verdict"] == "slower" and d[f"{name}_ratio"] > above:
                out.append(f"{cell}: {name} {d[f'{name}_ratio']:.3f}x A (above {above:g}x)")
    return out


def _ms(m: pd.DataFrame, name: str, side: str) -> pd.Series:
    """'12.3 ±2 % (n 3)': the median, the standard deviation relative to it, the timed iterations."""
    med, std, n = (m[f"{name}.{s}_{side}"] for s in ("median", "std", "n"))
    text = med.map(lambda v: rp.num(rp.f(v)))
    spread = (std / med).map(lambda v: "" if rp.f(v) is None else f" ±{100 * v:.0f} %")
    count = n.map(lambda v: "" if rp.f(v) is None else f" (n {int(v)})")
    return (text + spread + count).where(med.notna(), "–")


def tables(m: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The report's tables, formatted: one per timing and peak memory, cells both runs have."""
    both = m[m["_merge"] == "both"]
    out = {}
    for name, (_, title) in TIMINGS.items():
        ratio = both[f"{name}_ratio"].map(rp.x) + both[f"{name}_ratio_cv"].map(
            lambda v: "" if rp.f(v) is None else f" ±{100 * v:.0f} %"
        )
        verdict = both[f"{name}_verdict"].map(lambda v: f"**{v}**" if v in VERDICTS else v)
        cols = {"kv_mode": both["kv_mode"].astype(str), "cell": both["label"], "A": _ms(both, name, "a")}
        out[title] = pd.DataFrame(cols | {"B": _ms(both, name, "b"), "B/A": ratio, "verdict": verdict})
    peak = {"kv_mode": both["kv_mode"].astype(str), "cell": both["label"]}
    peak |= {"A": both["peak_bytes_a"].map(rp.mib), "B": both["peak_bytes_b"].map(rp.mib)}
    out["Peak memory"] = pd.DataFrame(peak | {"B/A": both["peak_ratio"].map(rp.x)})
    return out


def markdown(m: pd.DataFrame, env: pd.DataFrame, paths: tuple[Path, Path], fail_above: float | None) -> str:
    counts = {
        title: ", ".join(f"{v} {n}" for v, n in m[f"{name}_verdict"].value_counts().items() if v in VERDICTS) or "none"
        for name, (_, title) in TIMINGS.items()
    }
    only = {side: m.loc[m["_merge"] == f"{which}_only"] for side, which in (("A", "left"), ("B", "right"))}
    return rp.render(
        "compare.md.j2",
        a=paths[0],
        b=paths[1],
        records={"A": int(m["record_a"].notna().sum()), "B": int(m["record_b"].notna().sum())},
        both=int((m["_merge"] == "both").sum()),
        counts=counts,
        differs=env[env["differs"]].drop(columns="differs"),
        same=", ".join(f"{r.field} {r.A}" for r in env[~env["differs"]].itertuples()),
        tables=tables(m),
        only={side: (t["kv_mode"].astype(str) + " " + t["label"]).tolist() for side, t in only.items()},
        fail_above=fail_above,
        failing=failures(m, fail_above) if fail_above is not None else [],
    )


def figure(m: pd.DataFrame, paths: tuple[Path, Path]):
    """B/A per cell, a panel per kv mode (columns) and timing (rows): a point per cell in its verdict's
    colour, whiskers to the extreme ratios the two min-max ranges allow, a line at 1; a cell with no
    ratio (failed on a side, or in one run only) is a marker at 1 saying why. None: no ratio at all."""
    import seaborn as sns

    from kvbench.analysis import facets as fc

    long = pd.concat(
        [
            m.assign(
                timing=title,
                ratio=m[f"{name}_ratio"],
                lo=m[f"{name}_ratio_lo"],
                hi=m[f"{name}_ratio_hi"],
                verdict=m[f"{name}_verdict"],
            )
            for name, (_, title) in TIMINGS.items()
        ],
        ignore_index=True,
    )
    if long["ratio"].isna().all():
        return None
    order = list(dict.fromkeys(m["label"]))
    points = {"order": order, "hue_order": list(VERDICTS), "palette": VERDICTS, "dodge": False, "errorbar": None}
    points |= {"linestyle": "none", "markers": "o", "height": 3.0, "aspect": max(1.0, 0.35 * len(order))}
    g = sns.catplot(long, x="label", y="ratio", hue="verdict", col="kv_mode", row="timing", kind="point", **points)
    ratios = long[["lo", "ratio", "hi"]].stack()
    if ratios.max() / ratios[ratios > 0].min() > 4:  # ratios of ratios: a log axis reads 2x and 1/2x alike
        g.set(yscale="log")
    for (timing, mode), ax in g.axes_dict.items():
        d = long[(long["timing"] == timing) & (long["kv_mode"] == mode)]
        x, ok = d["label"].map(order.index), d["ratio"].notna()
        lo, hi = d["ratio"] - d["lo"], d["hi"] - d["ratio"]
        ax.errorbar(x[ok], d["ratio"][ok], yerr=[lo[ok], hi[ok]], fmt="none", ecolor="0.2")
        for xi, row in zip(x[~ok], d[~ok].itertuples()):
            status = row.status_a if row.status_a not in ("ok", None) and pd.notna(row.status_a) else row.status_b
            fc.mark(ax, xi, 1.0, status if isinstance(status, str) else "missing", row.verdict)
        ax.axhline(1.0, color="0.3", lw=1, ls="--")
        ax.tick_params(axis="x", labelrotation=90)
        ax.set_title(f"{timing}, kv_mode = {mode}")
    g.set_axis_labels("cell", "B / A  (below 1: B faster)")
    g.figure.suptitle(f"B = {paths[1]} against A = {paths[0]}", y=1.03)
    return g.figure


def write(m: pd.DataFrame, text: str, out: Path, paths: tuple[Path, Path]) -> list[Path]:
    """compare.md, compare.csv (every joined cell, exact numbers) and the figure (PNG + SVG) into out."""
    import matplotlib
    import matplotlib.pyplot as plt
    import seaborn as sns

    from kvbench.analysis import aggregate as agg
    from kvbench.analysis import facets as fc

    out.mkdir(parents=True, exist_ok=True)
    csv = m.rename(columns={"_merge": "in"})
    csv["in"] = csv["in"].map({"both": "both", "left_only": "A", "right_only": "B"})
    written = {"compare.md": text.encode(), "compare.csv": csv.to_csv(**agg.CSV_OPTS).encode()}
    with sns.axes_style("whitegrid"), sns.plotting_context("notebook", font_scale=0.85), matplotlib.rc_context(fc.RC):
        fig = figure(m, paths)
        for fmt in ("png", "svg") if fig is not None else ():
            buf = io.BytesIO()
            fig.savefig(buf, format=fmt, metadata=fc.SAVE_METADATA[fmt], bbox_inches="tight")
            written[f"compare.{fmt}"] = buf.getvalue()
        if fig is not None:
            plt.close(fig)
    for name, data in written.items():
        kvrecord.write_atomic_bytes(out / name, data)
    return [out / n for n in written]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvbench compare", description=__doc__.split("\n\n")[0])
    parser.add_argument("a", type=Path, help="the baseline: results/<sweep>, a bundle.zip or a published folder")
    parser.add_argument("b", type=Path, help="the run compared with it (B/A below 1: B is faster)")
    parser.add_argument("--out", type=Path, help="folder for compare.md, .csv, .png, .svg (default: print the report)")
    parser.add_argument(
        "--fail-above", type=float, metavar="RATIO", help="exit 1 when a cell is slower than RATIO x A beyond the noise"
    )
    args = parser.parse_args(argv)
    paths = (args.a, args.b)
    try:
        if args.fail_above is not None and not args.fail_above > 0:
            raise CompareError(f"--fail-above: {args.fail_above:g} is not a ratio above 0 (e.g. 1.10)")
        frames = [load(p) for p in paths]
        m = joined(*frames, paths)
        if not (m["_merge"] == "both").any():
            raise CompareError(f"{args.b}: no cell with the same settings as in {args.a}: nothing to compare")
        text = markdown(m, environments(*frames), paths, args.fail_above)
        if args.out is not None:
            write(m, text, args.out, paths)
    except kvrecord.RecordError as exc:
        print("\n".join(f"compare: refused: {line}" for line in str(exc).splitlines()), file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. --out not writable: the path and what the system said
        print(f"compare: error: {kvrecord.os_error_line(exc)}", file=sys.stderr)
        return 2
    except (CompareError, ValueError) as exc:
        print(f"compare: error: {exc}", file=sys.stderr)
        return 2
    if args.out is None:
        print(text, end="")
    else:
        print(f"compare: {int((m['_merge'] == 'both').sum())} cells -> {args.out}", file=sys.stderr)
    failing = failures(m, args.fail_above) if args.fail_above is not None else []
    for line in failing:
        print(f"compare: slower: {line}", file=sys.stderr)
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
