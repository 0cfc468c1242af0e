"""The search space: which step kinds, how many steps, and where each hyperparameter may move.

The kind table (``petra_hw.kinds``) says what is *legal*; the space says what is *worth searching*
on a budget: epochs stay small (1-3) so candidates are cheap on a laptop, regularization weights
move on a log scale that excludes zero, and a kind is offered only on the device classes its
``KindSpec.devices`` names (FP16: GPUs) and where the profile deploys its precision.  A suite or the
CLI narrows it with a JSON-able spec::

    SearchSpace.from_spec({"kinds": ["LR", "Pr", "PTQ"], "max_len": 3,
                           "params": {"Pr.ratio": [0.1, 0.6], "Pr.criterion": ["l1", "l2"],
                                      "lr": [1e-4, 1e-2], "Tr.epochs": 1}})

A two-number list is an interval, a longer list (or any list for a choice or bool parameter) is the
set of allowed values, a scalar pins the parameter, and a dict may say ``low``/``high``/``log`` or
``choices`` explicitly.  Setting names (``optimizer``, ``lr``, ``loss``) may carry a ``settings.``
prefix.

A parameter whose meaning depends on another one has a range per value of that one, written
``KIND.param|other=value``: LR's threshold is a kept energy share under ``energy``, a fraction of
s_max (higher keeps *fewer*) under ``sv_proportion`` and a fraction of the full rank under
``ratio``, so each rule gets its own interval (``_DEFAULT_INTERVALS_WHEN``).  A user's plain
``LR.threshold`` range replaces them all; ``LR.threshold|rule=ratio`` narrows one.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from petra_hw.errors import UserError
from petra_hw.kinds import KINDS, SETTINGS, ParamSpec, ParamValue, kind_spec, kinds_for
from petra_hw.pipeline import Pipeline, Step

DEFAULT_MAX_LEN = 4
FLOAT_DIGITS = 3  # significant digits kept on searched floats: readable genomes, fewer near-twins

# Narrower than the kind table: cheap, sensible starting ranges (see docs/decisions.md).
_DEFAULT_INTERVALS: dict[str, tuple[float, float]] = {
    "epochs": (1, 3),
    "Reg.lambda_o": (1e-4, 1.0),
    "Reg.lambda_h": (1e-5, 1e-1),
    "Reg.strength": (1e-6, 1e-2),
    "LR.threshold": (0.045, 0.99),  # the hull of the per-rule intervals below
    "Pr.ratio": (0.05, 0.7),
    "lr": (1e-5, 1e-2),
}
# Per value of another parameter: (that parameter, value -> (low, high, log)).  LR's intervals
# keep the same band of ranks, 5% to 94% of the full rank on the representative spectrum of
# ``petra_hw.rank_rules`` (energy 0.5-0.99 mapped by ``equivalent_threshold``; docs/decisions.md).
_DEFAULT_INTERVALS_WHEN: dict[str, tuple[str, dict[str, tuple[float, float, bool]]]] = {
    "LR.threshold": (
        "rule",
        {
            "energy": (0.5, 0.99, False),
            "explained_variance": (0.5, 0.99, False),
            "sv_proportion": (0.065, 0.28, True),
            "ratio": (0.045, 0.94, False),
        },
    ),
}
# The suite's own loss unless the suite widens it: a regression loss on a classifier is a waste.
_DEFAULT_CHOICES: dict[str, tuple[ParamValue, ...]] = {"loss": ("default",)}


def is_active(step: Step, name: str) -> bool:
    """Whether ``step`` reads parameter ``name`` given its other parameters
    (``KindSpec.conditions``)."""
    cond = step.spec.condition(name)
    return cond is None or step[cond.on] in cond.values


def with_inactive_defaults(step: Step) -> Step:
    """``step`` with every parameter it ignores at the kind's default (an identity key)."""
    defaults = step.spec.defaults()
    inactive = {n: defaults[n] for n, _ in step.params if not is_active(step, n)}
    return step.replace(**inactive) if inactive else step


