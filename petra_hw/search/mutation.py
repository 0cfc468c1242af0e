"""Variation by mutation, with an adaptive choice of operator.

PETRA varies pipelines by mutation only (crossover of compression pipelines mixes steps whose
effect depends on what came before them).  Local operators make a *neighbourhood* move on one
hyperparameter, so good parents produce similar children; global operators change the structure
(insert, delete, swap, replace a step) or a model-level setting.  Which operator pays off depends
on the model and the stage of the search, so an adaptive operator selector learns it online:
probability matching (Thierens, GECCO 2005) over an exponentially weighted success rate, with a
floor probability so that no operator dies out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np

from petra_hw.kinds import KINDS, ParamValue
from petra_hw.pipeline import Pipeline, Step
from petra_hw.rank_rules import equivalent_threshold
from petra_hw.search.space import ParamRange, SearchSpace, round_sig

log = logging.getLogger(__name__)

LOCAL_OPERATORS = ("tweak", "lr")
GLOBAL_OPERATORS = ("insert", "delete", "swap", "replace", "optimizer", "loss")
OPERATORS = LOCAL_OPERATORS + GLOBAL_OPERATORS
SIGMA = 0.1  # std of a numeric step, as a fraction of the (log-)range
MAX_STEP_SIGMAS = 3.0  # numeric steps are truncated here: a bounded neighbourhood


class NoMutation(Exception):
    """No operator could make a new valid pipeline from this parent (a tiny or pinned space)."""


# -- neighbourhood moves ---------------------------------------------------------------------
def neighbour(
    r: ParamRange, value: ParamValue, rng: np.random.Generator, sigma: float = SIGMA
) -> ParamValue:
    """A nearby different value: a truncated Gaussian step on the unit (log-)scale for floats,
    +-1 or +-2 for integers, an adjacent or other choice for choices; ``value`` if pinned."""
    if not r.searchable:
        return value
    if r.is_choice:
        i = r.choices.index(r.clip(value))
        others = [j for j in range(len(r.choices)) if j != i]
        adjacent = [j for j in (i - 1, i + 1) if 0 <= j < len(r.choices)]
        pool = adjacent if rng.random() < 0.5 else others
        return r.choices[pool[int(rng.integers(len(pool)))]]
    if r.type is int:
        v = int(value)
        size = 1 if rng.random() < 0.7 else 2
        sign = 1 if rng.random() < 0.5 else -1
        for delta in (sign * size, -sign * size, sign, -sign):
            new = r.clip(v + delta)
            if new != v:
                return new
        return value
    u = r.to_unit(value)
    for _ in range(8):
        step = float(
            np.clip(rng.normal(0.0, sigma), -MAX_STEP_SIGMAS * sigma, MAX_STEP_SIGMAS * sigma)
        )
        new = r.from_unit(u + step)
        if new != value:
            return new
    # Rounding swallowed every step (a very narrow range): move to the nearest distinct value.
    for u2 in (u + sigma, u - sigma):
        new = r.from_unit(u2)
        if new != value:
            return new
    return value


def carry_meaning(old: Step, new: Step) -> Step:
    """``new`` with a parameter measured against a changed one carried over by meaning.

    Changing LR's ``rule`` maps its threshold to the one that keeps the same rank under the new
    rule (``petra_hw.rank_rules.equivalent_threshold``): the rules read the threshold in opposite
    senses, so keeping the number would jump in rank (see docs/decisions.md)."""
    if new.kind == "LR" and old.kind == "LR" and old["rule"] != new["rule"]:
        t = equivalent_threshold(str(old["rule"]), float(old["threshold"]), str(new["rule"]))
        return new.replace(threshold=round_sig(t))
    return new


# -- the bandit ------------------------------------------------------------------------------
class OperatorBandit:
    """Probability matching over operators.

    Each operator has a quality ``q`` (an exponentially weighted success rate,
    ``q <- q + alpha (r - q)`` with r in {0, 1}); its selection probability is
    ``p_min + (1 - K p_min) q / sum(q)``, so every operator keeps at least ``p_min``.
    """

    def __init__(
        self,
        operators: tuple[str, ...] = OPERATORS,
        p_min: float = 0.05,
        alpha: float = 0.2,
        q0: float = 0.5,
    ):
        if not 0 <= p_min * len(operators) < 1:
            raise ValueError(f"p_min={p_min} too large for {len(operators)} operators")
        self.operators = tuple(operators)
        self.p_min, self.alpha = p_min, alpha
        self.quality = {op: q0 for op in self.operators}
        self.counts = {op: [0, 0] for op in self.operators}  # successes, trials: for reports

    def probabilities(self, allowed: tuple[str, ...] | list[str] | None = None) -> dict[str, float]:
        ops = [op for op in self.operators if allowed is None or op in allowed]
        if not ops:
            return {}
        total = sum(self.quality[op] for op in ops)
        k = len(ops)
        share = 1.0 - k * self.p_min
        return {
            op: self.p_min + share * (self.quality[op] / total if total > 0 else 1.0 / k)
            for op in ops
        }

    def choose(self, rng: np.random.Generator, allowed: list[str]) -> str:
        probs = self.probabilities(allowed)
        ops = list(probs)
        p = np.array([probs[op] for op in ops])
        return ops[int(rng.choice(len(ops), p=p / p.sum()))]

    def reward(self, operator: str, success: bool) -> None:
        if operator not in self.quality:
            return
        r = 1.0 if success else 0.0
        self.quality[operator] += self.alpha * (r - self.quality[operator])
        self.counts[operator][0] += int(success)
        self.counts[operator][1] += 1

    def state_dict(self) -> dict[str, Any]:
        return {
            "quality": dict(self.quality),
            "counts": {k: list(v) for k, v in self.counts.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.quality.update({k: float(v) for k, v in state["quality"].items() if k in self.quality})
        self.counts.update(
            {k: [int(a), int(b)] for k, (a, b) in state["counts"].items() if k in self.counts}
        )


# -- operators -------------------------------------------------------------------------------
def _trains(p: Pipeline) -> bool:
    return any(s.spec.trains for s in p.steps)


class Mutator:
    """Makes one valid child per call and learns which operators produce survivors."""

    def __init__(
        self,
        space: SearchSpace,
        bandit: OperatorBandit | None = None,
        sigma: float = SIGMA,
        max_tries: int = 30,
    ):
        self.space = space
        self.bandit = bandit or OperatorBandit()
        self.sigma = sigma
        self.max_tries = max_tries
        self._ops: dict[str, Callable[[Pipeline, np.random.Generator], Pipeline]] = {
            "tweak": self._tweak,
            "lr": lambda p, rng: self._setting(p, rng, "lr"),
            "insert": self._insert,
            "delete": self._delete,
            "swap": self._swap,
            "replace": self._replace,
            "optimizer": lambda p, rng: self._setting(p, rng, "optimizer"),
            "loss": lambda p, rng: self._setting(p, rng, "loss"),
        }

    @property
    def operators(self) -> tuple[str, ...]:
        return self.bandit.operators

    def applicable(self, p: Pipeline) -> list[str]:
        """Operators that can change ``p`` at all: settings only matter when a step trains."""
        sp = self.space
        ok = {
            "tweak": any(s.kind in sp.kinds and sp.active_params(s) for s in p.steps),
            "insert": len(p) < sp.max_len,
            "delete": len(p) > sp.min_len,
            "swap": any(a != b for a, b in zip(p.steps, p.steps[1:], strict=False)),
            "replace": len(p) > 0 and len(sp.kinds) > 1,
        }
        searchable = set(sp.searchable_settings()) if _trains(p) else set()
        for name in ("lr", "optimizer", "loss"):
            ok[name] = name in searchable
        return [op for op in self.operators if ok.get(op, False)]

    def probabilities(self) -> dict[str, float]:
        return self.bandit.probabilities()

    def reward(self, operator: str, success: bool) -> None:
        self.bandit.reward(operator, success)

    def mutate(self, pipeline: Pipeline, rng: np.random.Generator) -> tuple[Pipeline, str]:
        """A child that differs from ``pipeline`` and lies in the space, and the operator used.

        A parent from outside the space (a narrowed resume, a user seed) is repaired first.
        """
        parent = pipeline if self.space.contains(pipeline) else self.space.repair(pipeline, rng)
        for _ in range(self.max_tries):
            ops = self.applicable(parent)
            if not ops:
                break
            op = self.bandit.choose(rng, ops)
            child = self._ops[op](parent, rng)
            if child not in (parent, pipeline) and self.space.contains(child):
                return child, op
        raise NoMutation(f"no valid mutation of {pipeline} in {self.max_tries} tries")

    # Each operator returns a pipeline; ``mutate`` checks it and retries on a no-op.
    def _tweak(self, p: Pipeline, rng: np.random.Generator) -> Pipeline:
        slots = [i for i, s in enumerate(p.steps) if self.space.active_params(s)]
        i = slots[int(rng.integers(len(slots)))]
        step = p.steps[i]
        names = self.space.active_params(step)
        name = names[int(rng.integers(len(names)))]
        value = neighbour(
            self.space.param_range(step.kind, name, step), step[name], rng, self.sigma
        )
        child = carry_meaning(step, step.replace(**{name: value}))
        return self._with_step(p, i, self.space.normalize(self.space.clip_step(child)))

    def _setting(self, p: Pipeline, rng: np.random.Generator, name: str) -> Pipeline:
        value = neighbour(self.space.setting_range(name), p.setting(name), rng, self.sigma)
        return p.replace_settings(**{name: value})

    def _insert(self, p: Pipeline, rng: np.random.Generator) -> Pipeline:
        steps = list(p.steps)
        steps.insert(int(rng.integers(len(steps) + 1)), self.space.random_step(rng))
        return p.replace_steps(steps)

    def _delete(self, p: Pipeline, rng: np.random.Generator) -> Pipeline:
        steps = list(p.steps)
        del steps[int(rng.integers(len(steps)))]
        return p.replace_steps(steps)

    def _swap(self, p: Pipeline, rng: np.random.Generator) -> Pipeline:
        pairs = [i for i in range(len(p) - 1) if p.steps[i] != p.steps[i + 1]]
        i = pairs[int(rng.integers(len(pairs)))]
        steps = list(p.steps)
        steps[i], steps[i + 1] = steps[i + 1], steps[i]
        return p.replace_steps(steps)

    def _replace(self, p: Pipeline, rng: np.random.Generator) -> Pipeline:
        i = int(rng.integers(len(p)))
        kinds = [k for k in self.space.kinds if k != p.steps[i].kind]
        kind = kinds[int(rng.integers(len(kinds)))]
        return self._with_step(p, i, self._carry_over(p.steps[i], kind, rng))

    def _carry_over(self, old: Step, kind: str, rng: np.random.Generator) -> Step:
        """A fresh ``kind`` step that keeps the parameters it shares with ``old`` (e.g. epochs)."""
        fresh = self.space.random_step(rng, kind)
        shared = {n: v for n, v in old.params if n in {p.name for p in KINDS[kind].params}}
        shared = {
            n: v for n, v in shared.items() if self.space.param_range(kind, n, fresh).contains(v)
        }
        return self.space.normalize(fresh.replace(**shared))

    @staticmethod
    def _with_step(p: Pipeline, i: int, step: Step) -> Pipeline:
        steps = list(p.steps)
        steps[i] = step
        return p.replace_steps(steps)

    def state_dict(self) -> dict[str, Any]:
        return self.bandit.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.bandit.load_state_dict(state)
