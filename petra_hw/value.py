"""What a run is worth: its best artifacts within the quality budget, next to the peers.

The *quality budget* is the largest relative drop of the suite's metric a user accepts (the run's
``--max-quality-drop``, else ``DEFAULT_QUALITY_BUDGET`` = 1% of the Original's metric).  It is
checked on val, the split the search ranks on; reports then give test.  "The best artifact" for an
objective is the best within budget; points over budget stay on the front and are marked.

A comparison puts that artifact beside the best *peer* within the same budget (a peer that loses
more than the budget is no alternative a user would deploy either); when no peer is within budget
the best peer over it is shown and the line says so.  The ratio reads "how many times better than
the peer", >1 when petra-hw wins.

*Which figures.*  Peers are timed at the run's start, front points minutes or hours later, each in
its own process: on a noisy host a ratio of two such figures measures the machine as much as the
models.  The tune loop therefore re-times the Original, the front and every reference interleaved
in one process before it reports (``search.remeasure``), and the comparisons, the best artifact per
objective and ``--best`` rank on those figures (``final_figures``).  When that re-measurement is
off, failed or left out an artifact that could be compared, every figure falls back to the
journaled ones, never a mix in one ratio, and ``Figures.note`` says which were used and why.  Size
is bytes on disk, the same in both.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from petra_hw.references import CONTROL
from petra_hw.search.objectives import Objectives
from petra_hw.search.types import Evaluation

DEFAULT_QUALITY_BUDGET = 0.01  # relative to the Original's val metric
# Objectives a user picks a deployment by, with whether higher is better.
BEST_BY: dict[str, bool] = {"latency_ms": False, "size_bytes": False, "throughput_ips": True}
ALIASES = {"latency": "latency_ms", "size": "size_bytes", "throughput": "throughput_ips"}
# A training control better than the Original by more than this many points (1% of 1.0) on test
# means the baseline is under-trained (metrics in [0, 1]; larger metrics: 1% of the Original's).
UNDERTRAINED_POINTS = 0.01


def quality_budget(max_quality_drop: float | None) -> float:
    return DEFAULT_QUALITY_BUDGET if max_quality_drop is None else float(max_quality_drop)


def objective_name(text: str) -> str:
    """``latency`` / ``latency_ms`` ... -> the objective's name (ValueError when unknown)."""
    name = ALIASES.get(text, text)
    if name not in BEST_BY:
        raise ValueError(f"choose one of {', '.join(ALIASES)}")
    return name


def within_budget(ev: Evaluation, objectives: Objectives, budget: float) -> bool:
    drop = objectives.quality_drop(ev)
    return ev.ok and math.isfinite(drop) and drop <= budget + 1e-12


def _best(pool: Iterable[Evaluation], name: str) -> Evaluation | None:
    """The evaluation with the best finite ``name`` (None for an empty pool)."""
    pool = [e for e in pool if math.isfinite(e.objectives.get(name, math.nan))]
    sign = -1.0 if BEST_BY[name] else 1.0
    return min(pool, key=lambda e: sign * e.objectives[name], default=None)


def best_within(
    evaluations: Iterable[Evaluation], name: str, objectives: Objectives, budget: float
) -> Evaluation | None:
    """The evaluation with the best ``name`` among those within budget (None when none is)."""
    return _best((e for e in evaluations if within_budget(e, objectives, budget)), name)


def peers(references: Iterable[Evaluation]) -> list[Evaluation]:
    """The one-shot recipes among the references (the training control is not a peer)."""
    return [r for r in references if r.candidate.reference != CONTROL]


REMEASURED = "re-measured"
JOURNALED = "journaled"
TIMED = ("latency_ms", "throughput_ips")  # the objectives a re-measurement re-times


@dataclass(frozen=True)
class Figures:
    """The timed figures a run's comparisons use: re-measured interleaved (``values``, by
    candidate id) or, when that cannot cover every artifact compared, the journaled ones."""

    source: str  # REMEASURED | JOURNALED
    note: str  # which figures, and why (printed by the summary, written in every report)
    values: dict[str, dict[str, float]] = dataclasses.field(default_factory=dict)

    def apply(self, evaluations: Iterable[Evaluation]) -> list[Evaluation]:
        """Copies of ``evaluations`` whose timed objectives are the re-measured ones."""
        if self.source != REMEASURED:
            return list(evaluations)
        return [
            dataclasses.replace(e, objectives={**e.objectives, **self.values[e.candidate.id]})
            if e.candidate.id in self.values
            else e
            for e in evaluations
        ]

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "note": self.note}


def compared(front: Iterable[Evaluation], references: Iterable[Evaluation]) -> list[Evaluation]:
    """Every artifact a comparison or ``--best`` may pick: the front and the measured peers."""
    return [e for e in [*front, *peers(references)] if e.ok and e.artifact]


