"""One canonical form per equivalence class of pipelines, so the search and the cache do not pay
twice for the same model.

The roles come from the kind table (``KindSpec.deferred``, ``KindSpec.mergeable``).  Rules (applied
left to right until nothing changes; ``apply`` always runs the canonical form, so
they hold by construction and never change what the backend deploys, see ``precision.resolve``):

1. A post-training intent (``PTQ``, ``PDQ``, ``FP16``) directly followed by another post-training
   intent is dropped: the later one decides, and rounding a model twice in a row adds nothing the
   later rounding does not.  This covers duplicates (``PTQ - PTQ`` -> ``PTQ``).
2. A run of adjacent training steps of the same kind and the same non-epoch parameters (``Tr``,
   ``QAT``) becomes one step whose epochs are the sum (``Tr(epochs=2) - Tr(epochs=3)`` ->
   ``Tr(epochs=5)``); a sum above the kind's epoch limit is split into full-limit steps plus the
   remainder, which is itself canonical.

``Reg`` is not merged (its end-of-training fold is not additive), and nothing moves across a
model-changing step.
"""

from __future__ import annotations

from petra_hw.pipeline import Pipeline, Step


def _same_training(a: Step, b: Step) -> bool:
    if a.kind != b.kind or not a.spec.mergeable:
        return False
    return {n: v for n, v in a.params if n != "epochs"} == {
        n: v for n, v in b.params if n != "epochs"
    }


def _split_epochs(step: Step, total: int) -> list[Step]:
    """``total`` epochs of ``step`` as the fewest steps within the epoch limit, largest first."""
    limit = int(step.spec.param("epochs").high or total)
    full, rest = divmod(total, limit)
    return [step.replace(epochs=limit)] * full + ([step.replace(epochs=rest)] if rest else [])


def canonical_steps(steps: tuple[Step, ...] | list[Step]) -> list[Step]:
    out: list[Step] = []
    for step in steps:
        if out and out[-1].spec.deferred and step.spec.deferred:
            out[-1] = step
            continue
        if out and _same_training(out[-1], step):
            run = [step]
            while out and _same_training(out[-1], step):
                run.append(out.pop())
            out.extend(_split_epochs(step, sum(int(s["epochs"]) for s in run)))
            continue
        out.append(step)
    return out


def canonicalize(pipeline: Pipeline) -> Pipeline:
    """The canonical form of ``pipeline`` (same settings); idempotent."""
    return pipeline.replace_steps(canonical_steps(pipeline.steps))
