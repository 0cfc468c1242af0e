"""What a step did to the model: nothing at all (a no-op, with the reason), or only part of it
(``skipped``: how many layers it left as they were, and why).

A step reports its effect through ``StepContext.report``; ``petra_hw.apply`` collects the reports
of a pipeline (the prefix cache keeps them with its entries) and, for the search, stops at the
first no-op with :class:`NoOpStep`: a candidate whose step changed nothing is the shorter pipeline
again, and compiling and timing it would only measure noise (see docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class StepEffect:
    """One step's effect: ``changed`` False is a no-op (``reason`` says why); ``skipped`` layers
    were left unchanged (``why_skipped``) while others changed."""

    step: str  # the step as the paper writes it, e.g. "LR(threshold=0.6)"
    changed: bool = True
    reason: str = ""
    skipped: int = 0
    why_skipped: str = ""

    @staticmethod
    def no_op(step: object, reason: str) -> StepEffect:
        return StepEffect(str(step), changed=False, reason=reason)

    @property
    def note(self) -> str:
        """One line for an evaluation: ``'LR: skipped: 31 layers (why)'``, or the no-op reason."""
        if not self.changed:
            return f"{self.step}: no-op: {self.reason}"
        return f"{self.step}: skipped: {self.skipped} layers ({self.why_skipped})"

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> StepEffect:
        return StepEffect(**d)


def skipped_effect(step: object, reasons: list[tuple[int, str]]) -> StepEffect | None:
    """One effect for layers skipped for several reasons, ``(count, why)`` each (zero counts
    dropped); the counts prefix each reason only when there is more than one.  None: none
    skipped."""
    kept = [(n, why) for n, why in reasons if n]
    if not kept:
        return None
    why = kept[0][1] if len(kept) == 1 else "; ".join(f"{n} {why}" for n, why in kept)
    return StepEffect(str(step), skipped=sum(n for n, _ in kept), why_skipped=why)


class NoOpStep(Exception):
    """A step changed nothing; the message is its effect's note."""

    def __init__(self, effect: StepEffect) -> None:
        super().__init__(effect.note)
        self.effect = effect