def round_sig(value: float, digits: int = FLOAT_DIGITS) -> float:
    if value == 0 or not math.isfinite(value):
        return value
    return float(f"{value:.{digits}g}")


@dataclass(frozen=True)
class ParamRange:
    """Where the search may move one parameter: a numeric interval or a finite set of values.

    ``to_unit``/``from_unit`` map the range onto [0, 1] (log-scaled where ``log``), which gives one
    scale for sampling, neighbourhood steps and the NSGA-II real encoding.
    """

    type: type
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple[ParamValue, ...] = ()

    @property
    def is_choice(self) -> bool:
        return bool(self.choices)

    @property
    def searchable(self) -> bool:
        """More than one value: a pinned parameter is not worth a mutation."""
        if self.choices:
            return len(self.choices) > 1
        return self.high > self.low  # type: ignore[operator]

    def contains(self, value: ParamValue) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        return self.low <= value <= self.high  # type: ignore[operator]

    def clip(self, value: ParamValue) -> ParamValue:
        """The nearest allowed value (repair after narrowing or a foreign pipeline)."""
        if self.choices:
            if value in self.choices:
                return value
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                numeric = [c for c in self.choices if isinstance(c, (int, float))]
                if numeric:
                    return min(numeric, key=lambda c: abs(float(c) - float(value)))
            return self.choices[0]
        v = min(max(float(value), self.low), self.high)  # type: ignore[type-var]
        return int(round(v)) if self.type is int else v

    def to_unit(self, value: ParamValue) -> float:
        if self.choices:
            return (self.choices.index(self.clip(value)) + 0.5) / len(self.choices)
        lo, hi, v = float(self.low), float(self.high), float(value)  # type: ignore[arg-type]
        if hi == lo:
            return 0.5
        if self.type is int:
            return (v - lo + 0.5) / (hi - lo + 1)
        if self.log:
            lo, hi, v = math.log(lo), math.log(hi), math.log(max(v, float(self.low)))  # type: ignore[arg-type]
        return min(max((v - lo) / (hi - lo), 0.0), 1.0)

    def from_unit(self, u: float) -> ParamValue:
        u = min(max(float(u), 0.0), 1.0)
        if self.choices:
            return self.choices[min(int(u * len(self.choices)), len(self.choices) - 1)]
        lo, hi = float(self.low), float(self.high)  # type: ignore[arg-type]
        if self.type is int:
            return int(min(lo + math.floor(u * (hi - lo + 1)), hi))
        if self.log:
            v = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
        else:
            v = lo + u * (hi - lo)
        return min(max(round_sig(v), lo), hi)

    def sample(self, rng: np.random.Generator) -> ParamValue:
        return self.from_unit(float(rng.random()))

    def to_spec(self) -> dict[str, Any]:
        if self.choices:
            return {"choices": list(self.choices)}
        return {"low": self.low, "high": self.high, "log": self.log}


def _default_range(key: str, spec: ParamSpec) -> ParamRange:
    if spec.type is bool:
        return ParamRange(bool, choices=(True, False))
    if spec.choices:
        return ParamRange(spec.type, choices=_DEFAULT_CHOICES.get(key, spec.choices))
    low, high = (
        _DEFAULT_INTERVALS.get(key) or _DEFAULT_INTERVALS.get(spec.name) or (spec.low, spec.high)
    )
    return ParamRange(spec.type, float(low), float(high), spec.log)  # type: ignore[arg-type]


