"""Repeatable timing: loops whose p50s' median is reported, a longer batch-1 time, pinned threads."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import numpy as np
import pytest

from petra_hw.profiler import LatencyStats, pinned, time_repeats
from petra_hw.profiles import MeasureSettings


class LoopRunner:
    """Each call advances a simulated clock by ``durations[loop]``; a loop ends when the
    harness has timed ``per_loop`` calls (so one loop can be made slow on purpose)."""

    def __init__(self, durations_ns: list[int], per_loop: int) -> None:
        self.now, self.calls, self.durations, self.per_loop = 0, 0, durations_ns, per_loop

    def clock(self) -> int:
        return self.now

    def __call__(self, x: np.ndarray) -> np.ndarray:
        loop = min(self.calls // self.per_loop, len(self.durations) - 1)
        self.now += self.durations[loop]
        self.calls += 1
        return x

    def synchronize(self) -> None:
        pass


def test_one_disturbed_loop_does_not_move_the_reported_p50() -> None:
    s = MeasureSettings(warmup_iters=0, min_iters=30, min_time_s=0.0, max_time_s=10, repeats=3)
    # three loops of 10 calls: 1 ms, then 3 ms (a neighbour woke up), then 1.1 ms
    r = LoopRunner([1_000_000, 3_000_000, 1_100_000], per_loop=10)
    st = time_repeats(r, np.zeros((4, 2), np.float32), s, r.clock)
    assert len(st.samples_ms) == 30  # every raw sample kept
    assert st.repeat_p50_ms == pytest.approx((1.0, 3.0, 1.1))
    assert st.p50_ms == pytest.approx(1.1)  # the median loop, not the pooled samples' 1.1/3 mix
    assert st.iqr_ms == pytest.approx(np.subtract(*np.percentile(st.samples_ms, [75, 25])))


def test_batch_one_gets_the_longer_minimum_time() -> None:
    s = MeasureSettings(
        warmup_iters=0, min_iters=1, min_time_s=0.03, max_time_s=10, repeats=3,
        latency_time_factor=2.0,
    )  # fmt: skip
    for batch, expected in ((1, 60), (8, 30)):  # 1 ms calls: 2 x 30 ms at batch 1, 30 ms else
        r = LoopRunner([1_000_000], per_loop=10**9)
        st = time_repeats(r, np.zeros((batch, 2), np.float32), s, r.clock)
        assert len(st.samples_ms) == expected and len(st.repeat_p50_ms) == 3


def test_old_stats_without_repeats_keep_the_pooled_p50() -> None:
    st = LatencyStats.from_samples(1, [1_000_000] * 9 + [9_000_000])
    assert st.p50_ms == pytest.approx(1.0) and st.repeat_p50_ms == ()


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="Linux only")
def test_pinning_covers_every_thread_and_is_undone() -> None:
    before = os.sched_getaffinity(0)
    seen: dict[str, set[int]] = {}
    started, stop = threading.Event(), threading.Event()

    def pool_thread() -> None:  # stands for a runtime's worker thread, created before timing
        started.set()
        stop.wait()

    t = threading.Thread(target=pool_thread)
    t.start()
    started.wait()
    late = threading.Thread(target=stop.wait)  # started while pinned: inherits the pin
    try:
        with pinned(1):
            seen["main"] = os.sched_getaffinity(0)
            seen["pool"] = os.sched_getaffinity(t.native_id)
            late.start()
            seen["late"] = os.sched_getaffinity(late.native_id)
        seen["after"] = os.sched_getaffinity(t.native_id)
        seen["late after"] = os.sched_getaffinity(late.native_id)
    finally:
        stop.set()
        t.join()
        if late.is_alive():
            late.join()
    first = {min(before)}
    assert seen["main"] == first and seen["pool"] == first and seen["late"] == first
    assert seen["after"] == before and os.sched_getaffinity(0) == before
    assert seen["late after"] == before
    assert Path("/proc/self/task").is_dir()
