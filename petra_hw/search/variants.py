"""Backends as part of the search: one trained model, one evaluation per backend.

A candidate's training is its expensive part; compiling the same trained model for another
backend of the profile costs seconds, and which runtime is fastest differs by model (on one
MobileNet OpenVINO INT8 ran 2.9x the throughput of ONNX Runtime INT8).  So after a candidate is
evaluated at full fidelity on the first backend that supports its precision (``choose_backend``),
every other backend of the profile that supports that precision (``backend.supporting_backends``)
gets a *variant*: a ``Candidate`` with ``variant=<backend>`` and ``parent=<the trained id>``, its
own journal row labelled ``backend/precision`` and its own point on the front.

- Training happens once: a variant compiles the model its parent's worker kept in memory, or the
  prefix cache's entry of that model; when neither holds it the variant is recorded as a
  ``compile`` error, never retrained (``petra_hw.search.evaluator``).
- Each variant has its own time limit (``variant_timeout_s``): half the candidate timeout,
  clamped to 30-120 s, so a slow compile never makes the trained candidate time out, and a
  variant that fails or times out is recorded on the variant alone.
- The time budget admits each variant separately (``search.budget.expected_seconds``).
- Reduced-fidelity evaluations, failures, the Original, references and a run with ``--backend``
  (one backend pinned) get no variants.
"""

from __future__ import annotations

from collections.abc import Iterable

from petra_hw.backend import supporting_backends
from petra_hw.precision import deployed_intent
from petra_hw.profiles import DeviceProfile
from petra_hw.search.types import Candidate, Evaluation

VARIANT_OPERATOR = "variant"  # a variant's ``Candidate.operator``
VARIANT_TIMEOUT_SHARE = 0.5
VARIANT_TIMEOUT_RANGE_S = (30.0, 120.0)


def variant_timeout_s(candidate_timeout_s: float) -> float:
    """A variant's own time limit: half the candidate's, clamped to 30-120 s."""
    low, high = VARIANT_TIMEOUT_RANGE_S
    return min(high, max(low, VARIANT_TIMEOUT_SHARE * candidate_timeout_s))


def timeout_for(candidate: Candidate, candidate_timeout_s: float) -> float:
    """The executor's limit for one task: a variant's own, else the candidate timeout."""
    return variant_timeout_s(candidate_timeout_s) if candidate.variant else candidate_timeout_s


def variant_candidates(
    evaluations: Iterable[Evaluation], profile: DeviceProfile, pinned: str | None = None
) -> list[Candidate]:
    """The variants owed to ``evaluations``: for each successful full-fidelity candidate (not
    the Original, a reference or a variant), one per other backend supporting its precision."""
    if pinned:
        return []
    out = []
    for ev in evaluations:
        c = ev.candidate
        if not (ev.ok and ev.full_fidelity and c.pipeline.steps) or c.reference or c.variant:
            continue
        intent = deployed_intent(c.pipeline, profile)
        for backend in supporting_backends(profile, intent):
            if backend != ev.backend:
                out.append(
                    Candidate(c.pipeline, c.generation, c.id, VARIANT_OPERATOR, variant=backend)
                )
    return out
