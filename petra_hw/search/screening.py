"""Screening: skip training a child that cannot enter the front, judged on cheap objectives.

A child is *screened* (recorded with the reason, never trained, compiled or timed) when one
evaluated point A is certain to dominate it.  What we know of the child before training is its
structure (``petra_hw.search.features``): MACs and estimated bytes; its quality is unknown.
The rule, all of it required:

1. the child's structure and A's are *exact* (the shapes the full pipelines build);
2. A and the child deploy at the same precision on the same backend: only then are MACs and
   estimated bytes monotone proxies of latency and artifact size (across precisions they are
   not: INT8 runs slower than FP32 on the digits CNN, whose time is per-op overhead);
3. A has no more MACs and no more estimated bytes than the child, and fewer of one by more than
   ``margin`` (relative): a tie on the proxies says nothing, so quality would decide;
4. A is feasible and its quality is the best measured in the run so far (the Original
   included): the child's quality is unknown, so only a point at the quality ceiling of the run
   dominates it whatever quality the child reaches.

Rule 4 is what keeps a small but inaccurate point from screening a larger child that would be
more accurate (a child non-dominated on quality).  Its one assumption: a child does not exceed
the best quality the run has measured.  Predicted latency never screens: the cost model only
orders candidates (``petra_hw.search.guide``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from petra_hw.search.features import Structure
from petra_hw.search.objectives import Objectives
from petra_hw.search.types import Evaluation

MARGIN = 0.01  # a proxy must be smaller by more than 1% to count as smaller


def proxy_dominates(a: Structure, b: Structure, margin: float = MARGIN) -> bool:
    """``a`` is certainly no slower and no larger than ``b`` (rules 1-3)."""
    if not (a.exact and b.exact) or (a.precision, a.backend) != (b.precision, b.backend):
        return False
    if a.macs > b.macs or a.size_bytes > b.size_bytes:
        return False
    return a.macs < b.macs * (1 - margin) or a.size_bytes < b.size_bytes * (1 - margin)


def screen_reason(
    child: Structure | None,
    evaluated: Iterable[tuple[Evaluation, Structure]],
    objectives: Objectives,
    margin: float = MARGIN,
) -> str | None:
    """Why ``child`` is certainly dominated by an evaluated point, or None (evaluate it)."""
    if child is None or not child.exact:
        return None
    points = [(e, s) for e, s in evaluated if e.ok and not e.candidate.reference]
    drops = [objectives.quality_drop(e) for e, _ in points]
    finite = [d for d in drops if math.isfinite(d)]
    if not finite:
        return None
    ceiling = min(finite)  # the best quality measured (smallest drop)
    for (ev, s), drop in zip(points, drops, strict=True):
        if not ev.feasible or objectives.violation(ev) > 0 or not drop <= ceiling:
            continue
        if proxy_dominates(s, child, margin):
            return (
                f"dominated by {ev.candidate.pipeline} ({s.precision} on {s.backend}): "
                f"MACs {s.macs:.4g} <= {child.macs:.4g}, est. bytes {s.size_bytes:.4g} <= "
                f"{child.size_bytes:.4g}, at the run's best quality (drop {drop:+.4f})"
            )
    return None
