"""Multi-fidelity evaluation: successive halving over the epoch budget of training steps.

Training dominates an evaluation's cost, and most children of a small population end up dominated.
So, as Optuna's ``SuccessiveHalvingPruner`` and Ray Tune's ASHA do, a candidate whose pipeline
trains is first evaluated at a reduced *fidelity*: each of its training steps (``Tr``, ``Reg``,
``QAT``, and the from-scratch training of untrained mode) runs every epoch over only a share of
its shuffled batches (``training.train(fraction=...)``), then is compiled, judged and timed like
any candidate.  Only a candidate whose low-fidelity point would *enter the current front* is
promoted to the next rung and finally to full epochs.  Structure (LR ranks, Pr ratios, precision)
is the same at every rung, so size and latency are already the full model's; quality is a
pessimistic estimate of the full one, which is why the rule asks only for entry into the front.

Rules that keep the front honest:

- a reduced-fidelity evaluation is its own journal row (id ``<hash>@<fidelity>``, column
  ``fidelity``) and never a point of a front, a hypervolume or a report (``Objectives.matrix``
  treats it as failed; reports read full-fidelity rows only);
- a candidate that is not promoted is told to the strategy as its low-fidelity evaluation (so it
  ranks last and its operator earns nothing), not evaluated further;
- "the current front" is the front of the run's full-fidelity evaluations made *before* the
  batch, so a resumed run takes exactly the same promotion decisions from its journal;
- pipelines that train nothing have no reduced rung: they are evaluated at full fidelity at once.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from petra_hw.errors import UserError
from petra_hw.search.objectives import Objectives
from petra_hw.search.selection import pareto_front
from petra_hw.search.types import Candidate, Evaluation

DEFAULT_RUNGS = (0.34,)  # one reduced rung at about a third of the epochs, ASHA's eta = 3

Evaluate = Callable[[list[Candidate]], list[Evaluation]]


def parse_rungs(text: str) -> tuple[float, ...]:
    """``"0.34"`` or ``"0.2,0.5"``: the reduced rungs; ``"1"``/``"off"``: no reduced rung."""
    if text.strip().lower() in ("off", "1", "1.0", "none", ""):
        return ()
    try:
        rungs = tuple(float(x) for x in text.split(","))
    except ValueError:
        raise UserError(f"bad fidelity rungs {text!r}: give shares in (0, 1) like 0.34") from None
    return check_rungs(rungs)


def check_rungs(rungs: Iterable[float]) -> tuple[float, ...]:
    rungs = tuple(float(r) for r in rungs)
    if any(not 0.0 < r < 1.0 for r in rungs) or list(rungs) != sorted(set(rungs)):
        raise UserError(
            f"fidelity rungs {','.join(f'{r:g}' for r in rungs)}: give increasing shares in (0, 1)"
        )
    return rungs


def enters_front(low: Evaluation, front: Sequence[Evaluation], objectives: Objectives) -> bool:
    """Whether ``low``'s point, taken as if it were full fidelity, would be on the front of
    ``front`` plus itself (failed or infeasible points never enter)."""
    if not low.ok:
        return False
    probe = dataclasses.replace(low, fidelity=1.0)
    return any(e is probe for e in pareto_front([*front, probe], objectives))


def promoted(
    lows: Sequence[Evaluation], front: Sequence[Evaluation], objectives: Objectives
) -> list[Evaluation]:
    """The low-fidelity evaluations whose point enters ``front`` (each judged alone against it)."""
    return [e for e in lows if enters_front(e, front, objectives)]


@dataclass(frozen=True)
class SuccessiveHalving:
    """Evaluate one batch of candidates rung by rung, promoting by front entry."""

    rungs: tuple[float, ...]
    objectives: Objectives
    trains: Callable[[Candidate], bool]  # whether a candidate has any training to reduce

    def run(
        self, batch: Sequence[Candidate], front: Sequence[Evaluation], evaluate: Evaluate
    ) -> list[Evaluation]:
        """One evaluation per candidate of ``batch``, in its order: the full-fidelity one for
        those promoted through every rung (and those that train nothing), else the last
        low-fidelity one, relabelled with the candidate itself so the strategy can take it."""
        result: dict[str, Evaluation] = {}
        alive = [c for c in batch if self.rungs and self.trains(c)]
        full_now = [c for c in batch if c not in alive]
        for i, rung in enumerate(self.rungs):
            # the first rung shares its submission with the candidates that go straight to full
            extra = full_now if i == 0 else []
            evs = evaluate([*extra, *(dataclasses.replace(c, fidelity=rung) for c in alive)])
            by_id = {e.candidate.id: e for e in evs}
            for c in extra:
                result[c.id] = by_id[c.id]
            lows = [by_id[dataclasses.replace(c, fidelity=rung).id] for c in alive]
            keep = {e.candidate.id for e in promoted(lows, front, self.objectives)}
            for c, low in zip(alive, lows, strict=True):
                if low.candidate.id not in keep:
                    result[c.id] = dataclasses.replace(low, candidate=c)
            alive = [c for c, low in zip(alive, lows, strict=True) if low.candidate.id in keep]
        rest = alive if self.rungs else full_now
        if rest:
            for e in evaluate(list(rest)):
                result[e.candidate.id] = e
        return [result[c.id] for c in batch if c.id in result]


def fidelity_stats(evaluations: Iterable[Evaluation]) -> dict[str, int]:
    """Counts for the run summary: reduced-fidelity evaluations and how many were promoted."""
    evaluations = list(evaluations)
    full = {e.candidate.pipeline.hash for e in evaluations if e.full_fidelity}
    low = [e for e in evaluations if not e.full_fidelity and not e.candidate.reference]
    up = {e.candidate.pipeline.hash for e in low if e.candidate.pipeline.hash in full}
    return {
        "low_fidelity": len(low),
        "promoted": len(up),
        "stopped_low": len({e.candidate.pipeline.hash for e in low}) - len(up),
    }
