"""The decode floor: measured bandwidth and matmul rate, the byte/FLOP count, and the verdict."""

import pytest
import torch

from kvbench.core import env_vars
from kvbench.core.presets import kv_cache_bytes
from kvbench.measure import roofline
from kvbench.models.gpt2 import build_random, preset


def _fake(read: float, measured_at: float | None = None):
    import time

    return lambda d, t: {
        "read_bandwidth_bytes_per_s": read,
        "copy_bandwidth_bytes_per_s": read,
        "peak_flops_per_s": 1e9,  # low, yet plausible: a cached value outside roofline.PLAUSIBLE is measured again
        "measured_at": measured_at or time.time(),
    }


def test_probe_measures_read_bandwidth_and_keeps_the_best(tmp_path, monkeypatch):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(env_vars.PROBE_SINCE, raising=False)
    limits = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    # The floor divides by the read bandwidth: a CPU reads GB/s, not KB/s nor PB/s.
    assert 1e9 < limits["read_bandwidth_bytes_per_s"] < 2e12
    assert 1e9 < limits["copy_bandwidth_bytes_per_s"] < 2e12
    assert 1e9 < limits["peak_flops_per_s"] < 1e14
    assert limits["bandwidth_source"].startswith("measured read") and limits["probe_reused"] is False
    assert len(list(tmp_path.glob("probe-*.json"))) == 1

    # A probe disturbed by other load measures less: the cached best is kept, not overwritten.
    monkeypatch.setattr(roofline, "probe", _fake(1.0))
    again = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    assert again["read_bandwidth_bytes_per_s"] == limits["read_bandwidth_bytes_per_s"]
    assert again["peak_flops_per_s"] == limits["peak_flops_per_s"]
    # A faster one raises it.
    monkeypatch.setattr(roofline, "probe", _fake(1e13))
    assert roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)["read_bandwidth_bytes_per_s"] == 1e13


def test_probe_measured_once_per_sweep_and_again_when_its_key_changes(tmp_path, monkeypatch):
    import time

    calls = []
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(roofline, "probe", lambda d, t: calls.append(t) or _fake(5e10)(d, t))
    monkeypatch.setenv(env_vars.PROBE_SINCE, str(time.time()))
    first = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    second = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    assert len(calls) == 1 and not first["probe_reused"] and second["probe_reused"]
    assert second["read_bandwidth_bytes_per_s"] == first["read_bandwidth_bytes_per_s"]
    # Another key (dtype here; host, device, torch and kvbench versions likewise) measures again.
    roofline.device_limits(torch.device("cpu"), "cpu", torch.bfloat16)
    assert len(calls) == 2 and len(list(tmp_path.glob("probe-*.json"))) == 2
    monkeypatch.setattr(torch, "__version__", "0.0.0-other")
    roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    assert len(calls) == 3
    monkeypatch.undo()
    # A later sweep (its start after the cached probe) measures again; so does a cell run by hand.
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(roofline, "probe", lambda d, t: calls.append(t) or _fake(5e10)(d, t))
    monkeypatch.setenv(env_vars.PROBE_SINCE, str(time.time() + 1))
    assert not roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)["probe_reused"]
    monkeypatch.delenv(env_vars.PROBE_SINCE)
    roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    assert len(calls) == 5


def test_decode_step_cost_counts_weights_and_cache():
    cfg = preset("gpt2")
    model = build_random(preset("tiny"), "cpu", torch.float32, 0)
    weights = roofline.step_read_bytes(model)
    assert weights == sum(p.numel() * 4 for n, p in model.named_parameters() if "wpe" not in n)
    kv_per_token = kv_cache_bytes(cfg.n_layer, 1, cfg.kv_heads, 1, cfg.head_dim, 2)  # fp16 K and V of one position
    flops, nbytes = roofline.decode_step_cost(
        cfg, batch=1, context=0, kv_bytes_per_token=kv_per_token, step_read_bytes=0
    )
    # with no context: 2 FLOPs per weight of every matmul (12 layers x 12 C^2 + the C x V head)
    assert flops == 2 * (12 * 12 * 768**2 + 768 * 50257)
    assert nbytes == 2 * 12 * 12 * 64 * 2  # writing one position of K and V
    _, more = roofline.decode_step_cost(cfg, batch=4, context=100, kv_bytes_per_token=kv_per_token, step_read_bytes=10)
    assert more == 10 + 4 * 2 * 12 * 12 * 64 * 2 * 101


