"""From evaluations to a minimization problem: normalized objectives, constraints, failures.

Every objective is made dimensionless against the Original (the uncompressed model measured the
same way) and turned into "smaller is better", so that one fixed reference point and one
hypervolume make sense across suites and devices:

- ``quality``: relative drop versus the Original on the val split, ``(q0 - q) / |q0|`` for a metric
  where higher is better and ``(q - q0) / |q0|`` otherwise (0 = as good as the Original);
- ``latency_ms``, ``size_bytes``, ``energy_j``: value / the Original's value (1 = as the Original);
- ``throughput_ips``: the Original's value / value (maximized, so inverted);
- ``complexity``: steps (or whatever the evaluator reports as ``complexity``) / ``complexity_scale``.

Hardware constraints become a violation amount (0 = feasible) for Deb's constrained domination.
An evaluation with ``error`` set, without a finite value for an active objective, or at a reduced
fidelity (``petra_hw.search.fidelity``: its training was cut short, so it is no point of any
front) is *failed*: it ranks after every infeasible one.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from petra_hw.search.noise import band
from petra_hw.search.types import OBJECTIVE_DIRECTIONS, Evaluation

log = logging.getLogger(__name__)

QUALITY = "quality"
KNOWN_OBJECTIVES = (QUALITY, *OBJECTIVE_DIRECTIONS)
DEFAULT_OBJECTIVES = (QUALITY, "latency_ms", "size_bytes")
MB = 1e6  # max_size_mb is in decimal megabytes, as disk sizes are reported
UNQUANTIFIED_VIOLATION = 1.0  # an evaluator's feasible=False with no constraint of ours broken
REF_MARGIN = 0.1  # reference point = worst allowed + 10%
DEFAULT_WORST_QUALITY_DROP = 0.1  # worst allowed relative drop when the run sets no limit


@dataclass(frozen=True)
class ObjectiveConfig:
    """Which objectives a run optimizes and which hardware constraints it must meet.

    ``max_quality_drop`` is relative to the Original's metric (0.01 = 1% of it); ``max_latency_ms``
    bounds the p50 latency at batch 1; ``max_size_mb`` bounds the artifact's bytes on disk.
    """

    names: tuple[str, ...] = DEFAULT_OBJECTIVES
    higher_is_better: bool = True
    split: str = "val"
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_quality_drop: float | None = None
    complexity_scale: float = 4.0

    def __post_init__(self) -> None:
        unknown = [n for n in self.names if n not in KNOWN_OBJECTIVES]
        if unknown or not self.names:
            raise ValueError(f"unknown objectives {unknown} (known: {', '.join(KNOWN_OBJECTIVES)})")


@dataclass(frozen=True)
class ObjectiveMatrix:
    """Rows = evaluations.  ``F`` is normalized and minimized (``inf`` rows for failed ones);
    ``B`` holds each value's noise half-width (``petra_hw.search.noise``; None: exact)."""

    names: tuple[str, ...]
    F: np.ndarray
    cv: np.ndarray
    failed: np.ndarray
    B: np.ndarray | None = None

    @property
    def feasible(self) -> np.ndarray:
        return ~self.failed & (self.cv <= 0)

    def __len__(self) -> int:
        return len(self.failed)


