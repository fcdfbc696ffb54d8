"""What every figure shares: one colour per kv mode, none of them the grey of an unknown mode."""

from kvbench.analysis import facets
from kvbench.core.presets import KV_MODES


def test_every_kv_mode_has_its_own_colour_and_none_is_grey():
    colours = [facets.color(mode) for mode in KV_MODES]
    assert len(set(colours)) == len(KV_MODES)
    assert all(len(set(c)) > 1 for c in colours)  # a grey has three equal channels
    assert facets.color("no-such-mode") == "0.4"
