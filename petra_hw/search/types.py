"""Value types passed between the search boxes (strategy, executor, store, report).

An ``Evaluation`` is one candidate pipeline on one profile: objectives measured through its
compiled artifact, or an ``error`` saying why there are none.  Errors are data: the search
records them and goes on, in the manner of TVM meta_schedule's ``RunnerResult(run_secs, error_msg)``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from petra_hw.pipeline import Pipeline

# Objective name -> True when larger is better.  Quality's direction comes from the suite metric.
OBJECTIVE_DIRECTIONS: dict[str, bool] = {
    "latency_ms": False,
    "throughput_ips": True,
    "size_bytes": False,
    "energy_j": False,
    "complexity": False,
}


@dataclass(frozen=True)
class Candidate:
    """A pipeline the strategy asks to evaluate, with where it came from."""

    pipeline: Pipeline
    generation: int = 0
    parent: str | None = None  # parent's pipeline hash
    operator: str | None = None  # mutation operator that produced it
    # A one-shot reference recipe (``petra_hw.references``): measured beside the search, never
    # searched, mutated or counted in a front's hypervolume.
    reference: str | None = None
    # Share of its training steps' epoch budget (``petra_hw.search.fidelity``): 1.0 = full; a
    # reduced rung is its own journal row (``<hash>@<fidelity>``), never on a front.
    fidelity: float = 1.0
    # A backend variant (``petra_hw.search.variants``): the trained model of the evaluation
    # ``parent`` compiled for this other backend of the profile; its own journal row
    # (``<hash>.<backend>``), its own point on the front.  None: the evaluation that trains.
    variant: str | None = None

    @property
    def id(self) -> str:
        if self.reference:
            return f"ref-{self.reference}"
        if self.variant:
            return f"{self.pipeline.hash}.{self.variant}"
        return (
            self.pipeline.hash
            if self.fidelity >= 1.0
            else f"{self.pipeline.hash}@{self.fidelity:g}"
        )

    @property
    def trained_id(self) -> str:
        """The id of the evaluation that trained this candidate's model (a variant's parent)."""
        return (self.parent or "") if self.variant else self.id


@dataclass(frozen=True)
class Evaluation:
    candidate: Candidate
    objectives: dict[str, float] = field(default_factory=dict)  # raw values, units in names
    quality: dict[str, float] = field(default_factory=dict)  # split -> metric, via the artifact
    parity: dict[str, float] = field(default_factory=dict)
    measurement: dict[str, Any] | None = None  # Measurement.to_json()
    artifact: str | None = None
    precision: str = ""
    backend: str = ""
    error: str | None = None
    error_kind: str | None = None  # "step", "compile", "nan", "timeout", "crash", "cut", ...
    timings_s: dict[str, float] = field(default_factory=dict)
    feasible: bool = True
    cache_hit_steps: int = 0
    # What the steps left out, e.g. "LR(threshold=0.6): skipped: 31 layers (not cheaper at ...)";
    # a step that changed nothing is an error of kind "no-op" instead (steps.effects).
    step_notes: list[str] = field(default_factory=list)
    fidelity: float = 1.0  # the training share this evaluation ran at (1.0: full epochs)

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def variant(self) -> str:
        """``backend/precision`` of a backend variant, "" for the evaluation that trained."""
        return f"{self.backend}/{self.precision}" if self.candidate.variant else ""

    @property
    def full_fidelity(self) -> bool:
        """Only these reach a front, a hypervolume or a report."""
        return self.fidelity >= 1.0

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["candidate"] = {
            "pipeline": self.candidate.pipeline.to_json(),
            "pipeline_text": str(self.candidate.pipeline),
            "id": self.candidate.id,
            "generation": self.candidate.generation,
            "parent": self.candidate.parent,
            "operator": self.candidate.operator,
            "reference": self.candidate.reference,
            "fidelity": self.candidate.fidelity,
            "variant": self.candidate.variant,
        }
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> Evaluation:
        c = d["candidate"]
        cand = Candidate(
            Pipeline.from_json(c["pipeline"]),
            c["generation"],
            c["parent"],
            c["operator"],
            c.get("reference"),
            c.get("fidelity", 1.0),
            c.get("variant"),
        )
        return Evaluation(**{**d, "candidate": cand})
