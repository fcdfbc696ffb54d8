"""engines_decode: the engine setups side by side along the batch, each its own line in both panels, ours first in
the legend, a failed cell marked, and left out of a sweep with one engine."""

from __future__ import annotations

import matplotlib.pyplot as plt
import pytest
from fixtures import Sweep, grid_records, peers_records

from kvbench.analysis import aggregate as agg
from kvbench.analysis import engine_figures as ef
from kvbench.analysis import frame as fr
from kvbench.analysis.facets import Skip


def frame(tmp_path, records):
    s = Sweep(tmp_path, records)
    agg.aggregate(s.paths, s.tables)
    return fr.read_cells(s.tables / "cells.csv")


def test_each_setup_is_one_line_in_each_panel_ours_first(tmp_path) -> None:
    df = frame(tmp_path, peers_records())
    assert set(ef.setup(df)) == {
        "kvbench static, compiled", "kvbench concat", "hf static, compiled", "llamacpp static", "ct2 concat"
    }  # fmt: skip
    figure = ef.engines_figure(df)
    panels = [ax for ax in figure.axes if ax.get_lines()]
    assert len(panels) == 2
    for ax in panels:
        lines = {ln.get_label(): ln for ln in ax.get_lines() if not ln.get_label().startswith("_")}
        assert set(lines) == set(ef.setup(df))
        assert list(lines["hf static, compiled"].get_xdata()) == [1.0, 2.0]  # batch 4 oom: no point
        assert list(lines["kvbench concat"].get_xdata()) == [1.0, 2.0, 4.0]
    legend = [t.get_text() for t in figure.legends[0].get_texts()]
    assert set(legend[:2]) == {"kvbench static, compiled", "kvbench concat"}  # ours, then the peers
    assert "out of memory (not measured)" in legend
    plt.close(figure)


def test_one_engine_is_left_out(tmp_path) -> None:
    with pytest.raises(Skip, match="one engine"):
        ef.engines_figure(frame(tmp_path, grid_records()))
