"""A run's progress over wall-clock time, read from its journal.

Strategies compared at equal evaluations favour the one whose evaluations are slow; a user has
a time budget.  This module answers "how good was the front after t seconds" and "when did the
run first hold an artifact that clearly beats the device's best one-shot peer", for the search
benchmark at equal wall-clock time (``suites/test_bench_search.py``) and for any report.

*The clock* is the one the time budget counts (``TuneSettings.budget_s``): wall time since the
run was created, less the Original's evaluation and the references' time (built after the
Original; both reported apart and never charged to the budget) and less the pause between the
sessions of a resumed run (from the last row the previous session journaled to the next
session's start).

*Beating the peer* is judged twice.  In the run (``Timeline.beat_peer``): the first candidate whose
journaled batch-1 latency beats the best peer's by ``speedup``, each timed alone at its own moment
(what a user watching the run would see).  At its end (``Timeline.final_peer``): the fastest front
member within the quality rule against the best peer, both from the final re-measurement that times
the front and the references round-robin in one process (``search.remeasure``); the host drifts
15% between processes and up to 2x under load, so only the second ratio is free of the moment.

*The hypervolume* after each full-fidelity evaluation is the one the strategies record
(``selection.hypervolume`` of the Pareto front of the evaluations told so far, the Original
excluded, against the run's fixed reference point), per evaluation instead of per generation; the
run's objectives are rebuilt from its settings as the report rebuilds them.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from petra_hw.errors import UserError
from petra_hw.search.budget import BUDGET
from petra_hw.search.objectives import Objectives
from petra_hw.search.selection import hypervolume, pareto_front
from petra_hw.search.store import RunRecord, Store, run_journal
from petra_hw.search.tune import TuneSettings
from petra_hw.search.types import Evaluation
from petra_hw.value import peers

# "Beats the best peer": its batch-1 latency at least this many times lower ...
BEAT_SPEEDUP = 1.5
# ... losing at most this many points of the test metric against the Original (0.01 of a metric
# in [0, 1]; a larger metric: 1% of the Original's), as ``value.UNDERTRAINED_POINTS`` counts them.
BEAT_POINTS = 0.01
REPORT_SPLIT = "test"


@dataclass(frozen=True)
class TimePoint:
    """The front's hypervolume once one full-fidelity evaluation was journaled."""

    seconds: float  # on the budget's clock
    candidate: str  # the evaluation's candidate id
    hypervolume: float


@dataclass(frozen=True)
class PeerTarget:
    """The first candidate that beat the best peer's batch-1 latency by ``speedup`` within
    ``points`` of the Original's test metric (``seconds`` None: none did)."""

    peer: str
    peer_latency_ms: float
    peer_within_points: bool  # False: no peer kept the quality rule; the fastest peer is used
    speedup: float
    points: float
    seconds: float | None
    candidate: str | None
    latency_ms: float | None
    best_speedup: float | None  # the most any such candidate reached (journaled figures)


@dataclass(frozen=True)
class FinalPeerRatio:
    """The fastest final front member within ``points`` against the best peer, both re-timed
    interleaved in one process at the run's end (``speedup`` None: ``note`` says why)."""

    peer: str | None
    peer_latency_ms: float | None
    candidate: str | None
    latency_ms: float | None
    speedup: float | None  # the peer's batch-1 latency / the candidate's
    note: str = ""


