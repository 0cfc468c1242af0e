"""``nsga2``: pymoo's NSGA-II on a fixed-length real encoding of pipelines (``PipelineCodec``),
a comparison run for the evolution."""

from __future__ import annotations

from typing import Any

import numpy as np

from petra_hw.kinds import SETTINGS
from petra_hw.pipeline import Pipeline, Step
from petra_hw.search.objectives import Objectives
from petra_hw.search.space import SearchSpace
from petra_hw.search.strategy.base import Strategy, canonical_key, register_strategy
from petra_hw.search.types import Candidate, Evaluation

FAILED_VALUE = 1e6  # what pymoo sees for a failed evaluation's objectives and violation
MAX_IDLE_GENERATIONS = 20  # generations with nothing new before the space counts as spent


class PipelineCodec:
    """Pipelines as points of [0, 1]^d, so a real-coded GA can search them.

    ``max_len`` slots of ``1 + width`` genes: the first picks the kind (``floor(g * (K + 1))``,
    0 = empty slot), the others are the kind's searchable parameters in table order, each mapped
    through its range's unit scale (``width`` = the most searchable parameters of any kind; a kind
    with fewer ignores the rest).  Then one gene per searchable setting.  Every point decodes to a
    pipeline in the space: when too few slots are filled, the empty slots with the highest kind
    genes are filled.
    """

    def __init__(self, space: SearchSpace):
        self.space = space
        self.width = max(len(space.searchable_params(k)) for k in space.kinds)
        self.settings = space.searchable_settings()
        self.n_var = space.max_len * (1 + self.width) + len(self.settings)

    def decode(self, x: np.ndarray) -> Pipeline:
        sp, k = self.space, len(self.space.kinds)
        slots = np.asarray(x[: sp.max_len * (1 + self.width)], dtype=float).reshape(
            sp.max_len, 1 + self.width
        )
        picks = [min(int(g * (k + 1)), k) for g in slots[:, 0]]
        empty = sorted((i for i, p in enumerate(picks) if p == 0), key=lambda i: -slots[i, 0])
        for i in empty[: max(0, sp.min_len - sum(p > 0 for p in picks))]:
            picks[i] = 1 + min(int(slots[i, 0] * k), k - 1)
        steps = [
            self._step(sp.kinds[p - 1], slot[1:])
            for p, slot in zip(picks, slots, strict=True)
            if p > 0
        ]
        genes = dict(zip(self.settings, x[sp.max_len * (1 + self.width) :], strict=True))
        trains = any(s.spec.trains for s in steps)
        settings = {
            p.name: sp.setting_range(p.name).from_unit(genes[p.name])
            if trains and p.name in genes
            else sp.setting_range(p.name).clip(p.default)
            for p in SETTINGS.params
        }
        return Pipeline.make(steps, **settings)

    def _step(self, kind: str, genes: np.ndarray) -> Step:
        searched = dict(zip(self.space.searchable_params(kind), genes, strict=False))
        params: dict[str, Any] = {}
        for name in (p.name for p in Step.make(kind).spec.params):  # a range may depend on
            r = self.space.param_range(kind, name, params)  # an earlier parameter's value
            params[name] = r.from_unit(searched.get(name, 0.5))
        return self.space.normalize(Step.make(kind, **params))


@register_strategy
class NSGA2Strategy(Strategy):
    """pymoo's NSGA-II (SBX + polynomial mutation, rank and crowding) on ``PipelineCodec``.

    One pymoo generation is handed out over as many asks as needed; members that decode to a
    pipeline already evaluated reuse its result.  The state is the seed plus every result, and a
    resume replays pymoo's generations from it (pymoo is deterministic given its seed), so no
    pickled algorithm object is stored.
    """

    name = "nsga2"
    uses_population = True

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        objectives: Objectives | None = None,
        population_size: int = 16,
    ):
        if objectives is None:
            raise ValueError("the nsga2 strategy needs objectives (a measured Original)")
        super().__init__(space, seed, objectives)
        self.population_size = population_size
        self.codec = PipelineCodec(space)
        self.names = objectives.active_names()
        self._results: dict[str, list[float]] = {}  # canonical key -> normalized F + [violation]
        self._results[canonical_key(objectives.original.candidate.pipeline)] = self._row(
            objectives.original
        )
        self._setup()

    def _setup(self) -> None:
        from pymoo.algorithms.moo.nsga2 import NSGA2
        from pymoo.core.problem import Problem
        from pymoo.core.termination import NoTermination

        self._problem = Problem(
            n_var=self.codec.n_var, n_obj=len(self.names), n_ieq_constr=1, xl=0.0, xu=1.0
        )
        self._algorithm = NSGA2(pop_size=self.population_size)
        self._algorithm.setup(self._problem, seed=self.seed, termination=NoTermination())
        self._pop: Any = None
        self._members: list[tuple[str, Pipeline]] = []

    def _row(self, ev: Evaluation) -> list[float]:
        assert self.objectives is not None
        m = self.objectives.matrix([ev], self.names)
        if m.failed[0]:
            return [FAILED_VALUE] * (len(self.names) + 1)
        return [float(v) for v in m.F[0]] + [float(m.cv[0])]

    def _open_generation(self) -> None:
        self._pop = self._algorithm.ask()
        pipelines = [self.codec.decode(x) for x in self._pop.get("X")]
        self._members = [(canonical_key(p), p) for p in pipelines]

    def _close_generation(self) -> None:
        from pymoo.core.evaluator import Evaluator
        from pymoo.problems.static import StaticProblem

        rows = np.array([self._results[key] for key, _ in self._members])
        Evaluator().eval(StaticProblem(self._problem, F=rows[:, :-1], G=rows[:, -1:]), self._pop)
        self._algorithm.tell(infills=self._pop)
        self._pop, self._members = None, []
        self.generation += 1

    def _complete(self) -> bool:
        return all(key in self._results for key, _ in self._members)

    def _ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(MAX_IDLE_GENERATIONS):  # generations that are all cache hits are skipped
            if self._pop is None:
                self._open_generation()
            for key, p in self._members:
                if len(out) == n:
                    break
                if key not in self._results and self._claim(p):
                    out.append(Candidate(p, self.generation, None, "nsga2"))
            if len(out) == n or not self._complete():
                break
            self._close_generation()
        return out

    def _tell(self, evaluations: list[Evaluation]) -> None:
        for ev in evaluations:
            if ev.candidate.variant:  # one row per genome: the backend that trained it
                continue
            self._results[canonical_key(ev.candidate.pipeline)] = self._row(ev)
        if self._pop is not None and self._complete():
            self._close_generation()

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "results": dict(self._results),
            "open": self._pop is not None,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self._results = {k: [float(v) for v in row] for k, row in state["results"].items()}
        generations = self.generation
        self._setup()
        for _ in range(generations):
            self._open_generation()
            if not self._complete():
                raise ValueError("nsga2 state does not replay: a generation lacks results")
            self._close_generation()
        self.generation = generations
        if state["open"]:
            self._open_generation()
