"""What the GPU itself reports through NVML (pynvml, from the nvidia-ml-py package).

Everything here degrades to None when there is no NVIDIA GPU or driver, so CPU cells run
the same code. The NVML device is found from the torch device's UUID (or PCI bus id), not
its index, because CUDA_VISIBLE_DEVICES and CUDA's device order renumber devices.
"""

from __future__ import annotations

import os
import threading
import time

import torch

from kvbench.measure.devices import synchronize

try:
    import pynvml
except ImportError:  # nvidia-ml-py is a dependency, but a CPU-only install may lack it
    pynvml = None


def _init() -> bool:
    if pynvml is None:
        return False
    try:
        pynvml.nvmlInit()
        return True
    except Exception:
        return False


def handle_for(device: torch.device):
    """The NVML handle of a torch CUDA device, or None."""
    if device.type != "cuda" or not _init():
        return None
    index = device.index or 0
    props = torch.cuda.get_device_properties(index)
    uuid = getattr(props, "uuid", None)
    if uuid is not None:
        try:
            return pynvml.nvmlDeviceGetHandleByUUID(f"GPU-{uuid}")
        except Exception:
            pass
    bus = getattr(props, "pci_bus_id", None)
    if bus is not None:
        try:
            pci = f"{getattr(props, 'pci_domain_id', 0):08x}:{bus:02x}:{getattr(props, 'pci_device_id', 0):02x}.0"
            return pynvml.nvmlDeviceGetHandleByPciBusId(pci)
        except Exception:
            pass
    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    try:
        if index < len(entries) and entries[index].isdigit():
            return pynvml.nvmlDeviceGetHandleByIndex(int(entries[index]))
        return pynvml.nvmlDeviceGetHandleByIndex(index)
    except Exception:
        return None


def driver_version() -> str | None:
    if not _init():
        return None
    try:
        v = pynvml.nvmlSystemGetDriverVersion()
        return v.decode() if isinstance(v, bytes) else v
    except Exception:
        return None


def clocks(handle) -> dict | None:
    if handle is None:
        return None
    out = {}
    for name, kind in (("sm_mhz", "NVML_CLOCK_SM"), ("mem_mhz", "NVML_CLOCK_MEM")):
        try:
            out[name] = pynvml.nvmlDeviceGetClockInfo(handle, getattr(pynvml, kind))
        except Exception:
            out[name] = None
    try:
        out["temperature_c"] = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
    except Exception:
        out["temperature_c"] = None
    try:
        out["power_w"] = pynvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
    except Exception:
        out["power_w"] = None
    return out


def throttle_reasons(handle) -> list[str] | None:
    """Names of the active clock-throttle reasons (empty list = none active)."""
    if handle is None:
        return None
    try:
        mask = pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(handle)
    except Exception:
        return None
    prefix = "nvmlClocksThrottleReason"
    names = [n for n in dir(pynvml) if n.startswith(prefix) and n not in (prefix + "None", prefix + "All")]
    return sorted(n[len(prefix) :] for n in names if mask & getattr(pynvml, n))


def energy_mj(handle) -> int | None:
    """Total energy since driver load in millijoules (Volta and newer), else None."""
    if handle is None:
        return None
    try:
        return pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
    except Exception:
        return None


class Sampler:
    """Samples device memory used and power in a background thread while a phase runs.

    Memory used is NVML's device-wide figure: it includes the CUDA context and anything
    another process holds, which torch's own peak counters do not see.
    """

    def __init__(self, handle, interval_s: float = 0.005):
        self.handle, self.interval_s = handle, interval_s
        self.peak_used: int | None = None
        self.power: list[tuple[float, float]] = []  # (monotonic s, watts)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        try:
            used = pynvml.nvmlDeviceGetMemoryInfo(self.handle).used
            self.peak_used = used if self.peak_used is None else max(self.peak_used, used)
        except Exception:
            pass
        try:
            self.power.append((time.monotonic(), pynvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0))
        except Exception:
            pass

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(self.interval_s)

    def __enter__(self) -> Sampler:
        if self.handle is not None:
            self._sample()
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._sample()

    def joules_between(self, t0: float, t1: float) -> float | None:
        """Trapezoid integral of sampled power over [t0, t1] (monotonic seconds)."""
        pts = [(t, w) for t, w in self.power if t0 <= t <= t1]
        if len(pts) < 2:
            return None
        return sum((b[0] - a[0]) * (a[1] + b[1]) / 2 for a, b in zip(pts, pts[1:]))


class DecodeEnergy:
    """Joules of one generation's decode phase, from the prefill's token to the last token.

    NVML's energy counter where the GPU has one (Volta and newer), else the `Sampler`'s power
    samples integrated over the same span. `start` is called at the prefill's token, `joules`
    once the generation has synchronised.
    """

    def __init__(self, handle, sampler: Sampler):
        self.handle, self.sampler = handle, sampler
        self.start_mj: int | None = None
        self.start_s = 0.0

    def start(self, device: torch.device) -> None:
        if self.handle is None:
            return
        synchronize(device)  # the phase boundary: the GPU must have finished the prefill
        self.start_mj, self.start_s = energy_mj(self.handle), time.monotonic()

    def joules(self) -> float | None:
        if self.handle is None:
            return None
        end_mj, end_s = energy_mj(self.handle), time.monotonic()
        if self.start_mj is not None and end_mj is not None:
            return (end_mj - self.start_mj) / 1e3
        return self.sampler.joules_between(self.start_s, end_s)

    @property
    def method(self) -> str:
        return "nvml_energy_counter" if self.start_mj is not None else "nvml_power_samples"
