"""Figures a visitor can read, checked on every figure the registry draws: no two hue levels (a kv mode, a
variant of one such as paged-16 beside paged-64, a batch) share a colour; every line's colour and line style has
its legend entry; lines that coincide (concat exactly on static) both show; and a panel whose points all sit at one
x shows that value as its one tick, not an axis of decimals around it."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator

import matplotlib
import matplotlib.pyplot as plt
import pytest
import seaborn as sns
from fixtures import Sweep, axis_records, grid_records, peers_records
from matplotlib.collections import PathCollection
from matplotlib.colors import to_hex, to_rgb
from test_alloc_table import frame as alloc_frame
from test_approx_price import frame as approx_frame
from test_speed_table import speed_records

from kvbench.analysis import aggregate as agg
from kvbench.analysis import figures as fig
from kvbench.analysis import frame as fr
from kvbench.analysis.alloc_figures import FIGURES as ALLOC
from kvbench.analysis.approx_figures import FIGURES as APPROX
from kvbench.analysis.facets import FAILED

FAILED_COLOURS = {to_hex(c) for c, _ in FAILED.values()}
pytestmark = pytest.mark.slow  # every figure of the registry drawn from five sweeps' tables (25 s)


def kv_alloc_cpu():
    """The kv-alloc-cpu sweep's shape: a batch of one only rectangular and unshared (nothing to spread or share),
    so the spread-0.5 panel of kv_alloc_decode has a single batch; paged at blocks of 16 and 64."""
    df = alloc_frame()
    return df[(df["cell.batch"] > 1) | (df["cell.prompt_spread"].isna() & df["cell.shared_prefix"].isna())]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[tuple[str, str], matplotlib.figure.Figure]]:
    """Every figure of the registry, each drawn from every table that has something for it."""
    cases = []
    sweeps = [("grid", grid_records()), ("axis", axis_records()), ("peers", peers_records())]
    sweeps.append(("speed", speed_records()))
    for name, records in sweeps:
        s = Sweep(tmp_path_factory.mktemp(name), records)
        agg.aggregate(s.paths, s.tables)
        steps = fr.read_table(s.tables / "per_step.csv")
        cases.append((name, fr.read_cells(s.tables / "cells.csv"), steps, fig.FIGURE_STEMS))
    cases.append(("kv-alloc-cpu", kv_alloc_cpu(), None, tuple(ALLOC)))
    cases.append(("approx", approx_frame(), None, tuple(APPROX)))
    one_length = approx_frame()
    cases.append(("approx, one length", one_length[one_length["cell.new_tokens"] == 32], None, tuple(APPROX)))
    out = {}
    with sns.axes_style("whitegrid"), matplotlib.rc_context(fig.RC | {"figure.max_open_warning": 0}):
        for name, df, steps, stems in cases:
            for stem in stems:
                try:
                    out[name, stem] = fig.draw(stem, df, steps)
                except fig.Skip:
                    continue
                out[name, stem].canvas.draw()  # tick labels are placed at a draw
    yield out
    for figure in out.values():
        plt.close(figure)


def test_every_figure_of_the_registry_is_checked(drawn) -> None:
    assert {stem for _, stem in drawn} == set(fig.FIGURE_STEMS)


def neutral(colour) -> bool:  # grey, black or white: a style key's or a failed status's colour, not a hue level
    rgb = to_rgb(colour)
    return max(rgb) - min(rgb) < 0.02


def colour_of(artist) -> str:
    if isinstance(artist, matplotlib.lines.Line2D):
        return to_hex(artist.get_color())
    colours = artist.get_facecolor()
    return to_hex(colours[0] if isinstance(artist, matplotlib.collections.Collection) else colours)


def entries(figure) -> list[tuple[str, object]]:
    """(label, handle) of every legend of the figure: the grid's, and each panel's."""
    legends = [*figure.legends, *(ax.get_legend() for ax in figure.axes if ax.get_legend())]
    return [(t.get_text(), h) for lg in legends for t, h in zip(lg.get_texts(), lg.legend_handles)]


def is_status(handle) -> bool:  # the failed-cell marker's entry (an X), in its status's colour
    return isinstance(handle, matplotlib.lines.Line2D) and handle.get_marker() == "X"


def data_lines(ax) -> list[matplotlib.lines.Line2D]:
    """The lines drawn in data coordinates (not a reference line across the panel)."""
    return [ln for ln in ax.get_lines() if ln.get_transform() is ax.transData and len(ln.get_xdata())]


def hue_levels(figure) -> dict[str, set[str]]:
    """Colour -> the labels drawn in it: the legends' coloured entries and the panels' labelled artists (a figure
    that names its points beside them instead of in a legend)."""
    found = defaultdict(set)
    for label, handle in entries(figure):
        if not is_status(handle) and not neutral(colour_of(handle)):
            found[colour_of(handle)].add(label)
    for ax in figure.axes:
        for artist in [*ax.get_lines(), *ax.collections, *ax.patches]:
            if not artist.get_label().startswith("_") and not neutral(colour_of(artist)):
                found[colour_of(artist)].add(artist.get_label())
    return found


def test_no_two_hue_levels_of_a_figure_share_a_colour(drawn) -> None:
    shared = {
        key: {c: sorted(labels) for c, labels in hue_levels(figure).items() if len(labels) > 1}
        for key, figure in drawn.items()
    }
    assert {key: s for key, s in shared.items() if s} == {}


def test_every_line_has_its_colour_and_its_style_in_the_legend(drawn) -> None:
    """A dotted `used` line with no dotted entry, or a line in a colour no entry has, cannot be read."""
    unexplained = {}
    for key, figure in drawn.items():
        legend = [h for _, h in entries(figure) if isinstance(h, matplotlib.lines.Line2D)]
        if not legend:  # no line in any legend: a heatmap, its colour bar its key
            continue
        styles = {h.get_linestyle() for h in legend}
        colours = {colour_of(h) for h in legend}
        missing = {
            (colour_of(ln), ln.get_linestyle())
            for ax in figure.axes
            for ln in data_lines(ax)
            if ln.get_linestyle() != "None"  # markers alone (an error bar's caps)
            and (ln.get_linestyle() not in styles or not neutral(colour_of(ln)) and colour_of(ln) not in colours)
        }
        if missing:
            unexplained[key] = sorted(missing)
    assert unexplained == {}


def test_lines_that_coincide_both_show(drawn) -> None:
    """Lines through the same points: each its own marker or line style, the one drawn later narrower with smaller
    markers, so the one beneath shows around it."""
    hidden = []
    for key, figure in drawn.items():
        for ax in figure.axes:
            same = defaultdict(list)
            for order, ln in enumerate(data_lines(ax)):
                xy = (tuple(map(float, ln.get_xdata())), tuple(map(float, ln.get_ydata())))
                same[xy].append((ln.get_zorder(), order, ln))
            for group in same.values():
                group = [ln for *_, ln in sorted(group, key=lambda z: z[:2])]  # beneath first
                for below, above in zip(group, group[1:]):
                    looks = {(ln.get_marker(), ln.get_linestyle()) for ln in (below, above)}
                    smaller = (
                        above.get_linewidth() < below.get_linewidth()
                        and above.get_markersize() < below.get_markersize()
                    )
                    apart = len(looks) == 2 and smaller
                    if not apart:
                        hidden.append((*key, ax.get_title(), below.get_label(), above.get_label()))
    assert hidden == []


def x_values(ax) -> set[float]:
    """Where the panel's points sit along x: its lines and its scatters in data coordinates (not a failed cell's
    marker on a heatmap's cell)."""
    xs = {float(x) for ln in data_lines(ax) for x in ln.get_xdata()}
    for coll in ax.collections:
        marker = len(coll.get_facecolor()) and to_hex(coll.get_facecolor()[0]) in FAILED_COLOURS
        if isinstance(coll, PathCollection) and coll.get_offset_transform() is ax.transData and not marker:
            xs |= {float(x) for x, _ in coll.get_offsets()}
    return xs


