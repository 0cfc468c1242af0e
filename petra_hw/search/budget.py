"""The time budget as a hard bound: admission of candidates and a deadline for running ones.

Checking the budget only between generations lets a run overshoot by a whole generation (an
8-minute budget once ran 966 s).  Here the executor asks a ``BudgetGate`` before it starts each
candidate and stops running ones at the deadline:

- a candidate is *not started* when the time it is expected to take would overrun the budget; the
  expectation is measured, not modelled: its parent's wall time, else the median of evaluations
  with the same step kinds, else the median of all, each scaled to the candidate's fidelity (the
  training share of ``apply_s`` scales, compiling and timing do not); with no measurement yet it
  is started; a backend variant (``search.variants``) is admitted on its own, expected to take
  what the run's variants for the same backend took (else any variant's median; none: started);
- a running candidate still busy at the deadline is stopped and recorded with ``error_kind``
  ``budget``: not the candidate's failure (no strategy is told it, and a resume evaluates it
  again, as it does ``infra`` entries).
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from petra_hw.search.types import Candidate, Evaluation

BUDGET = "budget"  # error_kind of a candidate stopped (or not started) by the time budget
NOT_STARTED = "not started: "  # how the error of a candidate that never started begins


def scaled_seconds(ev: Evaluation, fidelity: float) -> float | None:
    """``ev``'s measured wall time, had its training run at ``fidelity``."""
    total = ev.timings_s.get("total_s")
    if total is None:
        return None
    apply_s = min(ev.timings_s.get("apply_s", 0.0), total)
    return total - apply_s + apply_s * fidelity / max(ev.fidelity, 1e-9)


def _kinds(ev_or_c: Evaluation | Candidate) -> tuple[str, ...]:
    c = ev_or_c.candidate if isinstance(ev_or_c, Evaluation) else ev_or_c
    return tuple(s.kind for s in c.pipeline.steps)


def expected_seconds(candidate: Candidate, journal: Mapping[str, Evaluation]) -> float | None:
    """How long ``candidate`` should take, from the run's own measurements (None: no data)."""

    def usable(e: Evaluation) -> bool:
        return (
            bool(e.candidate.pipeline.steps) and e.error_kind != BUDGET and "total_s" in e.timings_s
        )

    if candidate.variant:  # compile + judge only: other variants, never a training's time
        variants = [e for e in journal.values() if e.candidate.variant and usable(e)]
        same = [e for e in variants if e.candidate.variant == candidate.variant]
        pool = same or variants
        return statistics.median(e.timings_s["total_s"] for e in pool) if pool else None
    measured = [
        e
        for e in journal.values()
        if not e.candidate.reference and not e.candidate.variant and usable(e)
    ]
    parent = journal.get(candidate.parent or "")
    if parent is not None and usable(parent):
        return scaled_seconds(parent, candidate.fidelity)
    kinds = _kinds(candidate)
    for pool in ([e for e in measured if _kinds(e) == kinds], measured):
        times = [t for e in pool if (t := scaled_seconds(e, candidate.fidelity)) is not None]
        if times:
            return statistics.median(times)
    return None


@dataclass(frozen=True)
class BudgetGate:
    """The deadline (``time.monotonic`` seconds) and the rule that admits a candidate."""

    deadline: float
    expected: Callable[[Candidate], float | None]

    def refusal(self, candidate: Candidate, now: float) -> str | None:
        """Why ``candidate`` may not start now (None: it may)."""
        left = self.deadline - now
        if left <= 0:
            return "the time budget is spent"
        expected = self.expected(candidate)
        if expected is not None and expected > left:
            return f"expected {expected:.0f} s, {left:.0f} s of the time budget left"
        return None

    def stopped(self, elapsed_s: float) -> str:
        return f"stopped at the time budget after {elapsed_s:.0f} s"
