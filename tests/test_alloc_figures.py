"""The allocation figures, from a frame of records (the table itself: tests/test_alloc_table.py)."""

import io

import pytest
from test_alloc_table import frame

from kvbench.analysis.alloc_figures import FIGURES, alloc_table, bytes_figure, decode_figure, main
from kvbench.analysis.facets import SAVE_METADATA, Skip


def test_both_figures_draw():
    t = alloc_table(frame())
    for draw in (bytes_figure, decode_figure):
        fig = draw(t)
        assert fig.axes and all(ax.lines for ax in fig.axes)


def test_each_cache_has_its_legend_entry_and_the_line_styles_theirs():
    fig = bytes_figure(alloc_table(frame()))
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == [
        "static",
        "concat",
        "paged-16",
        "paged-64",
        "solid: reserved",
        "dotted: used (by the tokens held)",
    ]


def test_both_figures_are_the_same_bytes_drawn_twice():
    t = alloc_table(frame())
    for draw in (bytes_figure, decode_figure):
        pngs = []
        for _ in range(2):
            buf = io.BytesIO()
            draw(t).savefig(buf, format="png", metadata=SAVE_METADATA["png"])
            pngs.append(buf.getvalue())
        assert pngs[0] == pngs[1]


def test_no_paged_cell_is_a_skip_for_kvbench_figures():
    with pytest.raises(Skip, match="no paged cell"):
        FIGURES["kv_alloc_bytes"](frame(("static", "concat")))


def test_main_ends_in_one_line_through_the_analysis_command(tmp_path, capsys):
    (tmp_path / "records").mkdir()
    assert main([str(tmp_path / "records"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("alloc_figures: error: ")