def _narrow(key: str, spec: ParamSpec, raw: object) -> ParamRange:
    """Turn one user entry of ``params`` into a range, checked against the kind table."""
    where = f"search space parameter {key!r}"
    if isinstance(raw, Mapping):
        unknown = set(raw) - {"low", "high", "log", "choices"}
        if unknown:
            raise UserError(f"{where}: unknown fields {sorted(unknown)}")
        if "choices" in raw:
            raw_choices: list[object] = list(raw["choices"])
        else:
            lo, hi = raw.get("low", spec.low), raw.get("high", spec.high)
            return _interval(key, spec, lo, hi, bool(raw.get("log", spec.log)))
    elif isinstance(raw, (list, tuple)):
        numeric = spec.type in (int, float) and not spec.choices
        if numeric and len(raw) == 2:
            return _interval(key, spec, raw[0], raw[1], spec.log)
        raw_choices = list(raw)
    else:
        raw_choices = [raw]
    if not raw_choices:
        raise UserError(f"{where}: empty list of values")
    values = tuple(dict.fromkeys(spec.coerce(v, key) for v in raw_choices))
    if spec.type in (int, float) and not spec.choices and len(values) == 1:
        v = float(values[0])  # a pinned number is a degenerate interval
        return ParamRange(spec.type, v, v, spec.log)
    return ParamRange(spec.type, choices=values)


def _interval(key: str, spec: ParamSpec, lo: object, hi: object, log: bool) -> ParamRange:
    if spec.type not in (int, float) or spec.choices:
        raise UserError(f"search space parameter {key!r} takes a list of values, not an interval")
    low, high = float(spec.coerce(lo, key)), float(spec.coerce(hi, key))
    if low > high:
        raise UserError(f"search space parameter {key!r}: low {low} > high {high}")
    if log and low <= 0:
        raise UserError(f"search space parameter {key!r} moves on a log scale: low must be > 0")
    return ParamRange(spec.type, low, high, log)


def when_key(kind: str, name: str, on: str, value: ParamValue) -> str:
    """The ranges key of ``KIND.name`` when ``on`` has ``value``: ``LR.threshold|rule=ratio``."""
    return f"{kind}.{name}|{on}={value}"


def _settings_key(key: str) -> str | None:
    name = key.removeprefix("settings.")
    return name if any(p.name == name for p in SETTINGS.params) else None


