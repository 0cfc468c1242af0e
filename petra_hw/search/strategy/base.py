"""The ask/tell interface every search strategy implements, and the registry of strategies.

``ask(n)`` hands out at most ``n`` new candidates (fewer when the strategy must wait for tells or
the space is exhausted; ``done`` then says which); ``tell(evaluations)`` takes results back in any
grouping.  Every strategy deduplicates by *canonical key* (the canonical form of the pipeline, with
settings ignored when no step trains) so that equivalent pipelines are evaluated once, counts its
budget the same way (``n_asked``, ``n_told``, ``generation``), keeps the run's feasible Pareto front
(``archive``) and its hypervolume after every tell (``hv_history``), and saves a JSON-able
``state_dict`` (random generator included) from which a resumed run asks exactly what the original
would have asked.

Strategies are registered by name (``@register_strategy``, as Optuna's samplers are chosen by
class): a subclass implements ``_ask``/``_tell`` (and extends ``state_dict`` when it keeps more
state) in one module; see docs/extending.md.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import numpy as np

from petra_hw.canonical import canonicalize
from petra_hw.errors import UserError
from petra_hw.pipeline import Pipeline
from petra_hw.search.objectives import Objectives
from petra_hw.search.selection import hypervolume, pareto_front
from petra_hw.search.space import SearchSpace, with_inactive_defaults
from petra_hw.search.types import Candidate, Evaluation

if TYPE_CHECKING:
    from petra_hw.search.guide import Guide

log = logging.getLogger(__name__)


# -- identity --------------------------------------------------------------------------------
def canonical_key(pipeline: Pipeline) -> str:
    """Hash of the canonical form, with what cannot change the model left out: parameters a step
    ignores (``Reg(reg=lai)`` reads no ``lambda_o``) and settings when no step trains, so
    ``LR ; lr=0.1`` and ``LR`` are one candidate."""
    canon = canonicalize(pipeline)
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


def evaluation_to_state(ev: Evaluation) -> dict[str, Any]:
    """What selection needs, without raw timing samples (state stays small)."""
    return dataclasses.replace(ev, measurement=None).to_json()


# -- the interface ---------------------------------------------------------------------------
class Strategy:
    """Shared bookkeeping: dedupe, budget counters, front, hypervolume history, state."""

    name: ClassVar[str] = ""
    # True: the constructor takes ``population_size`` (tune passes ``--population``)
    uses_population: ClassVar[bool] = False
    # True: it breeds children through ``_propose``, so tune hands it a guide
    uses_guide: ClassVar[bool] = False

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
        # Screens and ranks children (``_propose``); set by the tune loop, None: plain breeding.
        self.guide: Guide | None = None
        if objectives is not None:
            self._seen.add(canonical_key(objectives.original.candidate.pipeline))

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
        # a backend variant is another point of a told candidate, not a candidate of its own
        self.n_told += sum(1 for ev in evaluations if not ev.candidate.variant)
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

    def _propose(self, draw: Callable[[], Candidate]) -> Candidate | None:
        """One child from ``draw`` through the guide: ``guide.draws`` unseen drafts, the screened
        ones claimed (never drawn again) and recorded by the guide, the best of the rest by its
        ranking (``petra_hw.search.guide``); None when every draft was screened or seen.  The
        caller claims the child it keeps."""
        if self.guide is None:
            return draw()
        drafts: dict[str, Candidate] = {}
        for _ in range(4 * self.guide.draws):
            if len(drafts) == self.guide.draws:
                break
            cand = draw()
            key = canonical_key(cand.pipeline)
            if key in self._seen or key in drafts:
                continue
            if self.guide.screen(cand) is not None:
                self._seen.add(key)
                continue
            drafts[key] = cand
        return self.guide.choose(list(drafts.values()), self.archive) if drafts else None

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
            "archive": [evaluation_to_state(e) for e in self.archive],
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


def max_attempts(n: int) -> int:
    return 50 * n + 100


# -- the registry ----------------------------------------------------------------------------
STRATEGIES: dict[str, type[Strategy]] = {}
S = TypeVar("S", bound=type[Strategy])


def register_strategy(cls: S) -> S:
    """Class decorator: make ``cls`` available by its ``name`` (``tune --strategy NAME``)."""
    if not cls.name:
        raise ValueError(f"{cls.__qualname__} needs a class attribute 'name'")
    other = STRATEGIES.get(cls.name)
    if other is not None and other.__qualname__ != cls.__qualname__:
        raise ValueError(f"strategy name {cls.name!r} is taken by {other.__qualname__}")
    STRATEGIES[cls.name] = cls
    return cls


def get_strategy(name: str, space: SearchSpace, seed: int = 0, **kwargs: Any) -> Strategy:
    """A registered strategy by name (keyword arguments go to its constructor)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise UserError(
            f"unknown search strategy {name!r} (known: {', '.join(STRATEGIES)})"
        ) from None
    return cls(space, seed, **kwargs)
