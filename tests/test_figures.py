"""Figures: seaborn faceting from what the sweep varies, one failed marker, stable bytes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import matplotlib
import pandas as pd
import pytest
from fixtures import (
    BATCHES,
    OOM_CELL,
    PROMPTS,
    REPO,
    Sweep,
    axis_records,
    by_coords,
    engine_records,
    grid_records,
    threads_records,
)

from kvbench.analysis import aggregate as agg
from kvbench.analysis import figures as fig
from kvbench.analysis import frame as fr
from kvbench.core.presets import APPROX_KV_MODES

NEW_STEMS = ("speedup_vs_model", "speedup_vs_new_tokens", "kv_variants")
APPROX = ", ".join(APPROX_KV_MODES)
ALLOC_STEMS = ("kv_alloc_bytes", "kv_alloc_decode")  # drawn only where a sweep has a paged cell


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    s = Sweep(tmp_path_factory.mktemp("sweep"), grid_records())
    agg.aggregate(s.paths, s.tables)
    s.log = []
    s.rendered = fig.render(s.tables, s.figures, log=s.log.append)
    return s


@pytest.fixture(scope="module")
def axis_tables(tmp_path_factory: pytest.TempPathFactory) -> Sweep:
    """The model / new-tokens sweep aggregated, its figures not drawn (the tests that draw one need no more)."""
    s = Sweep(tmp_path_factory.mktemp("axes"), axis_records())
    agg.aggregate(s.paths, s.tables)
    return s


@pytest.fixture(scope="module")
def axis_sweep(axis_tables: Sweep) -> Sweep:
    s = axis_tables
    s.log = []
    s.rendered = fig.render(s.tables, s.figures, log=s.log.append)
    return s


def frame(s: Sweep) -> pd.DataFrame:
    return fr.read_cells(s.tables / "cells.csv")


# ---------------------------------------------------------------------------------- figures

ALL_STEMS = {
    "decode_ms_per_token",
    "peak_memory",
    "prefill_decode_split",
    "speedup_heatmap",
    "per_token_latency",
    "floor_fraction",
}


def png_text_keys(data: bytes) -> set[str]:
    """Keys of a PNG's tEXt/iTXt/zTXt chunks (where a 'Software' or date would hide)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    keys, pos = set(), 8
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind in (b"tEXt", b"iTXt", b"zTXt"):
            keys.add(data[pos + 8 : pos + 8 + length].split(b"\0")[0].decode())
        pos += 12 + length
    return keys


def test_figures_written_as_png_and_svg(sweep: Sweep) -> None:
    expected = {sweep.figures / f"{s}.{ext}" for s in ALL_STEMS for ext in ("png", "svg")}
    assert set(sweep.rendered) == expected
    for path in expected:
        data = path.read_bytes()
        assert len(data) > 5000, path
        if path.suffix == ".png":
            assert "Software" not in png_text_keys(data)
        else:
            assert b"<dc:date>" not in data and b"Matplotlib v" not in data