def final_figures(
    record: dict[str, Any] | None, front: Sequence[Evaluation], references: Sequence[Evaluation]
) -> Figures:
    """The run's final interleaved re-measurement (``stats.remeasured_final``) as figures, when
    it timed every artifact in ``compared(front, references)``; else journaled, with the reason."""

    def journaled(why: str) -> Figures:
        return Figures(JOURNALED, f"journaled figures (each timed alone, at its own moment): {why}")

    if not record:
        return journaled("no final interleaved re-measurement was recorded (run not finished?)")
    if record.get("skipped"):
        return journaled(str(record["skipped"]))
    if record.get("error"):
        return journaled(f"the final interleaved re-measurement failed: {record['error']}")
    values: dict[str, dict[str, float]] = {}
    if record.get("original_id") and record.get("original_throughput_ips") is not None:
        values[record["original_id"]] = {
            "latency_ms": record["original_latency_ms"],
            "throughput_ips": record["original_throughput_ips"],
        }
    for row_id, row in [*record.get("front", {}).items(), *record.get("references", {}).items()]:
        if all(row.get(n) is not None for n in TIMED):
            values[row_id] = {n: float(row[n]) for n in TIMED}
    failed = record.get("failed", {})
    missing = [e for e in compared(front, references) if e.candidate.id not in values]
    if missing:
        named = "; ".join(
            _label(e) + (f" ({failed[e.candidate.id]})" if e.candidate.id in failed else "")
            for e in missing
        )
        return journaled(f"the final interleaved re-measurement lacks {named}")
    return Figures(
        REMEASURED,
        f"figures re-measured interleaved in one process ({record.get('rounds', '?')} rounds, the "
        "Original, the front and the references round-robin); size is bytes on disk",
        values,
    )


def _label(ev: Evaluation) -> str:
    return (
        f"ref: {ev.candidate.reference}" if ev.candidate.reference else str(ev.candidate.pipeline)
    )


@dataclass(frozen=True)
class Comparison:
    """One objective: the run's best artifact within budget against the best peer."""

    objective: str
    best: Evaluation | None
    peer: Evaluation | None
    peer_within_budget: bool

    @property
    def ratio(self) -> float | None:
        """How many times better the run's artifact is (>1: petra-hw wins)."""
        if self.best is None or self.peer is None:
            return None
        mine, theirs = self.best.objectives[self.objective], self.peer.objectives[self.objective]
        if mine <= 0 or theirs <= 0:
            return None
        return mine / theirs if BEST_BY[self.objective] else theirs / mine

    def line(self) -> str:
        label = {"latency_ms": "latency", "size_bytes": "size", "throughput_ips": "throughput"}
        head = label[self.objective]
        if self.best is None:
            return f"{head}: no artifact within the quality budget"
        mine = _fmt(self.objective, self.best.objectives[self.objective])
        if self.peer is None:
            return f"{head} {mine} ({self.best.candidate.pipeline}): no peer measured"
        theirs = _fmt(self.objective, self.peer.objectives[self.objective])
        over = "" if self.peer_within_budget else ", over budget"
        ratio = self.ratio
        times = "-" if ratio is None else f"{ratio:.2f}x"
        return (
            f"{head} {mine} vs {theirs} ({self.peer.candidate.reference}{over}): {times}"
            f" [{self.best.candidate.pipeline}]"
        )


def _fmt(name: str, value: float) -> str:
    if name == "latency_ms":
        return f"{value:.3f} ms"
    if name == "size_bytes":
        return f"{value / 1e6:.3f} MB"
    return f"{value:.0f} ips"


def compare(
    front: Sequence[Evaluation],
    references: Sequence[Evaluation],
    objectives: Objectives,
    budget: float,
    names: Iterable[str] = tuple(BEST_BY),
    figures: Figures | None = None,
) -> list[Comparison]:
    """One comparison per objective: best front point within budget vs the best peer, on
    ``figures`` (default: the journaled ones)."""
    if figures is not None:
        front, references = figures.apply(front), figures.apply(references)
    ok_peers = [p for p in peers(references) if p.ok]
    out = []
    for name in names:
        peer = best_within(ok_peers, name, objectives, budget)
        within = peer is not None
        if peer is None:  # no peer keeps the quality: show the best one anyway, marked
            peer = _best(ok_peers, name)
        out.append(Comparison(name, best_within(front, name, objectives, budget), peer, within))
    return out


def undertrained(
    original: Evaluation, references: Iterable[Evaluation], higher: bool
) -> str | None:
    """A warning when the training control beats the Original by more than
    ``UNDERTRAINED_POINTS`` on test: then a pipeline's gain may be training the Original lacked."""
    control = next((r for r in references if r.candidate.reference == CONTROL and r.ok), None)
    q0, q1 = original.quality.get("test"), None if control is None else control.quality.get("test")
    if q0 is None or q1 is None or not (math.isfinite(q0) and math.isfinite(q1)):
        return None
    gain = (q1 - q0) if higher else (q0 - q1)
    if gain <= UNDERTRAINED_POINTS * max(1.0, abs(q0)):
        return None
    return (
        f"the Original looks under-trained: {control.candidate.pipeline} scores {q1:.4f} on test "
        f"against its {q0:.4f}; gains of pipelines with a training step may be training alone"
    )


def slower_than_original(latency_ms: float, original_ms: float) -> str | None:
    """The warning an artifact slower than the Original at batch 1 carries (p50 latency, same
    backend, Original at fp32); None when it is not slower.  Compression that costs speed
    (e.g. INT8 on a model too small for integer kernels to pay) must never pass unremarked."""
    if not (latency_ms > original_ms > 0.0):
        return None
    return (
        f"slower than the Original at batch 1: p50 {latency_ms:.4g} ms vs {original_ms:.4g} ms "
        f"({latency_ms / original_ms:.2f}x)"
    )
