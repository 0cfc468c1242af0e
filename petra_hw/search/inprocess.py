"""The in-process executor: candidates evaluated one after another in the calling process.

The path that always works for a suite made in Python, whatever it holds (lambdas, a notebook's
classes): nothing travels to another process.  What it gives up: no per-candidate timeout (a
candidate runs to its end), and a crash of native code (a segfault, the OOM killer) ends the
calling process instead of one candidate.  ``petra_hw.tune(..., workers=1)`` uses it for a suite
object; the CLI keeps its worker process (``--executor inprocess`` asks for this one).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from petra_hw.search.evaluator import EvalContext, evaluate_candidate
from petra_hw.search.executors import Executor, ExecutorOptions, register_executor
from petra_hw.search.types import Candidate, Evaluation

NAME = "inprocess"


class InProcessExecutor:
    """Evaluate each candidate here, in submission order (failures come back as data)."""

    def __init__(self, context: EvalContext) -> None:
        self.context = context

    def submit(self, candidates: Iterable[Candidate]) -> Iterator[Evaluation]:
        for candidate in candidates:
            yield evaluate_candidate(candidate, self.context)

    def close(self) -> None:
        """Nothing to release: the suite and models stay cached in this process."""


@register_executor(NAME)
def _inprocess(context: EvalContext, options: ExecutorOptions) -> Executor:
    return InProcessExecutor(context)