@dataclass(frozen=True)
class Timeline:
    """A run's progress over time: hypervolume, throughput, and the time to beat the peers."""

    run_id: str
    search_s: float  # the run's time on the budget's clock (its final re-measurement included)
    full_evaluations: int  # full-fidelity candidates that trained (Original, variants excluded)
    screened: int  # children screened instead of evaluated
    hypervolume: list[TimePoint]
    beat_peer: PeerTarget | None  # None: the run has no successful peer (references off)
    final_peer: FinalPeerRatio
    stats: dict[str, Any] = field(default_factory=dict)  # the run's stats, as journaled

    def per_hour(self, count: int) -> float:
        return count * 3600.0 / self.search_s if self.search_s > 0 else 0.0

    @property
    def final_hypervolume(self) -> float:
        return self.hypervolume[-1].hypervolume if self.hypervolume else 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "search_s": self.search_s,
            "full_evaluations": self.full_evaluations,
            "full_evaluations_per_hour": self.per_hour(self.full_evaluations),
            "screened": self.screened,
            "screened_per_hour": self.per_hour(self.screened),
            "final_hypervolume": self.final_hypervolume,
            "hypervolume_over_time": [asdict(p) for p in self.hypervolume],
            "beat_peer": asdict(self.beat_peer) if self.beat_peer else None,
            "time_to_beat_peer_s": self.beat_peer.seconds if self.beat_peer else None,
            "final_peer": asdict(self.final_peer),
        }


def within_points(ev: Evaluation, original: Evaluation, higher: bool, points: float) -> bool:
    """``ev`` loses at most ``points`` of the Original's test metric (scaled for metrics > 1)."""
    q0, q = original.quality.get(REPORT_SPLIT), ev.quality.get(REPORT_SPLIT)
    if not ev.ok or q0 is None or q is None or not (math.isfinite(q0) and math.isfinite(q)):
        return False
    drop = q0 - q if higher else q - q0
    return drop <= points * max(1.0, abs(q0)) + 1e-12


def _clock(
    record: RunRecord, times: list[float], ref_times: list[float], original_time: float
) -> Callable[[float], float]:
    """Wall-clock time -> seconds on the budget's clock (see the module's docstring);
    ``original_time``: when the Original's row was journaled."""
    rows = sorted(times + ref_times)
    gaps = []  # (session start, pause before it)
    for session in record.stats.get("sessions", [])[1:]:
        start = float(session["started"])
        last = max((t for t in rows if t < start), default=record.created)
        gaps.append((start, max(0.0, start - last)))
    references_end = max(ref_times, default=math.inf)
    references_s = float(record.stats.get("references_s", 0.0))
    original_s = float(record.stats.get("original_s", 0.0))

    def seconds(t: float) -> float:
        s = t - record.created - sum(g for start, g in gaps if t >= start)
        s -= original_s if t > original_time else 0.0
        return s - (references_s if t > references_end else 0.0)

    return seconds


Latency = Callable[[Evaluation], float]


def _journaled(e: Evaluation) -> float:
    return float(e.objectives.get("latency_ms", math.nan))


def _best_peer(
    references: list[Evaluation],
    original: Evaluation,
    higher: bool,
    points: float,
    latency: Latency,
) -> tuple[Evaluation, bool] | None:
    """The fastest peer within ``points`` (True), else the fastest peer (False); None: no peer."""
    ok = [p for p in peers(references) if p.ok and math.isfinite(latency(p))]
    keep = [p for p in ok if within_points(p, original, higher, points)]
    best = min(keep or ok, key=latency, default=None)
    return None if best is None else (best, bool(keep))


def _qualifies(e: Evaluation, original: Evaluation, higher: bool, points: float) -> bool:
    return (
        bool(e.candidate.pipeline.steps)
        and e.feasible
        and within_points(e, original, higher, points)
    )


def _beat_peer(
    timed: list[tuple[float, Evaluation]],
    references: list[Evaluation],
    original: Evaluation,
    higher: bool,
    speedup: float,
    points: float,
) -> PeerTarget | None:
    found = _best_peer(references, original, higher, points, _journaled)
    if found is None:
        return None
    best, within = found
    target = _journaled(best) / speedup
    qualified = [(s, e) for s, e in timed if _qualifies(e, original, higher, points)]
    hit = next(((s, e) for s, e in qualified if _journaled(e) <= target), None)
    speedups = [_journaled(best) / _journaled(e) for _, e in qualified if _journaled(e) > 0]
    return PeerTarget(
        peer=str(best.candidate.reference),
        peer_latency_ms=_journaled(best),
        peer_within_points=within,
        speedup=speedup,
        points=points,
        seconds=None if hit is None else hit[0],
        candidate=None if hit is None else hit[1].candidate.id,
        latency_ms=None if hit is None else _journaled(hit[1]),
        best_speedup=max(speedups, default=None),
    )


