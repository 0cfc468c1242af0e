"""Stopping rules of a run: budgets, a "good enough" target, and hypervolume stagnation.

They read only a strategy's public counters (``done``, ``n_told``, ``pending``, ``generation``,
``archive``, ``hv_history``, ``objectives``), so they work with every registered strategy.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from petra_hw.search.objectives import MB, Objectives
from petra_hw.search.strategy.base import Strategy
from petra_hw.search.types import Evaluation


# -- stopping --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Good enough to stop: a quality drop (relative to the Original), latency and size bound."""

    max_quality_drop: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    def met_by(self, ev: Evaluation, objectives: Objectives) -> bool:
        if not ev.ok or not ev.full_fidelity or not ev.feasible or objectives.violation(ev) > 0:
            return False
        checks = [
            (self.max_quality_drop, objectives.quality_drop(ev)),
            (self.max_latency_ms, ev.objectives.get("latency_ms", math.inf)),
            (self.max_size_mb, ev.objectives.get("size_bytes", math.inf) / MB),
        ]
        return all(bound is None or value <= bound for bound, value in checks)


@dataclass(frozen=True)
class Stopper:
    """A run's stopping rules; ``reason`` names the first one that holds, else None.

    ``hv_stagnation_generations=k`` stops when the hypervolume (once positive) has not grown by
    more than ``hv_rel_tol`` (relative) over the last ``k`` tells.
    """

    max_generations: int | None = None
    max_evaluations: int | None = None
    time_budget_s: float | None = None
    target: Target | None = None
    hv_stagnation_generations: int | None = None
    hv_rel_tol: float = 1e-4

    def remaining_evaluations(self, strategy: Strategy) -> int | None:
        """How many more candidates the budget allows (ask no more than this)."""
        if self.max_evaluations is None:
            return None
        return max(0, self.max_evaluations - strategy.n_told - len(strategy.pending))

    def reason(
        self, strategy: Strategy, elapsed_s: float = 0.0, evaluations: Iterable[Evaluation] = ()
    ) -> str | None:
        """Check after each tell; ``evaluations`` (the last batch) are checked for the target
        too, since a target-meeting model need not be on the front of the objectives."""
        if strategy.done:
            return "search space exhausted"
        if self.max_evaluations is not None and strategy.n_told >= self.max_evaluations:
            return f"evaluation budget spent ({strategy.n_told} evaluations)"
        if self.max_generations is not None and strategy.generation >= self.max_generations:
            return f"generation budget spent ({strategy.generation} generations)"
        if self.time_budget_s is not None and elapsed_s >= self.time_budget_s:
            return f"time budget spent ({elapsed_s:.0f} s)"
        if self.target is not None and strategy.objectives is not None:
            for ev in [*strategy.archive, *evaluations]:
                if self.target.met_by(ev, strategy.objectives):
                    return f"target met by {ev.candidate.pipeline}"
        k = self.hv_stagnation_generations
        h = strategy.hv_history
        if (
            k is not None
            and len(h) > k
            and h[-1 - k] > 0
            and h[-1] <= h[-1 - k] * (1 + self.hv_rel_tol)
        ):
            return f"hypervolume stagnated for {k} generations ({h[-1]:.4g})"
        return None
