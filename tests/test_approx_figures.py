"""The approximate caches' figures: a panel per length, and left out (Skip) where nothing is priced."""

import pytest
from test_approx_price import frame

from kvbench.analysis.approx_figures import FIGURES, length_figure, pareto_figure
from kvbench.analysis.approx_price import price_table
from kvbench.analysis.facets import Skip


def test_both_figures_draw_a_panel_per_length():
    t = price_table(frame())
    assert len(pareto_figure(t).axes) == 2 and len(length_figure(t).axes) == 2


def test_a_sweep_without_an_approximate_cache_leaves_them_out():
    for draw in FIGURES.values():
        with pytest.raises(Skip, match="no approximate kv mode"):
            draw(frame(("static",)))
