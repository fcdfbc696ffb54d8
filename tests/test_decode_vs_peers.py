"""benchmarks/decode_vs_peers.py's alternating rounds: the median round reported, every round kept beside it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "decode_vs_peers.py"


@pytest.fixture(scope="module")
def peers():
    spec = importlib.util.spec_from_file_location("decode_vs_peers", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(ms: float | None) -> dict:
    if ms is None:
        return {"status": "error", "error": "boom"}
    floor = {"floor_ms_per_token": 15.0, "decode_bytes_per_token": 5e8, "bandwidth_bytes_per_s": 3e10}
    return {
        "status": "ok",
        "tag": ms,
        "environment": {"device_name": "cpu"},
        "latency": {"decode_ms_per_token": {"median": ms, "min": ms, "max": ms}, "prefill_ms": {"median": 1.0}},
        "analytic": {**floor, "bandwidth_source": "a test"},
        "check": {"matches_reference": True},
    }


def test_the_median_round_is_reported_with_every_rounds_time(peers):
    chosen = peers.median_round([record(30.0), record(25.0), record(28.0)])
    assert chosen["tag"] == 28.0 and chosen["rounds_ms"] == [30.0, 25.0, 28.0]
    assert peers.median_round([record(30.0), record(25.0)])["tag"] == 25.0  # the lower middle of an even count
    assert peers.median_round([record(None), record(26.0)])["tag"] == 26.0  # a failed round is not a time
    assert peers.median_round([record(None)])["status"] == "error"
    assert "rounds_ms" not in peers.median_round([record(20.0)])  # one round: nothing to spread


def test_table_only_reads_the_rounds_back(peers, tmp_path, capsys):
    for r, ms in enumerate((31.0, 29.0, 30.0)):
        rec = record(ms)
        (tmp_path / f"p128-b1-llamacpp-static-r{r}.json").write_text(json.dumps(rec))
    assert peers.main(["--engines", "llamacpp", "--records", str(tmp_path), "--table-only", "--rounds", "3"]) == 0
    assert "rounds 31.0, 29.0, 30.0" in capsys.readouterr().out
