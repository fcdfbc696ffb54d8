"""kvbench compare: two synthetic runs with known ratios, as folders, a bundle and a published folder."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import pytest
from fixtures import Sweep, by_coords, grid_records, write_records

from kvbench.analysis import bundle as bnd
from kvbench.analysis import compare as cmp
from kvbench.analysis import publish as pub

# B's decode time per kv mode as a multiple of A's. The factory's ranges are median x [0.95, 1.1]:
# 1.5x and 0.5x leave them apart (slower, faster), 1.05x overlaps them (same, though the median grew).
SCALE = {"none": 0.5, "concat": 1.05, "static": 1.5}
DROPPED = ("static", 2, 16)  # a cell B did not run
TORCH_B = "2.14.0"


def scaled(records: list[dict], scale: dict[str, float]) -> list[dict]:
    out = copy.deepcopy(records)
    for r in out:
        r["environment"]["torch"] = TORCH_B
        r["cell"].update(seed=7, iters=5, device="cuda:1")  # where and how long it ran: still the same cell
        if r["status"] == "ok":
            d = r["latency"]["decode_ms_per_token"]
            d.update({k: v * scale[r["cell"]["kv_mode"]] for k, v in d.items() if k != "n"})
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Sweep, Path]:
    """A: the factory's grid as a sweep folder; B: the same grid scaled by SCALE, one cell dropped, another torch."""
    records = grid_records()
    for r in records:  # the spread a record carries: 2 % of the median over 3 timed iterations
        for s in (r["latency"] or {}).values():
            if isinstance(s, dict):
                s.update(std=0.02 * s["median"], n=3)
    a = Sweep(tmp_path_factory.mktemp("a"), records)
    b_records = [r for k, r in by_coords(scaled(a.records, SCALE)).items() if k != DROPPED]
    b = tmp_path_factory.mktemp("b") / "results" / "tiny"
    write_records(b, b_records)
    return a, b


@pytest.fixture(scope="module")
def joined(runs) -> pd.DataFrame:
    a, b = runs
    return cmp.joined(cmp.load(a.dir), cmp.load(b), (a.dir, b))


def row(m: pd.DataFrame, mode: str, batch: int, prompt: int) -> pd.Series:
    hit = m[(m["kv_mode"] == mode) & (m["batch"] == str(batch)) & (m["prompt_len"] == str(prompt))]
    assert len(hit) == 1
    return hit.iloc[0]


def test_verdicts_follow_the_ranges_and_ratios_are_exact(joined: pd.DataFrame) -> None:
    for (mode, batch, prompt), verdict in {
        ("static", 1, 8): "slower",
        ("concat", 1, 16): "same",
        ("none", 2, 16): "faster",
    }.items():
        r = row(joined, mode, batch, prompt)
        assert r["decode_verdict"] == verdict
        assert r["decode_ratio"] == pytest.approx(SCALE[mode], rel=1e-12)
        assert r["decode_ratio_cv"] == pytest.approx(0.02 * 2**0.5)
        assert r["prefill_verdict"] == "same" and r["prefill_ratio"] == 1.0  # B's prefill untouched
    # a failed cell gets no verdict but says which side failed
    assert row(joined, "concat", 2, 16)["decode_verdict"] == "A oom, B oom"


def test_missing_cell_listed_and_torch_named(runs, joined: pd.DataFrame) -> None:
    a, b = runs
    assert row(joined, *DROPPED)["_merge"] == "left_only"
    assert (joined["_merge"] == "right_only").sum() == 0  # another seed, iters and device join all the same
    env = cmp.environments(cmp.load(a.dir), cmp.load(b))
    assert env.loc[env["differs"], "field"].tolist() == ["torch"]
    text = cmp.markdown(joined, env, (a.dir, b), None)
    assert "only in A: static b2 p16 n5" in text
    assert f"| torch   | 2.13.0 | {TORCH_B} |" in text
    # the spreads: each side's std relative to its median and n, both combined beside B/A (2 % each: 2.8 %)
    decode = cmp.tables(joined)["Decode ms/token"].set_index(["kv_mode", "cell"])
    assert decode.loc[("static", "b1 p8 n5")].tolist() == [
        "0.61 ±2 % (n 3)",
        "0.916 ±2 % (n 3)",
        "1.50× ±3 %",
        "**slower**",
    ]
    assert "## Decode ms/token" in text and "| 0.916 ±2 % (n 3) | 1.50× ±3 % | **slower**" in text