def visible_x_ticks(ax) -> list[tuple[float, str]]:
    lo, hi = sorted(ax.get_xlim())
    return [(float(t.get_position()[0]), t.get_text()) for t in ax.get_xticklabels() if lo <= t.get_position()[0] <= hi]


def test_a_panel_with_one_x_value_shows_that_value_as_its_one_tick(drawn) -> None:
    single, decimals = [], []
    for key, figure in drawn.items():
        for ax in figure.axes:
            xs = x_values(ax)
            if len(xs) != 1:
                continue
            (x,) = xs
            single.append((*key, ax.get_title()))
            ticks = visible_x_ticks(ax)
            # its value a tick (beside the others of an axis the panel shares), no decimals between integers
            if x not in [t for t, _ in ticks] or x.is_integer() and any("." in text for _, text in ticks):
                decimals.append((*key, ax.get_title(), ticks))
    assert ("kv-alloc-cpu", "kv_alloc_decode", "prompt spread 0.5") in single  # one batch: 8
    assert ("approx, one length", "kv_memory_length", "") in single
    assert decimals == []
    labels = {ax.get_title(): visible_x_ticks(ax) for ax in drawn["kv-alloc-cpu", "kv_alloc_decode"].axes}
    assert labels["prompt spread 0.5"] == [(8.0, "8")]
    assert labels["prompt spread 0"] == [(1.0, "1"), (8.0, "8")]  # a tick at each batch, no decimals between
