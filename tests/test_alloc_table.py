"""The allocation table and its sentences, from a frame of records: what paging saves, what the gather
costs, the prefill a shared prefix saves, where static is still the better choice."""

import pandas as pd
import pytest

from kvbench.analysis.alloc_table import NoPaged, alloc_table, claims, explained


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
                                "latency.decode_ms_per_token.min": 9.0,
                                "latency.decode_ms_per_token.max": 13.5 if batch == 8 else 9.9,
                                "latency.decode_ms_per_token.n": 2 if blocks != 64 else 1,
                                "latency.prefill_ms.median": 50.0 if (mode == "paged" and prefix) else 80.0,
                                "latency.prefill_ms_saved_vs_static": 30.0 if (mode == "paged" and prefix) else None,
                                "latency.prefill_ms_paged_same_batch.median": 50.0
                                if (mode == "paged" and prefix)
                                else None,
                                "latency.prefill_ms_static_same_batch.median": 80.0
                                if (mode == "paged" and prefix)
                                else None,
                                "check.matches_reference": True,
                            }
                        )
    return pd.DataFrame(rows)


def test_no_paged_cell_nothing_to_compare():
    with pytest.raises(NoPaged, match="no paged cell"):
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
    assert "waste 5% vs 25%" in ragged and "+2.0 ms/token for reading the blocks" in ragged
    assert "prefill 50.0 ms vs static's 80.0 on the same batch in the same cell (+30.0 ms saved" in ragged
    plain = next(x for x in lines if "batch 8, spread 0, shared prefix 0: `paged-16`" in x)
    assert "static wastes little here" in plain


def test_the_section_says_what_paging_saves_costs_and_when_static_wins():
    part = explained(frame())
    assert part["saves"][0] == (
        "gpt2 fp32 batch 8, spread 0.5, shared prefix 0: static reserves 0.01 MiB for 0.01 MiB of real tokens "
        "(waste 25%); `paged-16` reserves 0.01 MiB (waste 5%), 0.00 MiB less (21% of static's reservation)."
    )
    assert part["saves"][-1] == (
        "gpt2 fp32 batch 8, waste as the spread grows (0 → 0.5): concat 0% → 25%; paged-16 5% → 5%; "
        "paged-64 5% → 5%; static 0% → 25%."
    )
    assert part["gather"][0].startswith("`paged-16`: +2.00 ms/token against static (median over 8 grid points")
    assert "1.20× static's decode time; slower at 8 of 8 points" in part["gather"][0]
    assert part["gather"][-1].startswith("How far one cell's own timed iterations differ (decode ms/token, slowest")
    assert (
        "median 1.30×, up to 1.50× over 24 cells; a gap between caches within that is not resolved"
        in part["gather"][-1]
    )
    assert len(part["prefill"]) == 2 * 2 * 2 and "+30.0 ms (+38%) saved" in part["prefill"][0]
    static = part["static"]
    assert (len(static["better"]), len(static["trade"]), static["paged_faster"]) == (4, 4, 0)
    assert static["better"][0] == "batch 1, spread 0, shared prefix 0 (static wastes 0%, decodes 2.00 ms/token faster)"
    assert list(part["waste"].columns)[-4:] == [
        "spread 0, prefix 0",
        "spread 0, prefix 16",
        "spread 0.5, prefix 0",
        "spread 0.5, prefix 16",
    ]
    assert part["exact"] == "32 of 32"


def test_a_sweep_without_paged_has_no_section():
    assert explained(frame(("static", "concat"))) is None
