"""Search strategies behind one ask/tell interface, and the rules that stop a run.

``ask(n)`` hands out at most ``n`` new candidates (fewer when the strategy must wait for tells or
the space is exhausted; ``done`` then says which); ``tell(evaluations)`` takes results back in any
grouping.  Every strategy deduplicates by *canonical key* (the canonical form of the pipeline, with
settings ignored when no step trains) so that equivalent pipelines are evaluated once, counts its
budget the same way (``n_asked``, ``n_told``, ``generation``), keeps the run's feasible Pareto front
(``archive``) and its hypervolume after every tell (``hv_history``), and saves a JSON-able
``state_dict`` (random generator included) from which a resumed run asks exactly what the original
would have asked.

- ``evolution``: PETRA's (mu + lambda) evolution: canonical seeds plus random pipelines, parents by
  binary tournament on (front rank, hypervolume contribution), mutation only (``petra_hw.search.mutation``) with an adaptive
  operator bandit, survival by constrained non-dominated sorting and hypervolume.
- ``random``: uniform random pipelines from the space (the baseline any search must beat).
- ``nsga2``: pymoo's NSGA-II on a fixed-length real encoding (``PipelineCodec``), as a reference
  for the evolution.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from petra_hw.errors import UserError
from petra_hw.kinds import SETTINGS
from petra_hw.pipeline import Pipeline, Step, parse_pipeline
from petra_hw.search.mutation import OPERATORS, SIGMA, Mutator, NoMutation, OperatorBandit
from petra_hw.search.objectives import MB, Objectives
from petra_hw.search.selection import hypervolume, merit, pareto_front, survive
from petra_hw.search.space import SearchSpace, with_inactive_defaults
from petra_hw.search.types import Candidate, Evaluation

log = logging.getLogger(__name__)

SEED_PIPELINES = ("LR", "Pr", "PTQ")
FAILED_VALUE = 1e6  # what pymoo sees for a failed evaluation's objectives and violation
MAX_IDLE_GENERATIONS = 20  # nsga2 generations with nothing new before the space counts as spent


# -- identity --------------------------------------------------------------------------------
@functools.cache
def _canonicalizer() -> Callable[[Pipeline], Pipeline]:
    try:
        from petra_hw.canonical import canonicalize
    except ImportError:  # the canonical module is optional: identity is a correct (weaker) key
        log.warning("petra_hw.canonical not found: deduplicating by exact pipeline only")
        return lambda p: p
    return canonicalize


def canonical_key(pipeline: Pipeline) -> str:
    """Hash of the canonical form, with what cannot change the model left out: parameters a step
    ignores (``Reg(reg=lai)`` reads no ``lambda_o``) and settings when no step trains, so
    ``LR ; lr=0.1`` and ``LR`` are one candidate."""
    canon = _canonicalizer()(pipeline)
    steps = [with_inactive_defaults(s) for s in canon.steps]
    if not any(s.spec.trains for s in steps):
        return Pipeline.make(steps).hash
    return canon.replace_steps(steps).hash


# -- JSON state helpers ----------------------------------------------------------------------
def _candidate_to_state(c: Candidate) -> dict[str, Any]:
    return {
        "pipeline": c.pipeline.to_json(),
        "generation": c.generation,
        "parent": c.parent,
        "operator": c.operator,
    }


def _candidate_from_state(d: dict[str, Any]) -> Candidate:
    return Candidate(Pipeline.from_json(d["pipeline"]), d["generation"], d["parent"], d["operator"])


def _evaluation_to_state(ev: Evaluation) -> dict[str, Any]:
    """What selection needs, without raw timing samples (state stays small)."""
    return dataclasses.replace(ev, measurement=None).to_json()


# -- stopping --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Target:
    """Good enough to stop: a quality drop (relative to the baseline), latency and size bound."""

    max_quality_drop: float | None = None
    max_latency_ms: float | None = None
    max_size_mb: float | None = None

    def met_by(self, ev: Evaluation, objectives: Objectives) -> bool:
        if not ev.ok or not ev.feasible or objectives.violation(ev) > 0:
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


# -- the interface ---------------------------------------------------------------------------
class Strategy:
    """Shared bookkeeping: dedupe, budget counters, front, hypervolume history, state."""

    name: ClassVar[str] = ""

    def __init__(self, space: SearchSpace, seed: int = 0, objectives: Objectives | None = None):
        self.space = space
        self.seed = int(seed)
        self.objectives = objectives
        self.rng = np.random.default_rng(self.seed)
        self.generation = 0
        self.n_asked = 0
        self.n_told = 0
        self.exhausted = False
        self.hv_history: list[float] = []
        self.archive: list[Evaluation] = []
        self._seen: set[str] = set()
        self._pending: dict[str, Candidate] = {}
        if objectives is not None:
            self._seen.add(canonical_key(objectives.baseline.candidate.pipeline))

    @property
    def done(self) -> bool:
        """True when the last ask found nothing new and nothing is pending: the space is spent."""
        return self.exhausted

    @property
    def pending(self) -> list[Candidate]:
        """Asked and not yet told (re-submit these after a resume)."""
        return list(self._pending.values())

    def front(self) -> list[Evaluation]:
        return list(self.archive)

    def ask(self, n: int) -> list[Candidate]:
        out = self._ask(n) if n > 0 else []
        if n > 0:
            self.exhausted = not out and not self._pending
            if self.exhausted:
                log.info("%s: no new candidate left in the search space", self.name)
        for c in out:
            self._pending[c.id] = c
        self.n_asked += len(out)
        return out

    def tell(self, evaluations: Sequence[Evaluation]) -> None:
        evaluations = list(evaluations)
        if not evaluations:
            return
        for ev in evaluations:
            self._pending.pop(ev.candidate.id, None)
            self._seen.add(canonical_key(ev.candidate.pipeline))
        self.n_told += len(evaluations)
        self._tell(evaluations)
        if self.objectives is not None:
            self.archive = pareto_front(self.archive + evaluations, self.objectives)
            self.hv_history.append(hypervolume(self.archive, self.objectives))

    def _claim(self, pipeline: Pipeline) -> bool:
        """Reserve ``pipeline``'s canonical key; False when it (or an equivalent) was seen."""
        key = canonical_key(pipeline)
        if key in self._seen:
            return False
        self._seen.add(key)
        return True

    def _ask(self, n: int) -> list[Candidate]:
        raise NotImplementedError

    def _tell(self, evaluations: list[Evaluation]) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        return {
            "strategy": self.name,
            "seed": self.seed,
            "rng": self.rng.bit_generator.state,
            "generation": self.generation,
            "n_asked": self.n_asked,
            "n_told": self.n_told,
            "exhausted": self.exhausted,
            "hv_history": list(self.hv_history),
            "archive": [_evaluation_to_state(e) for e in self.archive],
            "seen": sorted(self._seen),
            "pending": [_candidate_to_state(c) for c in self._pending.values()],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("strategy") != self.name:
            raise ValueError(
                f"state of strategy {state.get('strategy')!r} loaded into {self.name!r}"
            )
        self.seed = int(state["seed"])
        self.rng.bit_generator.state = state["rng"]
        self.generation = int(state["generation"])
        self.n_asked, self.n_told = int(state["n_asked"]), int(state["n_told"])
        self.exhausted = bool(state["exhausted"])
        self.hv_history = [float(h) for h in state["hv_history"]]
        self.archive = [Evaluation.from_json(d) for d in state["archive"]]
        self._seen = set(state["seen"])
        self._pending = {c.id: c for c in map(_candidate_from_state, state["pending"])}


def _max_attempts(n: int) -> int:
    return 50 * n + 100


class RandomStrategy(Strategy):
    """Uniform random pipelines from the space, each canonical pipeline once."""

    name = "random"

    def _ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        for _ in range(_max_attempts(n)):
            if len(out) == n:
                break
            p = self.space.random_pipeline(self.rng)
            if self._claim(p):
                out.append(Candidate(p, self.generation, None, "random"))
        return out

    def _tell(self, evaluations: list[Evaluation]) -> None:
        self.generation += 1


class EvolutionStrategy(Strategy):
    """PETRA's evolution: mutation-only (mu + lambda) with hypervolume survival.

    The first ``population_size`` candidates are the canonical seeds (those the space holds,
    repaired into its ranges) and random pipelines; after that each candidate is a mutant of a
    survivor picked by binary tournament on front rank, then hypervolume contribution (parents at
    the extremes and in sparse parts of the front win ties).  Each tell runs survival over survivors
    plus newcomers and rewards an operator when its child entered the elite survivors.
    """

    name = "evolution"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        objectives: Objectives | None = None,
        population_size: int = 16,
        n_random: int = 2,
        seed_pipelines: Sequence[str] = SEED_PIPELINES,
        p_min: float = 0.05,
        sigma: float = SIGMA,
    ):
        if objectives is None:
            raise ValueError("the evolution strategy needs objectives (a measured baseline)")
        super().__init__(space, seed, objectives)
        if population_size < 2:
            raise ValueError("population_size must be at least 2")
        self.population_size = population_size
        self.n_random = n_random
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
        return Candidate(child, self.generation, parent.candidate.id, op)

    def _ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        attempts = _max_attempts(n)
        for attempt in range(attempts):
            if len(out) == n:
                break
            if not self.survivors or self._n_initial < self.population_size:
                cand = self._initial()
            elif attempt < attempts // 2:
                cand = self._offspring()
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
            "survivors": [_evaluation_to_state(e) for e in self.survivors],
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