def test_fail_above_exit_code(runs, capsys: pytest.CaptureFixture) -> None:
    a, b = runs
    assert cmp.main([str(a.dir), str(b), "--fail-above", "1.10"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"compare: slower: static {c}: decode 1.500x A (above 1.1x)" for c in ("b1 p8 n5", "b1 p16 n5", "b2 p8 n5")
    ]
    assert cmp.main([str(a.dir), str(b), "--fail-above", "1.6"]) == 0  # 1.5x is within 1.6x
    assert cmp.main([str(a.dir), str(b)]) == 0  # no threshold: a report, never a failure


def test_a_cell_that_stopped_finishing_fails(runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, _ = runs
    b = copy.deepcopy(a.records)
    oom = by_coords(b)[("static", 1, 8)]
    oom.update(status="oom", error="CUDA out of memory", latency=None, analytic=None, check=None, energy=None)
    write_records(tmp_path / "b", b)
    assert cmp.main([str(a.dir), str(tmp_path / "b"), "--fail-above", "1.10"]) == 1
    assert capsys.readouterr().err.splitlines()[-1] == "compare: slower: static b1 p8 n5: A ok, B oom"


def test_bundle_and_published_folder_compare_like_the_folder(runs, joined: pd.DataFrame, tmp_path: Path) -> None:
    a, b = runs
    zipped = tmp_path / "bundle.zip"
    bnd.build_bundle(a.dir, zipped, None, [])
    published, _ = pub.publish(zipped, tmp_path / "published")
    for source in (zipped, published):
        m = cmp.joined(cmp.load(source), cmp.load(b), (source, b))
        cols = ["label", "kv_mode", "record_a", "decode_ratio", "decode_verdict", "prefill_ratio", "peak_ratio"]
        pd.testing.assert_frame_equal(m[cols], joined[cols])


def test_out_writes_report_table_and_figure(runs, tmp_path: Path) -> None:
    a, b = runs
    assert cmp.main([str(a.dir), str(b), "--out", str(tmp_path)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"compare.{x}" for x in ("csv", "md", "png", "svg")]
    t = pd.read_csv(tmp_path / "compare.csv")
    static = t[(t["kv_mode"] == "static") & (t["in"] == "both")]
    assert (static["decode.median_b"] / static["decode.median_a"] == static["decode_ratio"]).all()
    assert t.loc[t["in"] == "A", "record_a"].tolist() == ["gpt2-tiny/fp32/static/b2-p16-n5-sdpa.json"]


def test_bad_input_is_one_line_naming_the_path(runs, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    a, _ = runs
    missing = tmp_path / "nowhere"
    assert cmp.main([str(a.dir), str(missing)]) == 2
    assert capsys.readouterr().err == f"compare: error: {missing}: no such result folder or bundle\n"
    (tmp_path / "empty").mkdir()
    assert cmp.main([str(tmp_path / "empty"), str(a.dir)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"compare: error: {tmp_path / 'empty'}: no cell records")
    other = copy.deepcopy(a.records)
    for r in other:
        r["cell"]["dtype"] = "bf16"
    write_records(tmp_path / "other", other)
    assert cmp.main([str(a.dir), str(tmp_path / "other")]) == 2
    assert "nothing to compare" in capsys.readouterr().err
    (tmp_path / "a-file").write_text("")  # --out where a folder cannot be made
    assert cmp.main([str(a.dir), str(a.dir), "--out", str(tmp_path / "a-file" / "out")]) == 2
    err = capsys.readouterr().err  # which part of the path is the file, too
    blocker = tmp_path / "a-file"
    assert err == f"compare: error: {blocker / 'out'}: Not a directory ({blocker} is a file, not a folder)\n"