@dataclass(frozen=True)
class SearchSpace:
    """Allowed kinds, pipeline length and parameter ranges; JSON round trip via ``to_spec``."""

    kinds: tuple[str, ...] = field(default_factory=lambda: kinds_for("cpu"))
    max_len: int = DEFAULT_MAX_LEN
    min_len: int = 1
    ranges: Mapping[str, ParamRange] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.kinds:
            raise UserError("search space has no step kinds")
        for k in self.kinds:
            if k not in KINDS:
                raise UserError(
                    f"unknown step kind {k!r} in search space (known: {', '.join(KINDS)})"
                )
        if not 1 <= self.min_len <= self.max_len:
            raise UserError(
                f"search space needs 1 <= min_len <= max_len, got {self.min_len}, {self.max_len}"
            )
        full = dict(self.ranges)
        for kind in self.kinds:
            for p in KINDS[kind].params:
                key = f"{kind}.{p.name}"
                if key in _DEFAULT_INTERVALS_WHEN and key not in self.ranges:
                    on, table = _DEFAULT_INTERVALS_WHEN[key]
                    allowed = full.get(f"{kind}.{on}") or _default_range(
                        f"{kind}.{on}", KINDS[kind].param(on)
                    )
                    for value, (low, high, log) in table.items():
                        if allowed.contains(value):
                            full.setdefault(
                                when_key(kind, p.name, on, value),
                                ParamRange(p.type, low, high, log),
                            )
                full.setdefault(key, _default_range(key, p))
        for p in SETTINGS.params:
            full.setdefault(p.name, _default_range(p.name, p))
        object.__setattr__(self, "ranges", full)

    # -- construction -----------------------------------------------------------------------
    @staticmethod
    def default(gpu: bool = False) -> SearchSpace:
        return SearchSpace(kinds_for("gpu" if gpu else "cpu"))

    @staticmethod
    def from_spec(spec: Mapping[str, Any] | None = None, gpu: bool = False) -> SearchSpace:
        """Build from a suite's or the CLI's spec; ``gpu`` admits GPU-only kinds (FP16)."""
        spec = dict(spec or {})
        unknown = set(spec) - {"kinds", "max_len", "min_len", "params"}
        if unknown:
            raise UserError(
                f"unknown search space fields {sorted(unknown)} (known: kinds, max_len, min_len, params)"
            )
        device_class = "gpu" if gpu else "cpu"
        listed = spec.get("kinds", kinds_for(device_class))
        if isinstance(listed, str) or not listed:
            raise UserError('search space: kinds must be a non-empty list, e.g. ["LR", "Pr"]')
        kinds = tuple(kind_spec(str(k)).name for k in listed)
        for k in kinds:
            if device_class not in KINDS[k].devices:
                raise UserError(
                    f"search space: {k} needs a {' or '.join(d.upper() for d in KINDS[k].devices)} profile"
                )
        kinds = tuple(dict.fromkeys(kinds))
        ranges: dict[str, ParamRange] = {}
        for key, raw in dict(spec.get("params", {})).items():
            name = _settings_key(key)
            if name is not None:
                ranges[name] = _narrow(name, SETTINGS.param(name), raw)
                continue
            kind, _, pname = key.partition(".")
            pname, _, when = pname.partition("|")
            kind = kind_spec(kind).name
            if not pname:
                raise UserError(
                    f"search space parameter {key!r}: write KIND.param or a setting name"
                )
            if kind not in kinds:
                raise UserError(f"search space parameter {key!r}: kind {kind} is not in the space")
            pspec = KINDS[kind].param(pname)
            if when:
                on, eq, value = when.partition("=")
                if not eq:
                    raise UserError(f"search space parameter {key!r}: write KIND.param|other=value")
                value = KINDS[kind].param(on).coerce(value, kind)
                ranges[when_key(kind, pname, on, value)] = _narrow(key, pspec, raw)
            else:
                ranges[f"{kind}.{pname}"] = _narrow(key, pspec, raw)
        try:
            max_len, min_len = (
                int(spec.get("max_len", DEFAULT_MAX_LEN)),
                int(spec.get("min_len", 1)),
            )
        except (TypeError, ValueError):
            raise UserError("search space: max_len and min_len must be integers") from None
        return SearchSpace(kinds, max_len, min_len, ranges)

    @staticmethod
    def for_profile(profile: Any, spec: Mapping[str, Any] | None = None) -> SearchSpace:
        """The space a profile can deploy: the kinds of its device class whose precision (if they
        ask for one) the profile runs."""
        gpu = bool(profile.is_gpu)
        spec = dict(spec or {})
        if "kinds" not in spec:
            precisions = set(profile.precisions)
            spec["kinds"] = [
                k
                for k in kinds_for("gpu" if gpu else "cpu")
                if not KINDS[k].quantizes or KINDS[k].precision in precisions
            ]
        return SearchSpace.from_spec(spec, gpu=gpu)

    def to_spec(self) -> dict[str, Any]:
        """JSON-able and accepted by ``from_spec`` (records what a run searched)."""
        return {
            "kinds": list(self.kinds),
            "max_len": self.max_len,
            "min_len": self.min_len,
            "params": {k: r.to_spec() for k, r in self.ranges.items()},
        }

    # -- queries ----------------------------------------------------------------------------
    def param_range(
        self, kind: str, name: str, given: Step | Mapping[str, ParamValue] | None = None
    ) -> ParamRange:
        """Where ``KIND.name`` may move; ``given`` (the step, or the parameters decided so far)
        selects a range that depends on another parameter's value (``KIND.name|on=value``)."""
        if given is not None:
            values = dict(given.params) if isinstance(given, Step) else given
            for on, by_value in self._conditional.get(f"{kind}.{name}", {}).items():
                if on in values and str(values[on]) in by_value:
                    return self.ranges[by_value[str(values[on])]]
        return self.ranges[f"{kind}.{name}"]

    @cached_property
    def _conditional(self) -> dict[str, dict[str, dict[str, str]]]:
        """``KIND.name`` -> other parameter -> its value (as text) -> key in ``ranges``."""
        out: dict[str, dict[str, dict[str, str]]] = {}
        for key in self.ranges:
            base, sep, when = key.partition("|")
            if sep:
                on, _, value = when.partition("=")
                out.setdefault(base, {}).setdefault(on, {})[value] = key
        return out

    def setting_range(self, name: str) -> ParamRange:
        return self.ranges[name]

    def searchable_params(self, kind: str) -> list[str]:
        return [p.name for p in KINDS[kind].params if self.param_range(kind, p.name).searchable]

    def active_params(self, step: Step) -> list[str]:
        """The searchable parameters that ``step`` actually reads."""
        return [n for n in self.searchable_params(step.kind) if is_active(step, n)]

    def normalize(self, step: Step) -> Step:
        """Parameters ``step`` ignores go to their defaults (clipped into the space)."""
        defaults = step.spec.defaults()
        inactive = {
            n: self.param_range(step.kind, n, step).clip(defaults[n])
            for n, _ in step.params
            if not is_active(step, n)
        }
        return step.replace(**inactive) if inactive else step

    def searchable_settings(self) -> list[str]:
        return [p.name for p in SETTINGS.params if self.ranges[p.name].searchable]

    def validate(self, pipeline: Pipeline) -> list[str]:
        """Every reason ``pipeline`` is outside the space (empty when it is inside)."""
        problems = []
        if not self.min_len <= len(pipeline) <= self.max_len:
            problems.append(f"length {len(pipeline)} outside {self.min_len}..{self.max_len}")
        for i, step in enumerate(pipeline.steps):
            if step.kind not in self.kinds:
                problems.append(f"step {i + 1}: kind {step.kind} not in the space")
                continue
            for name, value in step.params:
                if not self.param_range(step.kind, name, step).contains(value):
                    problems.append(f"step {i + 1}: {step.kind}.{name}={value!r} out of range")
        for name, value in pipeline.settings:
            if not self.ranges[name].contains(value):
                problems.append(f"setting {name}={value!r} out of range")
        return problems

    def contains(self, pipeline: Pipeline) -> bool:
        return not self.validate(pipeline)

    # -- sampling and repair ----------------------------------------------------------------
    def random_step(self, rng: np.random.Generator, kind: str | None = None) -> Step:
        kind = kind or self.kinds[int(rng.integers(len(self.kinds)))]
        params: dict[str, ParamValue] = {}
        for p in KINDS[kind].params:  # in table order: a range may depend on an earlier value
            params[p.name] = self.param_range(kind, p.name, params).sample(rng)
        return self.normalize(Step.make(kind, **params))

    def random_settings(self, rng: np.random.Generator) -> dict[str, ParamValue]:
        return {p.name: self.ranges[p.name].sample(rng) for p in SETTINGS.params}

    def random_pipeline(self, rng: np.random.Generator) -> Pipeline:
        """Uniform length, uniform kinds, parameters uniform on their (log-)scale.

        Settings are sampled only when a step trains; otherwise they stay at their (clipped)
        defaults, since they cannot change the model.
        """
        n = int(rng.integers(self.min_len, self.max_len + 1))
        steps = [self.random_step(rng) for _ in range(n)]
        if any(s.spec.trains for s in steps):
            settings = self.random_settings(rng)
        else:
            settings = {p.name: self.ranges[p.name].clip(p.default) for p in SETTINGS.params}
        return Pipeline.make(steps, **settings)

    def clip_step(self, step: Step) -> Step:
        """``step`` with every parameter clipped into its range (in table order, so a range that
        depends on another parameter sees that one's clipped value)."""
        params: dict[str, ParamValue] = {}
        for n, v in step.params:
            params[n] = self.param_range(step.kind, n, params).clip(v)
        return Step.make(step.kind, **params)

    def repair(self, pipeline: Pipeline, rng: np.random.Generator) -> Pipeline:
        """The nearest pipeline inside the space: foreign kinds dropped, values clipped, length fixed."""
        steps = [self.clip_step(s) for s in pipeline.steps if s.kind in self.kinds][: self.max_len]
        while len(steps) < self.min_len:
            steps.insert(int(rng.integers(len(steps) + 1)), self.random_step(rng))
        settings = {n: self.ranges[n].clip(v) for n, v in pipeline.settings}
        return Pipeline.make(steps, **settings)
