"""NVML around a timed loop: energy per inference, plus power, memory, SM clock and temperature.

Energy comes from the board's own energy counter (``nvmlDeviceGetTotalEnergyConsumption``,
millijoules since the driver loaded; Volta and later) read when the window opens and closes.  Where
the counter is not supported it is the trapezoidal integral of power samples instead; those are
coarser, because on recent GPUs the reported power is itself a moving average.  A background thread
samples power, memory used, SM clock and temperature every ``period_s`` for the summary.

The GPU is the one the runner uses (``measured_gpu``: NVML and CUDA may number devices
differently, so it is matched by UUID where possible).  Without an NVIDIA driver
``pynvml.nvmlInit()`` raises ``NVMLError_LibraryNotFound``; the sampler then reports nothing
(``available`` is False, energy None) instead of failing the measurement.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Sequence

log = logging.getLogger(__name__)

COUNTER, SAMPLES = "nvml_energy_counter", "nvml_power_samples"


def trapezoid_j(samples: Sequence[tuple[float, float]]) -> float | None:
    """Energy in joules from (seconds, watts) samples; None with fewer than two."""
    if len(samples) < 2:
        return None
    return sum((t1 - t0) * (p0 + p1) / 2 for (t0, p0), (t1, p1) in zip(samples, samples[1:]))


def measured_gpu() -> str | int:
    """The GPU the measured runner uses, as NVML knows it: the UUID of torch's current device when
    torch has initialised CUDA (torch and TensorRT runners), else the first ``CUDA_VISIBLE_DEVICES``
    entry (a UUID, or an index, which matches NVML's PCI order under CUDA_DEVICE_ORDER=PCI_BUS_ID),
    else index 0.  Initialising CUDA here would add a context to the GPU being measured."""
    import torch

    if torch.cuda.is_initialized():
        return f"GPU-{torch.cuda.get_device_properties(torch.cuda.current_device()).uuid}"
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    if first.startswith(("GPU-", "MIG-")):
        return first
    return int(first) if first.isdigit() else 0


class NvmlSampler:
    """Context manager around the timed loop of one measurement (see the module docstring)."""

    def __init__(self, index: int | None = None, period_s: float = 0.02) -> None:
        self.index, self.period_s = index, period_s
        self.available = False
        self.device_name = ""
        self.samples: list[tuple[float, float, int, int, int]] = []  # t, W, mem, SM MHz, C
        self._counter_mj: list[int] = []
        self._window = (0.0, 0.0)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> NvmlSampler:
        try:
            import pynvml
        except ImportError as exc:
            log.info("nvidia-ml-py not installed, no power or energy: %s", exc)
            return self
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            log.info("NVML unavailable, no power or energy: %s", exc)
            return self
        self._nvml = pynvml
        try:
            self._handle = self._device_handle()
            self.device_name = pynvml.nvmlDeviceGetName(self._handle)
        except pynvml.NVMLError as exc:
            log.info("NVML has no such GPU, no power or energy: %s", exc)
            pynvml.nvmlShutdown()
            return self
        self.available = True
        self.samples.clear()
        start = self._read_counter()
        self._counter_mj = [] if start is None else [start]
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True, name="nvml-sampler")
        self._window = (time.perf_counter(), 0.0)
        self._thread.start()
        return self

    def _device_handle(self):
        n = self._nvml
        gpu = measured_gpu() if self.index is None else self.index
        if isinstance(gpu, int):
            return n.nvmlDeviceGetHandleByIndex(gpu)
        try:
            return n.nvmlDeviceGetHandleByUUID(gpu)
        except n.NVMLError as exc:  # e.g. a MIG slice: fall back to the first GPU
            log.info("NVML does not know CUDA device %s (%s); using index 0", gpu, exc)
            return n.nvmlDeviceGetHandleByIndex(0)

    def _read_counter(self) -> int | None:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle))
        except self._nvml.NVMLError:  # NotSupported before Volta and on some boards
            return None

    def _run(self) -> None:
        n, h = self._nvml, self._handle
        while not self._stop.is_set():
            try:
                self.samples.append(
                    (
                        time.perf_counter(),
                        n.nvmlDeviceGetPowerUsage(h) / 1000.0,
                        n.nvmlDeviceGetMemoryInfo(h).used,
                        n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                        n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
                    )
                )
            except n.NVMLError as exc:
                log.info("NVML sampling stopped: %s", exc)
                return
            self._stop.wait(self.period_s)

    def __exit__(self, *exc: object) -> None:
        if not self.available:
            return
        self._window = (self._window[0], time.perf_counter())
        end = self._read_counter()
        if self._counter_mj and end is not None:
            self._counter_mj.append(end)
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._nvml.nvmlShutdown()

    @property
    def window_s(self) -> float:
        return max(0.0, self._window[1] - self._window[0])

    def energy(self) -> tuple[float | None, str]:
        """(joules over the window, method): the energy counter when it moved, else samples."""
        if len(self._counter_mj) == 2 and self._counter_mj[1] > self._counter_mj[0]:
            return (self._counter_mj[1] - self._counter_mj[0]) / 1000.0, COUNTER
        return trapezoid_j([(s[0], s[1]) for s in self.samples]), SAMPLES

    def energy_per_call(self, calls: int) -> float | None:
        total, _ = self.energy()
        return None if total is None or calls <= 0 else total / calls

    def summary(self) -> dict:
        """Power, memory, clock and temperature over the window (empty when nothing was read)."""
        if not self.available or not self.samples:
            return {}
        energy, method = self.energy()
        n = len(self.samples)
        return {
            "energy_j": energy,
            "energy_method": method,
            "window_s": self.window_s,
            "power_w_mean": sum(s[1] for s in self.samples) / n,
            "power_w_max": max(s[1] for s in self.samples),
            "memory_used_bytes_max": max(s[2] for s in self.samples),
            "sm_clock_mhz_mean": sum(s[3] for s in self.samples) / n,
            "temperature_c_max": max(s[4] for s in self.samples),
            "nvml_samples": n,
        }