def rerender_elsewhere(tables: Path, out: Path, *only: str) -> None:
    """The figures drawn again by `kvbench.analysis.figures` in a fresh interpreter with another hash seed."""
    args = ["--only", *only] if only else []
    proc = subprocess.run(
        [sys.executable, "-m", "kvbench.analysis.figures", "--tables", str(tables), "--out", str(out), *args],
        cwd=REPO,
        env={"PYTHONHASHSEED": "4242", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.slow  # every figure of the grid drawn again in a fresh interpreter
def test_figures_are_byte_identical_across_renders(sweep: Sweep, tmp_path: Path) -> None:
    rerender_elsewhere(sweep.tables, tmp_path / "again")
    assert sorted(p.name for p in (tmp_path / "again").iterdir()) == sorted(p.name for p in sweep.rendered)
    for p in sweep.rendered:
        assert (tmp_path / "again" / p.name).read_bytes() == p.read_bytes(), p.name


def red_marks(ax: Any) -> list[tuple[float, float]]:
    """Offsets of the red (#d62728, oom) markers drawn on a panel."""
    found = []
    for coll in ax.collections:
        colors = coll.get_facecolor()
        if len(colors) and matplotlib.colors.to_hex(colors[0]) == "#d62728":
            found += [tuple(o) for o in coll.get_offsets()]
    return found


def test_oom_cell_is_marked_at_the_top_edge_not_dropped(sweep: Sweep) -> None:
    with matplotlib.rc_context(fig.RC):
        figure = fig.draw("decode_ms_per_token", frame(sweep))
    panels = {ax.get_title(): ax for ax in figure.axes}
    # x = the prompt length in data units, y = 0.95 of the panel's height (its top edge)
    assert red_marks(panels["kv_mode = concat"]) == [(OOM_CELL[2], pytest.approx(0.95))]
    assert red_marks(panels["kv_mode = static"]) == []
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[: len(BATCHES)] == [f"batch {b}" for b in BATCHES]
    assert sweep.log == [
        f"figures: {s} left out of this sweep: " + why
        for s, why in (
            ("speedup_vs_model", "one model only: nothing to compare along it"),
            ("speedup_vs_new_tokens", "one new tokens only: nothing to compare along it"),
            ("kv_variants", "no static-int8 cell and no n_kv_head set"),
            *((stem, "no paged cell with KV bytes reserved and used in this sweep") for stem in ALLOC_STEMS),
            *((stem, f"no approximate kv mode ({APPROX}) in this sweep") for stem in ("kv_pareto", "kv_memory_length")),
            ("engines_decode", "one engine: nothing to set side by side"),
            ("kv_speed", "no cached mode measured beside static at two or more prompt lengths"),
        )
    ]
    assert "out of memory (not measured)" in labels


@pytest.mark.slow  # five figures drawn
def test_figures_skip_what_has_no_data(tmp_path: Path) -> None:
    """A figure the sweep cannot draw is left out and its older copy removed (the rest render byte-identically
    elsewhere: test_figures_are_byte_identical_across_renders)."""
    s = Sweep(tmp_path / "a", grid_records(modes=("concat", "static")))  # no none: no speedup
    agg.aggregate(s.paths, s.tables)
    s.figures.mkdir(parents=True)
    (s.figures / "speedup_heatmap.png").write_bytes(b"stale from an older sweep")
    first = fig.render(s.tables, s.figures)
    assert {p.stem for p in first} == ALL_STEMS - {"speedup_heatmap"}
    assert not (s.figures / "speedup_heatmap.png").exists()


@pytest.mark.slow  # every figure of the model / new-tokens sweep drawn, the new ones again elsewhere
def test_new_figures_are_drawn_deterministic_and_rerender_byte_identical(axis_sweep: Sweep, tmp_path: Path) -> None:
    # one prompt length and one batch: the heatmap has nothing to compare and is left out, saying why
    assert axis_sweep.log == [
        "figures: speedup_heatmap left out of this sweep: one batch and one prompt length: "
        "see speedup_vs_model / speedup_vs_new_tokens",
        "figures: kv_alloc_bytes left out of this sweep: no paged cell with KV bytes reserved and used in this sweep",
        "figures: kv_alloc_decode left out of this sweep: no paged cell with KV bytes reserved and used in this sweep",
        # its int8 cells were recorded without the price, so the Pareto figure has no point to place
        "figures: kv_pareto left out of this sweep: no cached cell in this sweep carries both its counted "
        "KV bytes and its KL",
        "figures: engines_decode left out of this sweep: one engine: nothing to set side by side",
        "figures: kv_speed left out of this sweep: no cached mode measured beside static at two or more prompt lengths",
    ]
    expected = {axis_sweep.figures / f"{s}.{ext}" for s in NEW_STEMS for ext in ("png", "svg")}
    assert expected <= set(axis_sweep.rendered)
    out = tmp_path / "again"
    rerender_elsewhere(axis_sweep.tables, out, *NEW_STEMS)
    for p in expected:
        assert (out / p.name).read_bytes() == p.read_bytes(), p.name
    with pytest.raises(ValueError, match="unknown figure"):
        fig.render(axis_sweep.tables, out, only=["no_such_figure"])


def test_a_model_sweep_is_drawn_against_model_size_in_size_order(axis_tables: Sweep) -> None:
    df = frame(axis_tables)
    df = df[(df["cell.new_tokens"] == 20) & df["cell.n_kv_head"].isna()].iloc[::-1]  # order must not matter
    with matplotlib.rc_context(fig.RC):
        figure = fig.draw("decode_ms_per_token", df)
    ax = figure.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["gpt2\n124M params", "gpt2-medium\n355M params"]
    assert ax.get_xlabel() == "model (by parameter count)"


def test_a_threads_sweep_is_drawn_against_its_threads(tmp_path: Path) -> None:
    s = Sweep(tmp_path, threads_records())
    agg.aggregate(s.paths, s.tables)
    with matplotlib.rc_context(fig.RC):
        figure = fig.draw("decode_ms_per_token", frame(s))
    ax = figure.axes[0]
    assert ax.get_xlabel() == "CPU threads"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4"]
    # the floor's line, dotted, at the records' floor (the factory's 0.2 ms) at every count
    floors = [line for line in ax.get_lines() if line.get_linestyle() == ":"]
    assert [list(line.get_ydata()) for line in floors] == [[0.2, 0.2, 0.2]]
    assert "analytic floor (bytes / read bandwidth)" in [t.get_text() for t in figure.legends[0].get_texts()]


def test_speedup_vs_model_orders_models_by_size_and_marks_the_oom(axis_tables: Sweep) -> None:
    with matplotlib.rc_context(fig.RC):
        figure = fig.draw("speedup_vs_model", frame(axis_tables))
    bottom = [ax for ax in figure.axes if ax.get_xticklabels()]  # shared x: the bottom row carries the labels
    ticks = [t.get_text() for t in bottom[0].get_xticklabels()]
    assert ticks == ["gpt2\n124M params", "gpt2-medium\n355M params"]
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[0] == "whole generation (total time)\nn_kv_head=all, new_tokens=20"
    oom_panel = titles.index("whole generation (total time)\nn_kv_head=all, new_tokens=50")
    assert red_marks(figure.axes[oom_panel]) == [(1.0, pytest.approx(0.95))]  # gpt2-medium
    assert sum(len(red_marks(ax)) for ax in figure.axes) == 2  # total and per-token panels
    labels = [t.get_text() for t in figure.legends[0].get_texts()]
    assert labels[:3] == ["concat vs none", "static vs none", "static-int8 vs none"]
    assert "nanoGPT + KV Cache: T4 GPU (claimed)" in labels
    one = frame(axis_tables)
    with pytest.raises(fig.Skip, match="one model only"):
        fig.draw("speedup_vs_model", one[one["cell.model"] == "gpt2"])


def test_peak_memory_figure_plots_peak_beyond_weights_beside_the_formula(sweep: Sweep) -> None:
    df = frame(sweep)
    with matplotlib.rc_context(fig.RC):
        figure = fig.draw("peak_memory", df)
    panel = {ax.get_title(): ax for ax in figure.axes}["kv_mode = static"]
    solid = [ln for ln in panel.get_lines() if ln.get_linestyle() == "-" and len(ln.get_xdata()) == len(PROMPTS)]
    dashed = [ln for ln in panel.get_lines() if ln.get_linestyle() == "--"]
    recs = by_coords(sweep.records)
    beyond = {
        b: [
            max(
                recs[("static", b, p)]["memory"]["prefill_peak_allocated_bytes"],
                recs[("static", b, p)]["memory"]["decode_peak_allocated_bytes"],
            )
            - recs[("static", b, p)]["memory"]["weights_bytes"]
            for p in PROMPTS
        ]
        for b in BATCHES
    }
    assert [list(ln.get_ydata()) for ln in solid] == [pytest.approx([v / 2**20 for v in beyond[b]]) for b in BATCHES]
    assert [list(ln.get_ydata()) for ln in dashed] == [
        pytest.approx([recs[("static", b, p)]["memory"]["kv_cache_bytes_formula"] / 2**20 for p in PROMPTS])
        for b in BATCHES
    ]
    assert "cuda_allocator" in figure.axes[0].get_ylabel()


@pytest.mark.slow  # three figures drawn, then every figure rendered
def test_a_third_engine_gets_its_own_panels(tmp_path: Path) -> None:
    s = Sweep(tmp_path, engine_records())
    agg.aggregate(s.paths, s.tables)
    df = frame(s)
    with matplotlib.rc_context(fig.RC):
        speedup = fig.draw("speedup_vs_model", df)
        decode = fig.draw("decode_ms_per_token", df)
        memory = fig.draw("peak_memory", df)
    for figure in (speedup, decode, memory):
        titles = " ".join(ax.get_title() for ax in figure.axes)
        assert all(f"engine={e}" in titles for e in ("kvbench", "hf", "ct2")), titles
    # ct2 has no phase peaks: its peak beyond the weights comes from the process RSS, labelled so
    assert "process RSS" in memory.axes[0].get_ylabel()
    rendered = fig.render(s.tables, s.figures, log=lambda line: None)
    assert {p.stem for p in rendered} >= {"decode_ms_per_token", "peak_memory", "speedup_vs_model"}
