"""The guide: screens a strategy's children and picks which to evaluate by the cost model.

A component the tune loop hands to a strategy (``Strategy.guide``), as TVM's meta_schedule hands a
cost model to its search strategy.  A strategy that breeds children asks it through
``Strategy._propose``: per slot it draws ``draws`` unseen children; those certainly dominated on
cheap objectives are screened (``petra_hw.search.screening``: claimed, recorded with the reason,
never trained); of the rest the guide returns the one with the largest expected hypervolume
improvement (EHVI) under the cost model.  Only that one is evaluated, in full: the model never
puts a prediction on the front.

EHVI: each ensemble member of the cost model is one sample of the child's latency and throughput;
its size is the structure's byte estimate relative to the Original's, its quality drop its
parent's measured one (the median of the run's, for a child without a parent), complexity its
length.  The sample's hypervolume gain over the strategy's current front, averaged over members,
is the score; ties (no gain anywhere, common once the front is good) go to the smaller sum of
predicted normalized objectives.  Cold start: until the cost model holds ``min_train``
measurements the guide draws one child per slot (plain mutation).

Its state is the journal's: ``observe`` takes evaluations in journal order, and a resumed run
replays its journal into a fresh guide, so the cost model's training set is restored exactly.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Sequence

import numpy as np

from petra_hw.search.costmodel import TARGETS, CostModel, Measurement
from petra_hw.search.features import Structure, StructureProbe
from petra_hw.search.objectives import QUALITY, Objectives
from petra_hw.search.screening import screen_reason
from petra_hw.search.selection import hv
from petra_hw.search.types import Candidate, Evaluation

log = logging.getLogger(__name__)

MUTANTS = 8  # K: children drawn per slot once the cost model is ready

Recorder = Callable[[Candidate, str], None]


class Guide:
    """Screening and cost-model ranking of children (either may be off)."""

    def __init__(
        self,
        probe: StructureProbe,
        objectives: Objectives,
        *,
        mutants: int = MUTANTS,
        screening: bool = True,
        cost_model: CostModel | None = None,
        record: Recorder | None = None,
    ) -> None:
        self.probe = probe
        self.objectives = objectives
        self.mutants = max(1, int(mutants))
        self.screening = screening
        self.cost_model = cost_model
        self.record = record
        self.points: dict[str, tuple[Evaluation, Structure]] = {}  # full fidelity: may screen
        self.learned: set[str] = set()  # every evaluation the cost model has (any fidelity)
        self.n_screened = 0

    # -- what was measured --------------------------------------------------------------------
    def observe(self, evaluations: Iterable[Evaluation]) -> None:
        """Learn from measured evaluations (references and failures are skipped)."""
        for ev in evaluations:
            cid = ev.candidate.id
            # a backend variant's features would be its parent's (the probe knows one backend)
            if ev.candidate.reference or ev.candidate.variant or not ev.ok or cid in self.learned:
                continue
            s = self.probe.structure(ev.candidate.pipeline)
            if s is None:
                continue
            self.learned.add(cid)
            if ev.full_fidelity:  # a reduced rung's quality screens nothing; its timing is real
                self.points[cid] = (ev, s)
            if self.cost_model is not None:
                targets = tuple(ev.objectives.get(t, math.nan) for t in TARGETS)
                self.cost_model.add(Measurement(cid, s.features, targets))

    @property
    def draws(self) -> int:
        """Children drawn per slot: K once the cost model can rank them, else one."""
        return self.mutants if self.cost_model is not None and self.cost_model.ready else 1

    # -- screening ------------------------------------------------------------------------------
    def screen(self, candidate: Candidate) -> str | None:
        """The reason ``candidate`` is skipped (recorded), or None to keep it."""
        if not self.screening:
            return None
        reason = screen_reason(
            self.probe.structure(candidate.pipeline), self.points.values(), self.objectives
        )
        if reason is not None:
            self.n_screened += 1
            log.info("screened %s: %s", candidate.pipeline, reason)
            if self.record is not None:
                self.record(candidate, reason)
        return reason

    # -- ranking --------------------------------------------------------------------------------
    def choose(self, drafts: Sequence[Candidate], archive: Sequence[Evaluation]) -> Candidate:
        """The draft with the largest expected hypervolume improvement (the first draft when
        the cost model cannot rank)."""
        if len(drafts) == 1 or self.cost_model is None or not self.cost_model.ready:
            return drafts[0]
        scores = self.scores(drafts, archive)
        best = max(range(len(drafts)), key=lambda i: (scores[i], -i))
        return drafts[best]

    def scores(
        self, drafts: Sequence[Candidate], archive: Sequence[Evaluation]
    ) -> list[tuple[float, float]]:
        """(EHVI, -sum of predicted normalized objectives) per draft; larger is better."""
        assert self.cost_model is not None
        structures = [self.probe.structure(c.pipeline) for c in drafts]
        known = [i for i, s in enumerate(structures) if s is not None]
        out = [(-math.inf, -math.inf)] * len(drafts)
        if not known:
            return out
        pred = self.cost_model.predict([structures[i].features for i in known])  # type: ignore[union-attr]
        m = self.objectives.matrix(list(archive))
        names = m.names
        ref = self.objectives.reference_point(names)
        front = m.F[m.feasible]
        base = hv(front, ref)
        for col, i in enumerate(known):
            samples = self._normalized(drafts[i], structures[i], pred.samples, col, names)  # type: ignore[arg-type]
            gains = [hv(np.vstack([front, row]) if len(front) else row[None], ref) - base
                     for row in samples]  # fmt: skip
            out[i] = (float(np.mean(gains)), -float(samples.sum(axis=1).mean()))
        return out

    def _normalized(
        self,
        cand: Candidate,
        s: Structure,
        samples: dict[str, np.ndarray],
        col: int,
        names: Sequence[str],
    ) -> np.ndarray:
        """Members x objectives: the draft's predicted normalized (minimized) objectives."""
        o = self.objectives
        base = o.original.objectives
        parent = self.points.get(cand.parent or "")
        drops = [o.quality_drop(e) for e, _ in self.points.values()]
        original = self.points.get(o.original.candidate.id)
        n = next(iter(samples.values())).shape[0]
        rows = np.zeros((n, len(names)))
        for j, name in enumerate(names):
            if name == "latency_ms":
                rows[:, j] = samples[name][:, col] / base[name]
            elif name == "throughput_ips":
                rows[:, j] = base[name] / samples[name][:, col]
            elif name == "size_bytes" and original is not None:
                rows[:, j] = s.size_bytes / max(original[1].size_bytes, 1.0)
            elif name == QUALITY:
                rows[:, j] = o.quality_drop(parent[0]) if parent else float(np.nanmedian(drops))
            elif name == "complexity":
                rows[:, j] = len(cand.pipeline) / o.config.complexity_scale
            else:  # energy, or size before the Original is observed: the parent's, else neutral
                rows[:, j] = o.normalized(parent[0], name) if parent else 1.0
        return np.nan_to_num(rows, nan=1.0)

    # -- reporting ------------------------------------------------------------------------------
    def summary(self, elapsed_s: float, screened_total: int | None = None) -> dict[str, object]:
        """What run stats and reports show: screened per hour, the cost model's accuracy."""
        screened = self.n_screened if screened_total is None else screened_total
        hours = max(elapsed_s, 1e-9) / 3600.0
        out: dict[str, object] = {
            "screening": {
                "enabled": self.screening,
                "screened": screened,
                "screened_per_hour": screened / hours if elapsed_s > 0 else 0.0,
            },
            "cost_model": {"enabled": self.cost_model is not None},
        }
        if self.cost_model is not None:
            out["cost_model"] = {
                "enabled": True,
                "mutants": self.mutants,
                **self.cost_model.summary(),
            }
        return out
