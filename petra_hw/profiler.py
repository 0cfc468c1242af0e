"""One timing harness for every backend.

Warm-up first; then timed iterations with ``time.perf_counter_ns`` (the runner is synchronised
after each call, which matters on CUDA) until both a minimum count and a minimum time are reached;
raw samples are kept.  Latency (batch 1) and throughput (each profile batch size) are separate
measurements, each on real inputs: the calib rows an artifact stores at compile time
(``TIMING_INPUTS``), tiled to the batch size, so models whose input carries indices, lengths or
masks run the code path they run in deployment (noise would index out of range or take every
sequence as empty).  To repeat across processes, ``measure`` pins the process's threads to fixed
cores, gives batch 1 a longer minimum time, and times each batch size in several loops whose p50s'
median is reported (``time_repeats``).  Measurements never overlap: a machine-wide file lock serialises them across
processes (local workers, Ray workers on the same host).  CPU load and steal are read from
/proc/stat around each measurement; a noisy one is repeated, and flagged if it stays noisy.
On GPU profiles with ``nvml = true`` an NVML window spans each timed loop (not its warm-up) and
gives energy per inference and power/memory/clock/temperature (``petra_hw.nvml``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from petra_hw.nvml import NvmlSampler
from petra_hw.profiles import DeviceProfile, MeasureSettings

log = logging.getLogger(__name__)
Clock = Callable[[], int]
MAX_SAMPLES = 200_000  # bounds memory even if a clock misbehaves
TIMING_INPUTS = "timing_inputs.npy"  # real calib rows kept in an artifact for timing it
LOCK_PATH = Path(
    os.environ.get("PETRA_HW_LOCK", Path(tempfile.gettempdir()) / "petra-hw-measure.lock")
)


@dataclass(frozen=True)
class LatencyStats:
    """Summary of raw per-iteration samples for one batch size."""

    batch_size: int
    samples_ms: tuple[float, ...]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    stdev_ms: float
    min_ms: float
    cv: float
    throughput_ips: float
    iqr_ms: float = 0.0  # p75 - p25 of the raw samples: the noise band dominance respects
    repeat_p50_ms: tuple[float, ...] = ()  # p50 of each timed loop (p50_ms is their median)

    @staticmethod
    def from_samples(
        batch_size: int, samples_ns: list[int], repeat_p50_ms: tuple[float, ...] = ()
    ) -> LatencyStats:
        """Summary of ``samples_ns``; with ``repeat_p50_ms`` (the loops' own p50s) the reported
        p50 is their median, which one disturbed loop cannot move."""
        if not samples_ns:
            raise ValueError("no timing samples")
        ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
        mean = float(ms.mean())
        stdev = float(ms.std(ddof=1)) if len(ms) > 1 else 0.0
        p25, p50, p75, p90, p99 = (float(np.percentile(ms, q)) for q in (25, 50, 75, 90, 99))
        if repeat_p50_ms:
            p50 = float(np.median(repeat_p50_ms))
        return LatencyStats(
            batch_size=batch_size,
            samples_ms=tuple(float(v) for v in ms),
            p50_ms=p50,
            p90_ms=p90,
            p99_ms=p99,
            mean_ms=mean,
            stdev_ms=stdev,
            min_ms=float(ms.min()),
            cv=stdev / mean if mean > 0 else 0.0,
            throughput_ips=batch_size / (p50 / 1e3) if p50 > 0 else float("inf"),
            iqr_ms=p75 - p25,
            repeat_p50_ms=tuple(float(v) for v in repeat_p50_ms),
        )

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("samples_ms")
        d["n"] = len(self.samples_ms)
        return d


@dataclass(frozen=True)
class HostLoad:
    """CPU activity around a measurement: the share of all cores busy with *other* work, and
    the share stolen by the hypervisor."""

    other_busy_frac: float
    steal_frac: float
    loadavg_before: float
    loadavg_after: float


@dataclass(frozen=True)
class Measurement:
    backend: str
    precision: str
    device: str
    threads: int
    latency: LatencyStats
    throughput: tuple[LatencyStats, ...]
    size_bytes: int
    peak_rss_bytes: int
    load: tuple[HostLoad, ...]
    noisy: bool
    repeats: int
    settings: dict
    energy_j: float | None = None  # per inference at batch 1, where the device reports power
    gpu: dict = field(default_factory=dict)  # NVML device and a summary per batch size
    fresh_process: bool = False

    @property
    def latency_ms(self) -> float:
        return self.latency.p50_ms

    @property
    def throughput_ips(self) -> float:
        """Throughput at the largest profile batch size."""
        best = max(self.throughput, key=lambda s: s.batch_size, default=self.latency)
        return best.throughput_ips

    def to_json(self, samples: bool = True) -> dict:
        d = asdict(self)
        if not samples:
            d["latency"].pop("samples_ms")
            for t in d["throughput"]:
                t.pop("samples_ms")
        d["latency_ms"] = self.latency_ms
        d["throughput_ips"] = self.throughput_ips
        return d

    @staticmethod
    def from_json(d: dict) -> Measurement:
        def stats(s: dict) -> LatencyStats:
            return LatencyStats(
                **{
                    **s,
                    "samples_ms": tuple(s.get("samples_ms", ())),
                    "repeat_p50_ms": tuple(s.get("repeat_p50_ms", ())),
                }
            )

        return Measurement(
            backend=d["backend"],
            precision=d["precision"],
            device=d["device"],
            threads=d["threads"],
            latency=stats(d["latency"]),
            throughput=tuple(stats(s) for s in d["throughput"]),
            size_bytes=d["size_bytes"],
            peak_rss_bytes=d["peak_rss_bytes"],
            load=tuple(HostLoad(**h) for h in d["load"]),
            noisy=d["noisy"],
            repeats=d["repeats"],
            settings=d["settings"],
            energy_j=d.get("energy_j"),
            gpu=d.get("gpu", {}),
            fresh_process=d.get("fresh_process", False),
        )


def tiled(x: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` real inputs: the first samples of ``x``, repeated when ``x`` is shorter."""
    reps = -(-batch // len(x))
    return np.ascontiguousarray(np.concatenate([x] * reps)[:batch], dtype=np.float32)


def timing_inputs(artifact) -> np.ndarray | None:
    """The real inputs an artifact stores for timing, or None (compiled before they were)."""
    if TIMING_INPUTS not in artifact.all_files:
        return None
    return np.load(artifact.file(TIMING_INPUTS), allow_pickle=False)


@contextlib.contextmanager
def exclusive(path: Path = LOCK_PATH) -> Iterator[None]:
    """Hold the machine-wide measurement lock (blocks until no other measurement runs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _proc_stat() -> tuple[int, int, int] | None:
    """(busy, steal, total) jiffies over all CPUs, or None off Linux."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    v = [int(x) for x in fields]
    idle = v[3] + (v[4] if len(v) > 4 else 0)
    steal = v[7] if len(v) > 7 else 0
    total = sum(v[:8])
    return total - idle - steal, steal, total


@contextlib.contextmanager
def watch_load(out: list[HostLoad]) -> Iterator[None]:
    before, cpu0 = _proc_stat(), os.times()
    la0 = os.getloadavg()[0]
    yield
    after, cpu1 = _proc_stat(), os.times()
    la1 = os.getloadavg()[0]
    if before is None or after is None:
        out.append(HostLoad(0.0, 0.0, la0, la1))
        return
    ticks = os.sysconf("SC_CLK_TCK")
    busy, steal, total = (a - b for a, b in zip(after, before))
    own = (cpu1.user + cpu1.system - cpu0.user - cpu0.system) * ticks
    total = max(total, 1)
    out.append(HostLoad(max(0.0, (busy - own) / total), steal / total, la0, la1))


def time_batches(
    runner,
    x: np.ndarray,
    settings: MeasureSettings,
    clock: Clock = time.perf_counter_ns,
    window: contextlib.AbstractContextManager | None = None,
) -> list[int]:
    """Warm up, then time ``runner(x)`` until min_iters and min_time_s are both reached
    (or max_time_s has passed); returns raw nanoseconds per iteration.

    ``window`` (the NVML sampler on GPUs) is entered after the warm-up and left after the last
    synchronised iteration, so what it records belongs to the timed calls only.
    """
    _warm_up(runner, x, settings.warmup_iters)
    with window or contextlib.nullcontext():
        return _timed_loop(
            runner, x, settings.min_iters, settings.min_time_s, settings.max_time_s, clock
        )


def _warm_up(runner, x: np.ndarray, iters: int) -> None:
    for _ in range(iters):
        runner(x)
    runner.synchronize()


def _timed_loop(
    runner, x: np.ndarray, min_iters: int, min_time_s: float, max_time_s: float, clock: Clock
) -> list[int]:
    """Time ``runner(x)`` until ``min_iters`` and ``min_time_s`` are both reached (or
    ``max_time_s`` has passed); raw nanoseconds per iteration."""
    samples: list[int] = []
    min_ns, max_ns = min_time_s * 1e9, max_time_s * 1e9
    start = clock()
    while True:
        t0 = clock()
        runner(x)
        runner.synchronize()
        t1 = clock()
        samples.append(t1 - t0)
        elapsed = t1 - start
        if len(samples) >= min_iters and elapsed >= min_ns:
            break
        if (elapsed >= max_ns and len(samples) >= 3) or len(samples) >= MAX_SAMPLES:
            break
    return samples


def time_repeats(
    runner,
    x: np.ndarray,
    settings: MeasureSettings,
    clock: Clock = time.perf_counter_ns,
    window: contextlib.AbstractContextManager | None = None,
) -> LatencyStats:
    """``time_batches`` made repeatable: one warm-up, then ``settings.repeats`` timed loops that
    share the minimum count and time (batch 1 gets ``latency_time_factor`` x the time: its
    samples are the shortest and the most disturbed by a neighbour); every raw sample is kept
    and the reported p50 is the median of the loops' p50s."""
    batch = int(x.shape[0]) if x.ndim else 1
    repeats = max(1, settings.repeats)
    factor = settings.latency_time_factor if batch == 1 else 1.0
    min_iters = max(1, -(-settings.min_iters // repeats))
    min_time_s = settings.min_time_s * factor / repeats
    max_time_s = settings.max_time_s * factor / repeats
    _warm_up(runner, x, settings.warmup_iters)
    samples: list[int] = []
    p50s: list[float] = []
    with window or contextlib.nullcontext():
        for _ in range(repeats):
            loop = _timed_loop(runner, x, min_iters, min_time_s, max_time_s, clock)
            samples.extend(loop)
            p50s.append(float(np.median(loop)) / 1e6)
    return LatencyStats.from_samples(batch, samples, tuple(p50s))


@contextlib.contextmanager
def pinned(threads: int) -> Iterator[None]:
    """Pin every thread of this process (the runtime's pool included) to the same ``threads``
    cores, the first ones this process may use, while timing; restored afterwards.  Threads
    that migrate between cores mid-measurement are one source of the spread between fresh
    processes.  A no-op off Linux or with ``threads`` 0."""
    if threads <= 0 or not hasattr(os, "sched_setaffinity"):
        yield
        return
    tasks = Path("/proc/self/task")

    def tids() -> list[int]:
        return [int(t.name) for t in tasks.iterdir()] if tasks.is_dir() else []

    original = os.sched_getaffinity(0)
    allowed = sorted(original)
    cores = set(allowed[: min(threads, len(allowed))])
    saved: dict[int, set[int]] = {}
    for tid in tids():
        with contextlib.suppress(OSError):
            saved[tid] = os.sched_getaffinity(tid)
            os.sched_setaffinity(tid, cores)
    try:
        yield
    finally:
        # threads the runtime started while pinned inherited the pin: they get the process's
        # mask back too (an OpenMP pool left on one core would crawl through later training)
        for tid in tids():
            with contextlib.suppress(OSError):
                os.sched_setaffinity(tid, saved.get(tid, original))


def _noisy(stats: list[LatencyStats], loads: list[HostLoad], settings: MeasureSettings) -> bool:
    return any(s.cv > settings.max_cv for s in stats) or any(
        h.other_busy_frac > 0.25 or h.steal_frac > 0.05 for h in loads
    )


def measure(
    runner,
    input_shape: tuple[int, ...],
    profile: DeviceProfile,
    *,
    backend: str,
    precision: str,
    size_bytes: int,
    clock: Clock = time.perf_counter_ns,
    seed: int = 0,
    inputs: np.ndarray | None = None,
) -> Measurement:
    """Measure latency at batch 1 and throughput at each profile batch size, under the lock.

    ``inputs``: real samples (batch, *input_shape), tiled to each batch size; only an artifact
    compiled before petra-hw stored them is timed on seeded standard-normal noise."""
    settings = profile.measurement
    rng = np.random.default_rng(seed)
    batches = sorted(set(profile.batch_sizes) | {1})
    repeats, stats, loads = 0, [], []
    nvml = profile.is_gpu and profile.nvml
    while True:
        stats, loads, gpu = [], [], {}
        pin = profile.effective_threads() if settings.pin_threads and not profile.is_gpu else 0
        with exclusive(), pinned(pin):
            for b in batches:
                if inputs is not None:
                    x = tiled(inputs, b)
                else:
                    x = rng.standard_normal((b, *input_shape)).astype(np.float32)
                sampler = NvmlSampler() if nvml else None
                with watch_load(loads):
                    timed = time_repeats(runner, x, settings, clock, window=sampler)
                stats.append(timed)
                if sampler is not None and sampler.available:
                    gpu = _gpu_record(gpu, sampler, b, len(timed.samples_ms))
        noisy = _noisy(stats, loads, settings)
        if not noisy or repeats >= settings.repeats_if_noisy:
            break
        repeats += 1
        log.warning("noisy measurement of %s/%s (repeat %d)", backend, precision, repeats)
    by_batch = {s.batch_size: s for s in stats}
    return Measurement(
        backend=backend,
        precision=precision,
        device=getattr(runner, "device", "cpu"),
        threads=profile.effective_threads(),
        latency=by_batch[1],
        throughput=tuple(by_batch[b] for b in batches if b in profile.batch_sizes and b != 1)
        or (by_batch[1],),
        size_bytes=size_bytes,
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        load=tuple(loads),
        noisy=noisy,
        repeats=repeats,
        settings=asdict(settings),
        energy_j=gpu.get("batches", {}).get("1", {}).get("energy_j_per_sample"),
        gpu=gpu,
    )


def _gpu_record(gpu: dict, sampler: NvmlSampler, batch: int, calls: int) -> dict:
    """Add one batch size's NVML summary.  Energy per sample is the window's energy over the
    samples its timed calls processed: per inference at batch 1, the ``energy_j`` objective."""
    per_call = sampler.energy_per_call(calls)
    summary = {
        **sampler.summary(),
        "energy_j_per_sample": None if per_call is None else per_call / batch,
    }
    return {
        "device": sampler.device_name,
        "batches": {**gpu.get("batches", {}), str(batch): summary},
    }


def measure_artifact(
    artifact_path: str | Path, profile: DeviceProfile, seed: int = 0
) -> Measurement:
    """Load an artifact and measure it in this process."""
    from petra_hw.artifact import read_artifact
    from petra_hw.backend import load_runner

    artifact = read_artifact(artifact_path)
    runner = load_runner(artifact, profile)
    return measure(
        runner,
        artifact.input_spec.sample_shape(1)[1:],
        profile,
        backend=artifact.backend,
        precision=artifact.precision,
        size_bytes=artifact.size_bytes,
        seed=seed,
        inputs=timing_inputs(artifact),
    )


def measure_fresh_process(
    artifact_path: str | Path, profile: DeviceProfile, timeout_s: float = 600
) -> Measurement:
    """Measure in a new interpreter, so allocator state, caches and peak RSS are the artifact's own."""
    cmd = [
        sys.executable,
        "-m",
        "petra_hw.profiler",
        str(artifact_path),
        profile.source or profile.name,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise RuntimeError(f"measurement process failed ({proc.returncode}): {tail[0]}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement.from_json({**data, "fresh_process": True})


def _main(argv: list[str]) -> int:
    from petra_hw.profiles import load_profile

    artifact, profile = argv
    m = measure_artifact(artifact, load_profile(profile))
    sys.stdout.write(json.dumps(m.to_json()) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
