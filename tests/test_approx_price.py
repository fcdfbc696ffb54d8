"""The price table and sentences of the approximate caches, from a frame of records."""

import pandas as pd
import pytest

from kvbench.analysis.approx_price import NoPrice, claims, formula_bytes, price_table
from kvbench.core.presets import kv_cache_bytes


def frame(modes=("static", "static-int4", "sliding")) -> pd.DataFrame:
    rows = []
    for n in (32, 96):
        for mode in modes:
            held = {"static": 4096 * (15 + n), "static-int4": 700 * (15 + n), "sliding": 4096 * 20}[mode]
            rows.append(
                {
                    "status": "ok",
                    "cell.engine": "kvbench",
                    "cell.model": "m",
                    "cell.dtype": "fp32",
                    "cell.batch": 1,
                    "cell.prompt_len": 16,
                    "cell.new_tokens": n,
                    "cell.kv_mode": mode,
                    "memory.kv_cache_bytes_measured": held,
                    "latency.decode_ms_per_token.median": 10.0,
                    "check.agreement_rate": 1.0 if mode == "static" else 0.9,
                    "check.kl_mean": 0.0 if mode == "static" else 0.01 * n,
                    "check.first_mismatch_step": None if mode == "static" else 7,
                    "check.reference_steps": n,
                }
            )
    return pd.DataFrame(rows)


def test_no_approximate_cache_no_price():
    with pytest.raises(NoPrice, match="no approximate kv mode"):
        price_table(frame(("static",)))


def test_the_table_counts_bytes_per_cached_position():
    t = price_table(frame())
    static = t[(t["kv_mode"] == "static") & (t["new_tokens"] == 96)].iloc[0]
    assert static["cached_tokens"] == 111 and static["kv_bytes_per_token"] == pytest.approx(4096 * 111 / 111)
    sliding = t[(t["kv_mode"] == "sliding")]["kv_bytes"]
    assert sliding.nunique() == 1  # flat however long


def test_claims_say_how_much_memory_for_how_much_error():
    lines = claims(price_table(frame()))
    assert len(lines) == 2
    assert (
        "`static-int4` holds" in lines[0] and "5.9x less" in lines[0] and "KiB" in lines[0] and "KL of 0.96" in lines[0]
    )
    assert "first disagreeing at step 7" in lines[0]


def test_the_formula_of_a_row_uses_the_cells_own_settings():
    row = pd.Series(
        {"n_layer": 2, "cell.batch": 1, "kv_heads": 2, "tokens": 40, "head_dim": 16, "elem_bytes": 4}
        | {"cell.kv_mode": "sliding", "cell.window": 6, "cell.sinks": 2, "cell.kv_group_size": None}
    )
    assert (
        formula_bytes(row) == kv_cache_bytes(2, 1, 2, 40, 16, 4, "sliding", window=6, sinks=2) == 2 * 2 * 2 * 8 * 16 * 4
    )
