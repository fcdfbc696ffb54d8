"""Records before and after a refactor: eleven reference cells (every kv mode, both families, a ragged batch with a
shared prefix) measured by the code before the packages landed (commit 9156a69, tests/golden/records.json) and by
this code must agree on every field that is not a timing, the machine, or an allocator peak that depends on the
CPU's kernels. Floats within a tolerance that a different CPU's kernels stay inside; everything else exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from kvbench.cli import main

GOLDEN = json.loads((Path(__file__).parent / "golden" / "records.json").read_text())
VOLATILE_TOP = {"created_utc", "environment", "latency", "analytic"}
VOLATILE_MEMORY = {
    "rss_peak_bytes",
    "torch_peak_allocated_bytes",
    "prefill_peak_allocated_bytes",
    "decode_peak_allocated_bytes",
    "weights_bytes",
    "nvml_peak_used_bytes",
    # paged: how attention read the blocks, which depends on whether kvbench's C++ kernel is built on this machine
    # (kvbench/kernels/decode_attention.py); the golden records were made before it.
    "kv_attention_path",
}


# Which kernel multiplies each matrix is measured on the machine (kvbench/models/linear_choice.py).
VOLATILE_MODEL_INFO = {"weight_layout", "linear_kernels"}


def machine_free(rec: dict) -> dict:
    """Without what this machine's measured kernel choice decides (the golden records were made before it)."""
    if rec.get("model_info") is None:
        return rec
    return {**rec, "model_info": {k: v for k, v in rec["model_info"].items() if k not in VOLATILE_MODEL_INFO}}


def stable(rec: dict) -> dict:
    out = machine_free({k: v for k, v in rec.items() if k not in VOLATILE_TOP})
    out["memory"] = {k: v for k, v in rec["memory"].items() if k not in VOLATILE_MEMORY}
    return out


def differences(a, b, path: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        return [
            d
            for k in sorted(set(a) | set(b))
            for d in differences(a.get(k, "<absent>"), b.get(k, "<absent>"), f"{path}.{k}")
        ]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{path}[{i}]")]
    if isinstance(a, float) and isinstance(b, float) and not isinstance(a, bool):
        return [] if math.isclose(a, b, rel_tol=1e-3, abs_tol=1e-6) else [f"{path}: {a} != {b}"]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_differences_finds_a_changed_field():
    assert differences({"a": [1, 2.0]}, {"a": [1, 2.0000001]}) == []
    assert differences({"a": [1, 2.0], "b": "x"}, {"a": [1, 3.0], "b": "y"}) == [".a[1]: 2.0 != 3.0", ".b: 'x' != 'y'"]


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_a_reference_cell_records_what_it_recorded_before(name, tmp_path):
    out = tmp_path / f"{name}.json"
    argv = ["cell", *GOLDEN[name]["args"], "--warmup", "0", "--iters", "1", "--device", "cpu", "--threads", "1"]
    assert main([*argv, "--out", str(out)]) == 0
    golden = dict(machine_free(GOLDEN[name]["record"]))
    golden["memory"] = {k: v for k, v in golden["memory"].items() if k not in VOLATILE_MEMORY}
    assert differences(golden, stable(json.loads(out.read_text()))) == []
