"""NVML plumbing. This machine has no NVIDIA GPU or driver, so these tests replace the pynvml
module with a small fake (a mock, and only of what cannot exist here); real pynvml runs on GPUs."""

import time
import types

import pytest
import torch

from kvbench.measure import nvml


class FakeNvml(types.SimpleNamespace):
    NVML_CLOCK_SM, NVML_CLOCK_MEM, NVML_TEMPERATURE_GPU = 1, 2, 0
    nvmlClocksThrottleReasonGpuIdle = 0x1
    nvmlClocksThrottleReasonSwPowerCap = 0x4
    nvmlClocksThrottleReasonHwSlowdown = 0x8
    nvmlClocksThrottleReasonNone = 0x0
    nvmlClocksThrottleReasonAll = 0xFF

    def __init__(self):
        super().__init__(calls=[], energy=1000, mem_used=[100, 300, 200], power=[100.0, 300.0])

    def nvmlInit(self):
        pass

    def nvmlDeviceGetHandleByUUID(self, uuid):
        self.calls.append(("uuid", uuid))
        return f"handle:{uuid}"

    def nvmlDeviceGetHandleByIndex(self, i):
        self.calls.append(("index", i))
        return f"handle:{i}"

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h):
        return 0x4 | 0x8

    def nvmlDeviceGetTotalEnergyConsumption(self, h):
        return self.energy

    def nvmlDeviceGetMemoryInfo(self, h):
        used = self.mem_used.pop(0) if self.mem_used else 150
        return types.SimpleNamespace(used=used)

    def nvmlDeviceGetPowerUsage(self, h):
        return 200_000  # milliwatts

    def nvmlDeviceGetClockInfo(self, h, kind):
        return {1: 1980, 2: 2619}[kind]

    def nvmlDeviceGetTemperature(self, h, kind):
        return 41


@pytest.fixture()
def fake(monkeypatch):
    f = FakeNvml()
    monkeypatch.setattr(nvml, "pynvml", f)
    return f


def test_throttle_reasons_are_decoded_to_names(fake):
    assert nvml.throttle_reasons("h") == ["HwSlowdown", "SwPowerCap"]
    assert nvml.clocks("h") == {"sm_mhz": 1980, "mem_mhz": 2619, "temperature_c": 41, "power_w": 200.0}


def test_device_is_found_by_uuid_not_by_index(fake, monkeypatch):
    """Under CUDA_VISIBLE_DEVICES=3, torch's cuda:0 is NVML's device 3: the UUID resolves it."""
    props = types.SimpleNamespace(uuid="1234-abcd")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: props)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3")
    assert nvml.handle_for(torch.device("cuda:0")) == "handle:GPU-1234-abcd"
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: types.SimpleNamespace())
    assert nvml.handle_for(torch.device("cuda:0")) == "handle:3"  # no UUID, no PCI id: the env var maps it
    assert nvml.handle_for(torch.device("cpu")) is None


def test_sampler_tracks_peak_memory_and_integrates_power(fake):
    with nvml.Sampler("h", interval_s=0.001) as s:
        pass
    assert s.peak_used == 300
    t0 = s.power[0][0]
    s.power = [(t0, 100.0), (t0 + 1.0, 300.0), (t0 + 2.0, 300.0)]
    assert s.joules_between(t0, t0 + 2.0) == pytest.approx(200.0 + 300.0)


def test_without_pynvml_everything_is_none(monkeypatch):
    monkeypatch.setattr(nvml, "pynvml", None)
    assert nvml.handle_for(torch.device("cuda:0")) is None
    assert nvml.driver_version() is None and nvml.clocks(None) is None and nvml.energy_mj(None) is None


def test_decode_energy_reads_the_counter_and_falls_back_to_power_samples(fake):
    cpu = torch.device("cpu")  # nothing to synchronise here
    with nvml.Sampler("h", interval_s=0.001) as sampler:
        energy = nvml.DecodeEnergy("h", sampler)
        energy.start(cpu)
        fake.energy += 4500  # millijoules spent by the decode
        assert energy.joules() == pytest.approx(4.5) and energy.method == "nvml_energy_counter"
    fake.nvmlDeviceGetTotalEnergyConsumption = lambda h: (_ for _ in ()).throw(RuntimeError("not supported"))
    energy = nvml.DecodeEnergy("h", sampler)
    energy.start(cpu)
    sampler.power = [(energy.start_s, 100.0), (energy.start_s + 0.01, 300.0)]  # watts, sampled in the decode
    time.sleep(0.02)
    assert energy.method == "nvml_power_samples"
    assert energy.joules() == pytest.approx(0.01 * (100.0 + 300.0) / 2)
    assert nvml.DecodeEnergy(None, sampler).joules() is None  # no GPU: no energy
