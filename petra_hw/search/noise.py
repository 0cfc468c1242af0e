"""Dominance that respects measurement noise: a point dominates only by more than the noise.

Within one run the same model was measured +49% and +61% apart, and a 1-byte size difference
decided front membership.  So each normalized objective of an evaluation carries a *noise band*
(a half-width, in the objective's normalized units), and ``a`` dominates ``b`` only when ``a`` is
nowhere worse than ``b`` by more than their two bands together and somewhere better by more than
that.  With every band zero this is plain Pareto dominance.

Bands: ``latency_ms`` half the interquartile range of the batch-1 raw samples (the profiler keeps
``iqr_ms``), ``throughput_ips`` the same relative half-IQR at the largest batch size, ``size_bytes``
a fixed ``SIZE_BAND`` (bytes on disk are exact, but a manifest's few bytes are no difference);
quality, energy and complexity have none.  Measurements made before the profiler kept IQRs have
zero bands, as before.

Two evaluations are *twins* when every objective lies within both their bands (with zero bands:
exactly equal objectives).  Neither dominates the other, so without care both hold a place in a
population: :func:`distinct` picks one per group of twins.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from petra_hw.search.types import Evaluation

SIZE_BAND = 0.0025  # relative half-width on size: two sizes within 0.5% are a tie


def _relative_half_iqr(stats: dict[str, Any] | None) -> float:
    if not stats:
        return 0.0
    iqr, p50 = stats.get("iqr_ms"), stats.get("p50_ms")
    if iqr is None or not p50 or not math.isfinite(iqr) or p50 <= 0:
        return 0.0
    return 0.5 * float(iqr) / float(p50)


def band(ev: Evaluation, name: str, normalized: float) -> float:
    """The noise half-width of ``ev``'s normalized objective ``name`` (value ``normalized``)."""
    if not math.isfinite(normalized):
        return 0.0
    m = ev.measurement or {}
    if name == "latency_ms":
        return abs(normalized) * _relative_half_iqr(m.get("latency"))
    if name == "throughput_ips":
        batches = m.get("throughput") or []
        largest = max(batches, key=lambda s: s.get("batch_size", 0), default=None)
        return abs(normalized) * _relative_half_iqr(largest)
    if name == "size_bytes":
        return abs(normalized) * SIZE_BAND
    return 0.0


def noisy_fronts(F: np.ndarray, B: np.ndarray) -> list[np.ndarray]:
    """Non-dominated sorting under noisy dominance: positions into ``F``, best front first.

    The relation need not be transitive, so fronts are peeled one at a time (each is the set of
    rows no remaining row dominates); should a cycle leave no such row, the rest is one front.
    """
    n = len(F)
    if n == 0:
        return []
    tol = B[:, None, :] + B[None, :, :]
    no_worse = np.all(F[:, None, :] <= F[None, :, :] + tol, axis=2)
    better = np.any(F[:, None, :] < F[None, :, :] - tol, axis=2)
    dom = no_worse & better  # dom[i, j]: i dominates j
    np.fill_diagonal(dom, False)
    left = np.ones(n, dtype=bool)
    fronts: list[np.ndarray] = []
    while left.any():
        dominated = (dom & left[:, None]).any(axis=0)
        front = np.flatnonzero(left & ~dominated)
        if len(front) == 0:
            front = np.flatnonzero(left)
        fronts.append(front)
        left[front] = False
    return fronts


def twins(F: np.ndarray, B: np.ndarray) -> np.ndarray:
    """``t[i, j]``: rows ``i`` and ``j`` differ on no objective by more than their two bands."""
    return np.all(np.abs(F[:, None, :] - F[None, :, :]) <= B[:, None, :] + B[None, :, :], axis=2)


def distinct(F: np.ndarray, B: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Which rows represent their twins: walking ``order`` (best first), a row is kept unless it is
    a twin of a row already kept.  The mask has no two twins, and every dropped row has a kept
    twin that came earlier in ``order``."""
    t = twins(F, B)
    keep = np.zeros(len(F), dtype=bool)
    for i in order:
        if not (t[i] & keep).any():
            keep[i] = True
    return keep