class Objectives:
    """Normalizes evaluations against the Original's evaluation under one config."""

    def __init__(self, config: ObjectiveConfig, original: Evaluation):
        if not original.ok:
            raise ValueError(f"the Original's evaluation failed: {original.error}")
        q0 = original.quality.get(config.split)
        if q0 is None or not math.isfinite(q0):
            raise ValueError(f"the Original has no finite quality on split {config.split!r}")
        self.config = config
        self.original = original
        self._q0 = float(q0)
        self._warned: set[str] = set()

    # -- single values ------------------------------------------------------------------------
    def quality_drop(self, ev: Evaluation) -> float:
        q = ev.quality.get(self.config.split)
        if q is None or not math.isfinite(q):
            return math.nan
        diff = self._q0 - q if self.config.higher_is_better else q - self._q0
        return diff / max(abs(self._q0), 1e-12)

    def normalized(self, ev: Evaluation, name: str) -> float:
        """One normalized, minimized objective; NaN when the evaluation cannot say."""
        if name == QUALITY:
            return self.quality_drop(ev)
        if name == "complexity":
            raw = ev.objectives.get("complexity", float(len(ev.candidate.pipeline)))
            return float(raw) / self.config.complexity_scale
        value, base = ev.objectives.get(name), self.original.objectives.get(name)
        if value is None or base is None or not math.isfinite(value) or base <= 0:
            return math.nan
        if OBJECTIVE_DIRECTIONS[name]:
            return base / value if value > 0 else math.nan
        return value / base

    def violation(self, ev: Evaluation) -> float:
        """Sum of relative overshoots of the hardware constraints (0 = feasible)."""
        c = self.config
        cv = 0.0
        if c.max_latency_ms is not None:
            cv += max(0.0, ev.objectives.get("latency_ms", math.inf) / c.max_latency_ms - 1.0)
        if c.max_size_mb is not None:
            cv += max(0.0, ev.objectives.get("size_bytes", math.inf) / (c.max_size_mb * MB) - 1.0)
        if c.max_quality_drop is not None:
            cv += max(0.0, self.quality_drop(ev) - c.max_quality_drop)
        if not ev.feasible and cv <= 0:
            cv = UNQUANTIFIED_VIOLATION
        return cv

    # -- matrices -----------------------------------------------------------------------------
    def active_names(self, evaluations: Iterable[Evaluation] = ()) -> tuple[str, ...]:
        """The configured objectives, less ``energy_j`` unless the Original and every successful
        evaluation report it (a partial energy column would make failures out of good models)."""
        names = list(self.config.names)
        if "energy_j" in names:
            have = "energy_j" in self.original.objectives and all(
                "energy_j" in e.objectives for e in evaluations if e.ok
            )
            if not have:
                names.remove("energy_j")
                if "energy_j" not in self._warned:
                    self._warned.add("energy_j")
                    log.info("energy_j is not reported for every evaluation: not an objective here")
        return tuple(names)

    def matrix(
        self, evaluations: Sequence[Evaluation], names: Sequence[str] | None = None
    ) -> ObjectiveMatrix:
        names = tuple(names) if names is not None else self.active_names(evaluations)
        n, m = len(evaluations), len(names)
        F = np.full((n, m), np.inf)
        B = np.zeros((n, m))
        cv = np.zeros(n)
        failed = np.zeros(n, dtype=bool)
        for i, ev in enumerate(evaluations):
            usable = ev.ok and ev.full_fidelity
            row = [self.normalized(ev, name) for name in names] if usable else []
            v = self.violation(ev) if usable else math.inf
            if not usable or not all(math.isfinite(x) for x in row) or not math.isfinite(v):
                failed[i] = True
                cv[i] = math.inf
                continue
            F[i] = row
            B[i] = [band(ev, name, x) for name, x in zip(names, row, strict=True)]
            cv[i] = v
        return ObjectiveMatrix(names, F, cv, failed, B)

    def reference_point(self, names: Sequence[str] | None = None) -> np.ndarray:
        """A fixed point: 10% beyond the worst *allowed* value of each normalized objective.

        Allowed = the constraint where the run sets one, else no worse than the Original (ratio 1),
        a ``DEFAULT_WORST_QUALITY_DROP`` relative quality drop, and ``complexity_scale`` steps.
        Being fixed, hypervolumes of one run are comparable from generation to generation.
        """
        names = tuple(names) if names is not None else self.active_names()
        c, base = self.config, self.original.objectives
        worst = []
        for name in names:
            w = 1.0
            if name == QUALITY:
                w = (
                    c.max_quality_drop
                    if c.max_quality_drop is not None
                    else DEFAULT_WORST_QUALITY_DROP
                )
            elif name == "latency_ms" and c.max_latency_ms is not None and base.get(name):
                w = c.max_latency_ms / base[name]
            elif name == "size_bytes" and c.max_size_mb is not None and base.get(name):
                w = c.max_size_mb * MB / base[name]
            worst.append(w)
        w = np.asarray(worst, dtype=float)
        return w + REF_MARGIN * np.maximum(np.abs(w), 0.01)
