"""Interleaved timing of several artifacts in one process: the fair way to compare them here.

On a shared 2-core host batch-1 latency moves ~15% between fresh processes and up to 2x under a
neighbour's load, so artifacts measured one after the other are compared across different
machines, in effect.  Here every artifact is loaded once (the same profile, so the same pinned
thread count, which each runtime is asked back for), then timed round-robin: in each round every
artifact gets the one harness (``profiler.time_batches``: warm-up, then ``perf_counter_ns`` per
call) at each batch size, with the starting artifact rotated from round to round.  Noise then hits
all alike, and every raw sample is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from petra_hw.profiler import exclusive, tiled, time_batches
from petra_hw.profiles import DeviceProfile

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timed:
    """One artifact's raw samples (ms) per batch size over every round, and its summary."""

    label: str
    samples_ms: dict[int, list[float]]

    def p50_ms(self, batch: int) -> float:
        return float(np.median(self.samples_ms[batch]))

    def throughput_ips(self, batch: int) -> float:
        return batch * 1000.0 / self.p50_ms(batch)

    def round_p50_ms(self, batch: int, rounds: int) -> list[float]:
        """The median of each round (the spread between rounds shows the drift)."""
        chunks = np.array_split(np.asarray(self.samples_ms[batch]), rounds)
        return [float(np.median(c)) for c in chunks if len(c)]


def measure_interleaved(
    artifacts: dict[str, str | Path],
    profile: DeviceProfile,
    inputs: np.ndarray,
    batches: tuple[int, ...] = (1, 32),
    rounds: int = 12,
    failures: dict[str, str] | None = None,
) -> dict[str, Timed]:
    """Round-robin timing of every artifact (label -> folder) on real ``inputs``.

    With ``failures`` given, an artifact that does not load is recorded there (label -> reason)
    and left out, so one broken folder does not cost the others their comparison; without it,
    the error is raised."""
    from petra_hw.artifact import read_artifact
    from petra_hw.backend import get_backend

    runners = {}
    for label, path in artifacts.items():
        try:
            artifact = read_artifact(path)
            runners[label] = get_backend(artifact.backend).load(artifact, profile)
        except Exception as exc:  # recorded with its reason when the caller asks, else raised
            if failures is None:
                raise
            failures[label] = f"{type(exc).__name__}: {exc}"
            log.warning("interleaved timing leaves out %s: %s", label, failures[label])
    if not runners:
        return {}
    data = {b: tiled(inputs, b) for b in batches}
    samples: dict[str, dict[int, list[float]]] = {k: {b: [] for b in batches} for k in runners}
    labels = list(runners)
    with exclusive():
        for r in range(rounds):
            order = labels[r % len(labels) :] + labels[: r % len(labels)]
            for label in order:
                for b in batches:
                    ns = time_batches(runners[label], data[b], profile.measurement)
                    samples[label][b].extend(n / 1e6 for n in ns)
            log.info("interleaved round %d/%d done", r + 1, rounds)
    return {k: Timed(k, v) for k, v in samples.items()}
