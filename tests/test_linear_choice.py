"""The per-shape kernel choice: the faster of the two as measured, kept per host and checked before reuse."""

from __future__ import annotations

import json

import pytest

from kvbench.kernels import small_batch_linear as kernel
from kvbench.models import linear_choice


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    return tmp_path


def timings(table):
    calls = []

    def measure(n, k, rows):
        calls.append((n, k, rows))
        return table[(n, k)]

    return measure, calls


def test_the_faster_is_chosen_and_kept(cache, monkeypatch):
    measure, calls = timings({(64, 32): (1.0, 2.0), (32, 64): (3.0, 2.5)})
    monkeypatch.setattr(linear_choice, "measure", measure)
    chosen = linear_choice.choose([(64, 32), (32, 64), (64, 32)], rows=4)
    assert calls == [(32, 64, 4), (64, 32, 4)]  # each shape once
    assert chosen[(64, 32)].kernel == "small-batch" and chosen[(32, 64)].kernel == "onednn"
    assert chosen[(64, 32)].small_batch_ms == 1.0 and chosen[(32, 64)].onednn_ms == 2.5
    monkeypatch.setattr(linear_choice, "measure", lambda *a: pytest.fail("measured again"))
    assert linear_choice.choose([(64, 32), (32, 64)], rows=4) == chosen  # from the file
    record = linear_choice.as_record(chosen)
    assert {r["shape"] for r in record} == {"64x32", "32x64"} and all(r["rows"] == 4 for r in record)


def test_another_batch_is_measured_apart(cache, monkeypatch):
    measure, calls = timings({(64, 32): (1.0, 2.0)})
    monkeypatch.setattr(linear_choice, "measure", measure)
    linear_choice.choose([(64, 32)], rows=1)
    linear_choice.choose([(64, 32)], rows=8)
    assert calls == [(64, 32, 1), (64, 32, 8)]


@pytest.mark.parametrize("damage", ["not json", '{"64x32@2": {"small_batch_ms": -1.0, "onednn_ms": 2.0}}', "[1, 2]"])
def test_a_damaged_cache_is_measured_again(cache, monkeypatch, damage):
    path = linear_choice._cache_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(damage)
    measure, calls = timings({(64, 32): (1.0, 2.0)})
    monkeypatch.setattr(linear_choice, "measure", measure)
    assert linear_choice.choose([(64, 32)], rows=2)[(64, 32)].kernel == "small-batch"
    assert calls == [(64, 32, 2)]
    assert json.loads(path.read_text())["64x32@2"] == {"small_batch_ms": 1.0, "onednn_ms": 2.0}


@pytest.mark.skipif(not kernel.available(), reason="the kernel is not built for this machine")
def test_measure_times_both_kernels(monkeypatch):
    monkeypatch.setattr(linear_choice, "STREAM_BYTES", 1 << 20)
    small, onednn = linear_choice.measure(64, 48, 3)
    assert small > 0 and onednn > 0
