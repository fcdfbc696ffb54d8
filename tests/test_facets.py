"""What every figure shares: one colour per kv mode, none of them the grey of an unknown mode; a look per variant of a
mode; a tick at each value along x."""

from kvbench.analysis import facets
from kvbench.core.presets import KV_MODES


def test_every_kv_mode_has_its_own_colour_and_none_is_grey():
    colours = [facets.color(mode) for mode in KV_MODES]
    assert len(set(colours)) == len(KV_MODES)
    assert all(len(set(c)) > 1 for c in colours)  # a grey has three equal channels
    assert facets.color("no-such-mode") == "0.4"


def test_each_variant_of_a_mode_has_its_own_colour_and_marker_and_the_later_ones_are_drawn_narrower():
    looks = facets.styles({"static": "static", "concat": "concat", "paged-16": "paged", "paged-64": "paged"})
    assert looks["paged-16"]["color"] == facets.color("paged") != looks["paged-64"]["color"]
    assert len({str(look["color"]) for look in looks.values()}) == len({look["marker"] for look in looks.values()}) == 4
    widths = [look["linewidth"] for look in looks.values()]
    assert widths == sorted(widths, reverse=True) and len(set(widths)) == 4  # concat on static: a rim of static
    assert [look["zorder"] for look in looks.values()] == sorted(look["zorder"] for look in looks.values())


def test_a_single_x_value_is_the_one_tick_in_the_middle_of_its_panel():
    import matplotlib.pyplot as plt

    fig, (one, two) = plt.subplots(1, 2)
    one.plot([8], [10.0], marker="o")
    two.plot([1, 8], [10.0, 12.0], marker="o")
    facets.x_at(one, [8, 8])
    facets.x_at(two, [1, 8])
    fig.canvas.draw()
    assert [t.get_text() for t in one.get_xticklabels()] == ["8"] and one.get_xlim() == (7.0, 9.0)
    assert [t.get_text() for t in two.get_xticklabels()] == ["1", "8"]
    plt.close(fig)