def test_floor_fraction_and_suspect_flag():
    cfg = preset("tiny")
    limits = {
        "read_bandwidth_bytes_per_s": 1e10,
        "peak_flops_per_s": 1e12,
        "bandwidth_source": "t",
        "peak_flops_source": "t",
    }
    a = roofline.analyse(cfg, 1, 8, 8, 4, 10_000_000, limits, measured_ms=2.0)
    assert a["floor_ms_per_token"] == pytest.approx(1e3 * a["decode_bytes_per_token"] / 1e10)
    assert a["fraction_of_floor"] == pytest.approx(a["floor_ms_per_token"] / 2.0) and not a["suspect"]
    fast = roofline.analyse(cfg, 1, 8, 8, 4, 10_000_000, limits, measured_ms=a["floor_ms_per_token"] / 2)
    assert fast["suspect"] and fast["fraction_of_floor"] == pytest.approx(2.0)


def test_spec_bandwidth_table_prefers_the_specific_part():
    assert roofline.spec_bandwidth("NVIDIA H100 PCIe") == 2.0e12
    assert roofline.spec_bandwidth("NVIDIA H100 80GB HBM3") == 3.35e12
    assert roofline.spec_bandwidth("NVIDIA H200") == 4.8e12
    assert roofline.spec_bandwidth("cpu") is None


def test_a_damaged_probe_cache_is_named_measured_again_and_rewritten(tmp_path, monkeypatch, capsys):
    import json

    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(env_vars.PROBE_SINCE, "0")  # any sound cache would be reused
    monkeypatch.setattr(roofline, "probe", _fake(5e10))
    roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    (path,) = tmp_path.glob("probe-*.json")
    for damage in (
        "{",
        '{"read_bandwidth_bytes_per_s": "fast"}',
        json.dumps({**json.loads(path.read_text()), "peak_flops_per_s": -1}),
    ):
        path.write_text(damage)
        capsys.readouterr()
        limits = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
        assert limits["probe_reused"] is False and limits["read_bandwidth_bytes_per_s"] == 5e10
        err = capsys.readouterr().err
        assert err.startswith(f"kvbench: probe cache {path} ") and "measuring the device again" in err, err
        assert json.loads(path.read_text())["read_bandwidth_bytes_per_s"] == 5e10  # rebuilt
    assert roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)["probe_reused"] is True


def test_a_probe_cache_that_cannot_be_written_is_named_and_the_cell_goes_on(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(roofline, "probe", _fake(5e10))
    path = roofline._cache_path(torch.device("cpu"), "cpu", torch.float32)
    path.mkdir(parents=True)  # a folder where the file goes: neither readable as JSON nor replaceable
    limits = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    assert limits["read_bandwidth_bytes_per_s"] == 5e10
    err = capsys.readouterr().err
    assert f"kvbench: probe cache {path} cannot be written (" in err


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("read_bandwidth_bytes_per_s", 1e20, "implausible read_bandwidth_bytes_per_s 1e+20"),
        ("copy_bandwidth_bytes_per_s", 10.0, "implausible copy_bandwidth_bytes_per_s 10"),
        ("peak_flops_per_s", 1e25, "implausible peak_flops_per_s 1e+25"),
        ("measured_at", 4e12, "implausible measured_at"),  # the year 128,000: reused by every sweep to come
    ],
)
def test_an_implausible_probe_cache_is_named_discarded_measured_again_and_rewritten(
    field, value, says, tmp_path, monkeypatch, capsys
):
    """Valid JSON, positive numbers, yet no device shows them: trusted, it would set every later floor."""
    import json

    monkeypatch.setenv("KVBENCH_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv(env_vars.PROBE_SINCE, "0")  # any sound cache would be reused
    monkeypatch.setattr(roofline, "probe", _fake(5e10))
    roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    (path,) = tmp_path.glob("probe-*.json")
    path.write_text(json.dumps({**json.loads(path.read_text()), field: value}))
    capsys.readouterr()
    limits = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"kvbench: probe cache {path} holds an {says}"), err
    assert "measuring the device again" in err
    # Measured again, and the impossible value neither used nor merged back by the max.
    assert limits["probe_reused"] is False and limits["read_bandwidth_bytes_per_s"] == 5e10
    assert limits["peak_flops_per_s"] == 1e9
    assert json.loads(path.read_text())[field] != value
    again = roofline.device_limits(torch.device("cpu"), "cpu", torch.float32)
    assert again["probe_reused"] is True and capsys.readouterr().err == ""


def test_a_sliding_caches_floor_reads_only_the_positions_it_holds():
    cfg = preset("tiny")
    limits = {"read_bandwidth_bytes_per_s": 1e10, "peak_flops_per_s": 1e12, "bandwidth_source": "t",
              "peak_flops_source": "t"}  # fmt: skip
    full = roofline.analyse(cfg, 2, 1000, 16, 100, 10_000_000, limits, measured_ms=5.0)
    window = roofline.analyse(cfg, 2, 1000, 16, 100, 10_000_000, limits, measured_ms=5.0, held=260)
    assert full["decode_bytes_per_token"] == 10_000_000 + 2 * 100 * (1008 + 1)
    assert window["decode_bytes_per_token"] == 10_000_000 + 2 * 100 * (260 + 1)
