"""``random``: uniform random pipelines from the space, the comparison any search must beat."""

from __future__ import annotations

from petra_hw.search.strategy.base import Strategy, max_attempts, register_strategy
from petra_hw.search.types import Candidate, Evaluation


@register_strategy
class RandomStrategy(Strategy):
    """Uniform random pipelines from the space, each canonical pipeline once."""

    name = "random"

    def _ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(max_attempts(n)):
            if len(out) == n:
                break
            p = self.space.random_pipeline(self.rng)
            if self._claim(p):
                out.append(Candidate(p, self.generation, None, "random"))
        return out

    def _tell(self, evaluations: list[Evaluation]) -> None:
        self.generation += 1
