"""The allocation table, figures and sentences, from a frame of records."""

import pandas as pd
import pytest

from kvbench.analysis.alloc_figures import Skip, alloc_table, bytes_figure, claims, decode_figure


def frame(modes=("static", "concat", "paged")) -> pd.DataFrame:
    rows = []
    for batch in (1, 8):
        for spread in (None, 0.5):
            for prefix in (None, 16):
                for mode in modes:
                    for blocks in (16, 64) if mode == "paged" else (None,):
                        used = 1000 * batch * (0.75 if spread else 1.0)
                        reserved = {"static": 1000 * batch, "concat": 1000 * batch}.get(mode, used * 1.05)
                        rows.append(
                            {
                                "status": "ok",
                                "cell.model": "gpt2",
                                "cell.dtype": "fp32",
                                "cell.kv_mode": mode,
                                "cell.batch": batch,
                                "cell.prompt_len": 48,
                                "cell.prompt_spread": spread,
                                "cell.shared_prefix": prefix,
                                "cell.block_tokens": blocks,
                                "memory.kv_bytes_reserved": reserved,
                                "memory.kv_bytes_used": used,
                                "latency.decode_ms_per_token.median": 12.0 if mode == "paged" else 10.0,
                                "latency.prefill_ms.median": 50.0 if (mode == "paged" and prefix) else 80.0,
                                "check.matches_reference": True,
                            }
                        )
    return pd.DataFrame(rows)


def test_no_paged_cell_nothing_to_draw():
    with pytest.raises(Skip, match="no paged cell"):
        alloc_table(frame(("static", "concat")))


def test_the_table_has_each_block_size_and_the_waste():
    t = alloc_table(frame())
    assert set(t["label"]) == {"static", "concat", "paged-16", "paged-64"}
    ragged_static = t[(t["label"] == "static") & (t["prompt_spread"] == 0.5) & (t["batch"] == 8)]
    assert ragged_static["waste"].round(3).eq(0.25).all()
    assert t["prompt_spread"].notna().all() and t["shared_prefix"].notna().all()  # a rectangular batch: 0


def test_claims_say_what_paging_saves_and_costs():
    lines = claims(alloc_table(frame()))
    assert len(lines) == 2 * 2 * 2 * 2  # every grid point, both block sizes
    ragged = next(x for x in lines if "batch 8, spread 0.5, shared prefix 16: `paged-16`" in x)
    assert "waste 5% vs 25%" in ragged and "+2.0 ms/token with the block gather" in ragged
    assert "prefill 50 ms vs 80" in ragged
    plain = next(x for x in lines if "batch 8, spread 0, shared prefix 0: `paged-16`" in x)
    assert "static wastes little here" in plain


def test_both_figures_draw():
    t = alloc_table(frame())
    for draw in (bytes_figure, decode_figure):
        fig = draw(t)
        assert fig.axes and all(ax.lines for ax in fig.axes)
