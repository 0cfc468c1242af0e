"""``evolution``: PETRA's (mu + lambda) evolution.

Canonical seeds plus random pipelines, parents by binary tournament on (front rank, hypervolume
contribution), mutation only (``petra_hw.search.mutation``) with an adaptive operator bandit,
survival by constrained non-dominated sorting and hypervolume.

Random survivors: about one in ``RANDOM_SURVIVOR_EVERY`` survivors (``population_size // 8``) is
kept at random instead of by merit, and only from a population of 8 upward: in a population of 4,
one random survivor would already be a quarter of the parents that rank and hypervolume did not
choose (see docs/decisions.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from petra_hw.pipeline import parse_pipeline
from petra_hw.search.mutation import OPERATORS, SIGMA, Mutator, NoMutation, OperatorBandit
from petra_hw.search.objectives import Objectives
from petra_hw.search.selection import merit, survive
from petra_hw.search.space import SearchSpace
from petra_hw.search.strategy.base import (
    Strategy,
    evaluation_to_state,
    max_attempts,
    register_strategy,
)
from petra_hw.search.types import Candidate, Evaluation

log = logging.getLogger(__name__)

# The first generation: the distinct single-structure pipelines (quantize only; prune, recover,
# quantize; decompose, recover, quantize; quantization-aware training), not PTQ calibration
# variants that differ by noise.  A seed whose kinds the run's space lacks (fitted to the model:
# no LR where no layer decomposes) is left out; values outside the space's ranges are clipped.
# Pr removes half the channels: the shape that shrinks a CNN (2.7x on ResNet-18, issue 20).
SEED_PIPELINES = (
    "PTQ",
    "Pr(ratio=0.5) - Tr(epochs=3) - PTQ",
    "LR - Tr(epochs=3) - PTQ",
    "QAT",
)
RANDOM_SURVIVOR_EVERY = 8  # one random survivor per this many; none below this population


def default_random_survivors(population_size: int) -> int:
    """Survivors kept at random by default: ``population_size // 8`` (0 below 8)."""
    return population_size // RANDOM_SURVIVOR_EVERY


@register_strategy
class EvolutionStrategy(Strategy):
    """PETRA's evolution: mutation-only (mu + lambda) with hypervolume survival.

    The first ``population_size`` candidates are the canonical seeds (those the space holds,
    repaired into its ranges) and random pipelines; after that each candidate is a mutant of a
    survivor picked by binary tournament on front rank, then hypervolume contribution (parents at
    the extremes and in sparse parts of the front win ties).  Each tell runs survival over survivors
    plus newcomers and rewards an operator when its child entered the elite survivors.
    ``n_random`` survivors (default :func:`default_random_survivors`) are kept at random.
    """

    name = "evolution"
    uses_population = True
    uses_guide = True

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        objectives: Objectives | None = None,
        population_size: int = 16,
        n_random: int | None = None,
        seed_pipelines: Sequence[str] = SEED_PIPELINES,
        p_min: float = 0.05,
        sigma: float = SIGMA,
    ):
        if objectives is None:
            raise ValueError("the evolution strategy needs objectives (a measured Original)")
        super().__init__(space, seed, objectives)
        if population_size < 2:
            raise ValueError("population_size must be at least 2")
        self.population_size = population_size
        self.n_random = default_random_survivors(population_size) if n_random is None else n_random
        self.mutator = Mutator(space, OperatorBandit(OPERATORS, p_min=p_min), sigma)
        self.seeds = [
            space.repair(p, self.rng)
            for p in map(parse_pipeline, seed_pipelines)
            if all(s.kind in space.kinds for s in p.steps)
        ]
        self.survivors: list[Evaluation] = []
        self.survivor_merit: list[tuple[int, float]] = []  # (front rank, -HV contribution)
        self._n_initial = 0

    def _initial(self) -> Candidate:
        if self._n_initial < len(self.seeds):
            p, op = self.seeds[self._n_initial], "seed"
        else:
            p, op = self.space.random_pipeline(self.rng), "random"
        self._n_initial += 1
        return Candidate(p, 0, None, op)

    def _parent(self) -> Evaluation:
        i, j = self.rng.integers(len(self.survivors), size=2)
        return self.survivors[i if self.survivor_merit[i] <= self.survivor_merit[j] else j]

    def _offspring(self) -> Candidate:
        parent = self._parent()
        try:
            child, op = self.mutator.mutate(parent.candidate.pipeline, self.rng)
        except NoMutation as exc:
            log.debug("%s; sampling a random pipeline instead", exc)
            return Candidate(self.space.random_pipeline(self.rng), self.generation, None, "random")
        # a backend variant's child descends from the evaluation that trained the model
        return Candidate(child, self.generation, parent.candidate.trained_id, op)

    def _ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        attempts = max_attempts(n)
        for attempt in range(attempts):
            if len(out) == n:
                break
            if not self.survivors or self._n_initial < self.population_size:
                cand = self._initial()
            elif attempt < attempts // 2:
                proposed = self._propose(self._offspring)  # screened / ranked by the guide
                if proposed is None:
                    continue
                cand = proposed
            else:  # mutants keep repeating known pipelines: widen with random ones
                cand = Candidate(
                    self.space.random_pipeline(self.rng), self.generation, None, "random"
                )
            if self._claim(cand.pipeline):
                out.append(cand)
        return out

    def _tell(self, evaluations: list[Evaluation]) -> None:
        assert self.objectives is not None
        known = {e.candidate.id for e in self.survivors}
        pool = self.survivors + [e for e in evaluations if e.candidate.id not in known]
        m = self.objectives.matrix(pool)
        ref = self.objectives.reference_point(m.names)
        s = survive(m, self.population_size, ref, self.rng, self.n_random)
        elite = {pool[i].candidate.id for i in s.elite}
        for ev in evaluations:
            if ev.candidate.operator in self.mutator.operators:
                self.mutator.reward(ev.candidate.operator, ev.ok and ev.candidate.id in elite)
        self.survivors = [pool[i] for i in s.survivors]
        kept = self.objectives.matrix(self.survivors)
        self.survivor_merit = merit(kept, self.objectives.reference_point(kept.names))
        self.generation += 1
        log.debug(
            "generation %d: operator probabilities %s",
            self.generation,
            self.mutator.probabilities(),
        )

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "survivors": [evaluation_to_state(e) for e in self.survivors],
            "survivor_merit": [list(x) for x in self.survivor_merit],
            "n_initial": self._n_initial,
            "mutator": self.mutator.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.survivors = [Evaluation.from_json(d) for d in state["survivors"]]
        self.survivor_merit = [(int(r), float(c)) for r, c in state["survivor_merit"]]
        self._n_initial = int(state["n_initial"])
        self.mutator.load_state_dict(state["mutator"])
