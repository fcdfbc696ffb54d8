"""speed_table: each cached mode beside static of the same shape, its ratio, and the break-even context (the
shortest from which it stays at or below static), drawn as kv_speed; left out where nothing compares."""

from __future__ import annotations

import pytest
from fixtures import Sweep, grid_records, make_record

from kvbench.analysis import aggregate as agg
from kvbench.analysis import frame as fr
from kvbench.analysis import speed_figures as sf
from kvbench.analysis import speed_table as st
from kvbench.analysis.facets import Skip

# decode ms/token by prompt: int8 loses at the shortest prompt, pays from the middle one on
DECODE = {"static": {64: 10.0, 256: 12.0, 1024: 20.0}, "static-int8": {64: 11.0, 256: 11.5, 1024: 15.0}}


def speed_records() -> list[dict]:
    recs = []
    for mode, by_prompt in DECODE.items():
        for prompt, ms in by_prompt.items():
            rec = make_record(mode, 4, prompt, new_tokens=8, model="gpt2")
            rec["latency"]["decode_ms_per_token"].update(median=ms, min=0.98 * ms, max=1.02 * ms)
            recs.append(rec)
    return recs


def frame(tmp_path, records):
    s = Sweep(tmp_path, records)
    agg.aggregate(s.paths, s.tables)
    return fr.read_cells(s.tables / "cells.csv")


def test_each_mode_beside_static_with_its_ratio_and_break_even(tmp_path) -> None:
    t = st.speed_table(frame(tmp_path, speed_records()))
    assert list(t["kv_mode"]) == ["static-int8"] * 3 and list(t["context"]) == [68, 260, 1028]
    assert list(t["ratio"].round(4)) == [1.1, round(11.5 / 12, 4), 0.75]
    assert st.break_even(t) == 260
    (line,) = st.claims(t)
    assert "`static-int8` decodes at or below static from a context of 260" in line and "1.10x at 68" in line
    row = [c.strip() for c in st.markdown(t).splitlines()[-1].strip("|").split("|")]
    assert row == ["gpt2", "eager", "4", "static-int8", "1.10", "0.96", "0.75"]
    fig = sf.speed_figure(t)
    ratio_lines = [ln for ln in fig.axes[1].get_lines() if ln.get_label() == "static-int8"]
    assert list(ratio_lines[0].get_ydata().round(4)) == list(t["ratio"].round(4))


def test_a_mode_that_never_pays_says_so(tmp_path) -> None:
    recs = speed_records()
    for r in recs:
        if r["cell"]["kv_mode"] == "static-int8":
            r["latency"]["decode_ms_per_token"]["median"] = 30.0
    (line,) = st.claims(st.speed_table(frame(tmp_path, recs)))
    assert "above static at every context up to 1028" in line


def test_a_mode_below_static_only_at_shorter_contexts_does_not_break_even(tmp_path) -> None:
    recs = speed_records()
    for r in recs:
        if r["cell"]["kv_mode"] == "static-int8" and r["cell"]["prompt_len"] == max(
            x["cell"]["prompt_len"] for x in recs
        ):
            r["latency"]["decode_ms_per_token"]["median"] = 60.0
    t = st.speed_table(frame(tmp_path, recs))
    assert st.break_even(t) is None and (t["ratio"] < 1).any()
    (line,) = st.claims(t)
    assert "above static at the longest context, 1028, at or below it only at shorter ones" in line


def test_left_out_without_static_at_two_lengths(tmp_path) -> None:
    with pytest.raises(Skip, match="two or more prompt lengths"):
        sf.FIGURES["kv_speed"](frame(tmp_path, grid_records(("static",))))
    assert st.explained(frame(tmp_path / "b", grid_records(("none", "static")))) is None
