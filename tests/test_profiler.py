"""The timing harness on runners whose timing is known exactly (a simulated clock)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from petra_hw.profiler import LatencyStats, Measurement, exclusive, measure, time_batches
from petra_hw.profiles import MeasureSettings


class ClockedRunner:
    """Each call advances a simulated clock by the next duration in a fixed cycle (ns)."""

    device = "cpu"

    def __init__(self, durations_ns: list[int]) -> None:
        self.now, self.calls, self.durations = 0, 0, durations_ns

    def clock(self) -> int:
        return self.now

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.now += self.durations[self.calls % len(self.durations)] * x.shape[0]
        self.calls += 1
        return x

    def synchronize(self) -> None:
        pass


def test_iterations_respect_minimum_count_and_time() -> None:
    r = ClockedRunner([1_000_000])  # 1 ms per sample
    s = MeasureSettings(warmup_iters=5, min_iters=10, min_time_s=0.05, max_time_s=10)
    samples = time_batches(r, np.zeros((1, 2), np.float32), s, r.clock)
    assert r.calls == 5 + len(samples)
    assert len(samples) == 50  # 50 x 1 ms reaches min_time_s after min_iters
    s2 = MeasureSettings(warmup_iters=0, min_iters=40, min_time_s=0.001, max_time_s=10)
    r2 = ClockedRunner([1_000_000])
    assert len(time_batches(r2, np.zeros((1, 2), np.float32), s2, r2.clock)) == 40


def test_max_time_caps_a_slow_runner() -> None:
    r = ClockedRunner([2_000_000_000])  # 2 s per call
    s = MeasureSettings(warmup_iters=0, min_iters=100, min_time_s=1, max_time_s=5)
    assert len(time_batches(r, np.zeros((1, 1), np.float32), s, r.clock)) == 3


def test_statistics_of_known_samples() -> None:
    ns = [1_000_000] * 90 + [5_000_000] * 10  # 90 x 1 ms, 10 x 5 ms
    st = LatencyStats.from_samples(4, ns)
    assert st.p50_ms == pytest.approx(1.0) and st.p99_ms == pytest.approx(5.0)
    assert st.mean_ms == pytest.approx(1.4) and st.min_ms == pytest.approx(1.0)
    assert st.stdev_ms == pytest.approx(np.std([1.0] * 90 + [5.0] * 10, ddof=1))
    assert st.throughput_ips == pytest.approx(4 / 1e-3)
    assert len(st.samples_ms) == 100
    with pytest.raises(ValueError):
        LatencyStats.from_samples(1, [])


def test_measure_latency_and_throughput_separately(cpu_profile) -> None:
    r = ClockedRunner([2_000_000])  # 2 ms per sample: batch 32 takes 64 ms
    p = cpu_profile.__class__(
        **{
            **cpu_profile.__dict__,
            "batch_sizes": (1, 32),
            "measurement": MeasureSettings(
                warmup_iters=1,
                min_iters=5,
                min_time_s=0.0,
                max_time_s=60,
                max_cv=0.5,
                repeats_if_noisy=0,
            ),
        }
    )
    m = measure(r, (3,), p, backend="x", precision="fp32", size_bytes=123, clock=r.clock)
    assert m.latency.batch_size == 1 and m.latency.p50_ms == pytest.approx(2.0)
    assert [t.batch_size for t in m.throughput] == [32]
    assert m.throughput[0].p50_ms == pytest.approx(64.0) and m.throughput_ips == pytest.approx(
        500.0
    )
    assert m.size_bytes == 123 and m.peak_rss_bytes > 0 and len(m.load) == 2
    again = Measurement.from_json(m.to_json())
    assert again == m


def test_noisy_measurement_is_repeated_and_flagged(cpu_profile) -> None:
    r = ClockedRunner([1_000_000, 9_000_000])  # cv ~ 1.1
    p = cpu_profile.__class__(
        **{
            **cpu_profile.__dict__,
            "batch_sizes": (1,),
            "measurement": MeasureSettings(
                warmup_iters=0,
                min_iters=10,
                min_time_s=0.0,
                max_time_s=60,
                max_cv=0.2,
                repeats_if_noisy=2,
            ),
        }
    )
    m = measure(r, (1,), p, backend="x", precision="fp32", size_bytes=1, clock=r.clock)
    assert m.noisy and m.repeats == 2 and m.latency.cv > 0.2


def test_measurements_never_overlap(tmp_path) -> None:
    lock = tmp_path / "lock"
    inside, overlaps = [], []

    def work() -> None:
        with exclusive(lock):
            inside.append(1)
            if len(inside) > 1:
                overlaps.append(1)
            time.sleep(0.05)
            inside.pop()

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not overlaps