def _final_peer(
    record: dict[str, Any] | None,
    searched: list[Evaluation],
    references: list[Evaluation],
    original: Evaluation,
    higher: bool,
    points: float,
) -> FinalPeerRatio:
    """``_beat_peer``'s comparison on the final interleaved re-measurement ``record``."""

    def none(note: str) -> FinalPeerRatio:
        return FinalPeerRatio(None, None, None, None, None, note)

    if not record or record.get("skipped") or record.get("error"):
        why = (record or {}).get("skipped") or (record or {}).get("error") or "none recorded"
        return none(f"no final interleaved re-measurement: {why}")
    timed = {k: float(v["latency_ms"]) for k, v in record.get("front", {}).items()}
    timed.update({k: float(v["latency_ms"]) for k, v in record.get("references", {}).items()})

    def latency(e: Evaluation) -> float:
        return timed.get(e.candidate.id, math.nan)

    found = _best_peer(references, original, higher, points, latency)
    if found is None:
        return none("no peer was re-measured")
    peer = found[0]
    members = [
        e
        for e in searched
        if e.candidate.id in timed and _qualifies(e, original, higher, points) and latency(e) > 0
    ]
    if not members:
        return FinalPeerRatio(
            str(peer.candidate.reference), latency(peer), None, None, None,
            f"no re-measured front member within {points:g} points",
        )  # fmt: skip
    best = min(members, key=latency)
    return FinalPeerRatio(
        peer=str(peer.candidate.reference),
        peer_latency_ms=latency(peer),
        candidate=best.candidate.id,
        latency_ms=latency(best),
        speedup=latency(peer) / latency(best),
    )


def run_timeline(
    run_dir: str | Path, speedup: float = BEAT_SPEEDUP, points: float = BEAT_POINTS
) -> Timeline:
    """The progress of the run in ``run_dir`` over its search time (its last run, as reports)."""
    from petra_hw.suite import load_suite

    with Store(run_journal(run_dir)) as store:
        record = store.last_run()
        rows = store.timed_evaluations(record.id)
        ref_rows = store.timed_evaluations(record.id, references=True)
        screened = len(store.screened(record.id))
    original_time = next((t for t, e in rows if not e.candidate.pipeline.steps), math.inf)
    seconds = _clock(record, [t for t, _ in rows], [t for t, _ in ref_rows], original_time)
    # full-fidelity rows only: a reduced rung or a candidate the budget stopped is no result
    full = [(seconds(t), e) for t, e in rows if e.full_fidelity and e.error_kind != BUDGET]
    original = next((e for _, e in full if not e.candidate.pipeline.steps), None)
    if original is None or not original.ok:
        raise UserError(f"run {record.id} has no successful evaluation of the Original")
    higher = load_suite(record.settings.get("suite", record.suite)).metric.higher_is_better
    config = TuneSettings.from_json(record.settings).objective_config(higher, energy=True)
    objectives = Objectives(config, original)
    searched = [(s, e) for s, e in full if e.candidate.pipeline.steps]
    front: list[Evaluation] = []
    curve = []
    for s, e in searched:
        front = pareto_front([*front, e], objectives)
        curve.append(TimePoint(s, e.candidate.id, hypervolume(front, objectives)))
    stats = record.stats
    references = [e for _, e in ref_rows]
    search_s = float(stats.get("elapsed_s", 0.0)) - sum(
        float(stats.get(k, 0.0)) for k in ("references_s", "original_s")
    )
    return Timeline(
        run_id=record.id,
        search_s=search_s,
        full_evaluations=sum(1 for _, e in searched if not e.candidate.variant),
        screened=screened,
        hypervolume=curve,
        beat_peer=_beat_peer(searched, references, original, higher, speedup, points),
        final_peer=_final_peer(
            stats.get("remeasured_final"),
            [e for _, e in searched],
            references,
            original,
            higher,
            points,
        ),
        stats=stats,
    )
