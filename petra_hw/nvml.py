"""NVML sampling in a background thread: power -> energy per inference, memory, clocks, temperature.

Without an NVIDIA driver ``pynvml.nvmlInit()`` raises ``NVMLError_LibraryNotFound``; the sampler then
reports nothing (``available`` is False) instead of failing the measurement.
"""

from __future__ import annotations

import logging
import threading
import time

log = logging.getLogger(__name__)


class NvmlSampler:
    """Context manager: samples GPU ``index`` every ``period_s`` while the block runs."""

    def __init__(self, index: int = 0, period_s: float = 0.01) -> None:
        self.index, self.period_s = index, period_s
        self.samples: list[tuple[float, float, int, int, int]] = []  # t, W, mem, sm MHz, C
        self.available = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._t0 = self._t1 = 0.0

    def __enter__(self) -> NvmlSampler:
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            self.available = True
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, no such device
            log.info("NVML unavailable, no power or energy: %s", exc)
            return self
        self.samples.clear()
        self._stop.clear()
        self._t0 = time.perf_counter()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        n, h = self._nvml, self._handle
        while not self._stop.is_set():
            self.samples.append(
                (
                    time.perf_counter(),
                    n.nvmlDeviceGetPowerUsage(h) / 1000.0,
                    n.nvmlDeviceGetMemoryInfo(h).used,
                    n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM),
                    n.nvmlDeviceGetTemperature(h, n.NVML_TEMPERATURE_GPU),
                )
            )
            self._stop.wait(self.period_s)

    def __exit__(self, *exc: object) -> None:
        if not self.available:
            return
        self._t1 = time.perf_counter()
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._nvml.nvmlShutdown()

    def energy_j(self) -> float | None:
        """Trapezoidal integral of power over the sampled window."""
        if len(self.samples) < 2:
            return None
        e = 0.0
        for (t0, p0, *_), (t1, p1, *_) in zip(self.samples, self.samples[1:]):
            e += (t1 - t0) * (p0 + p1) / 2
        return e

    def energy_per_call(self, calls: int) -> float | None:
        total = self.energy_j()
        return None if total is None or calls <= 0 else total / calls

    def summary(self) -> dict:
        if not self.samples:
            return {}
        watts = [s[1] for s in self.samples]
        return {
            "power_w_mean": sum(watts) / len(watts),
            "power_w_max": max(watts),
            "memory_used_bytes_max": max(s[2] for s in self.samples),
            "sm_clock_mhz_mean": sum(s[3] for s in self.samples) / len(self.samples),
            "temperature_c_max": max(s[4] for s in self.samples),
            "nvml_samples": len(self.samples),
        }