# -- NSGA-II ---------------------------------------------------------------------------------
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
        params = {
            name: self.space.param_range(kind, name).from_unit(searched.get(name, 0.5))
            for name in (p.name for p in Step.make(kind).spec.params)
        }
        return self.space.normalize(Step.make(kind, **params))


class NSGA2Strategy(Strategy):
    """pymoo's NSGA-II (SBX + polynomial mutation, rank and crowding) on ``PipelineCodec``.

    One pymoo generation is handed out over as many asks as needed; members that decode to a
    pipeline already evaluated reuse its result.  The state is the seed plus every result, and a
    resume replays pymoo's generations from it (pymoo is deterministic given its seed), so no
    pickled algorithm object is stored.
    """

    name = "nsga2"

    def __init__(
        self,
        space: SearchSpace,
        seed: int = 0,
        objectives: Objectives | None = None,
        population_size: int = 16,
    ):
        if objectives is None:
            raise ValueError("the nsga2 strategy needs objectives (a measured baseline)")
        super().__init__(space, seed, objectives)
        self.population_size = population_size
        self.codec = PipelineCodec(space)
        self.names = objectives.active_names()
        self._results: dict[str, list[float]] = {}  # canonical key -> normalized F + [violation]
        self._results[canonical_key(objectives.baseline.candidate.pipeline)] = self._row(
            objectives.baseline
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


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (EvolutionStrategy, RandomStrategy, NSGA2Strategy)
}


def get_strategy(name: str, space: SearchSpace, seed: int = 0, **kwargs: Any) -> Strategy:
    """A strategy by name: ``evolution``, ``random`` or ``nsga2`` (keyword arguments go to it)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise UserError(
            f"unknown search strategy {name!r} (known: {', '.join(STRATEGIES)})"
        ) from None
    return cls(space, seed, **kwargs)
