"""The step protocol and its registry (in the manner of Torch-Pruning's registry by layer type).

Each kind registers with the model-level settings (optimizer, lr, loss) its steps read.  The prefix
cache keys an intermediate model by those settings only, so a child that changes the learning rate
still reuses its parent's ``LR - Pr`` prefix; ``StepContext`` refuses a setting a step did not
declare, so a wrong declaration fails loudly instead of serving a stale model from the cache.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Collection
from dataclasses import dataclass

from torch import nn

from petra_hw.kinds import KINDS, SETTINGS, KindSpec, register_kind
from petra_hw.pipeline import Pipeline, Step
from petra_hw.steps.effects import StepEffect
from petra_hw.suite import Splits, Suite

ALL_SETTINGS = frozenset(p.name for p in SETTINGS.params)


class UndeclaredSetting(RuntimeError):
    """A step read a model-level setting its registration does not declare."""


@dataclass(frozen=True)
class StepContext:
    """What a step may use: the suite, its splits (train/calib only!), the pipeline's settings,
    the profile's channel multiple, and the seed; and where it reports a no-op or skipped layers."""

    suite: Suite
    splits: Splits
    pipeline: Pipeline
    channel_multiple: int = 1
    seed: int = 0
    epoch_callback: Callable[[int, float], None] | None = None
    reads: frozenset[str] | None = None  # settings the running step declared (None: any)
    fidelity: float = 1.0  # share of each training epoch to run (multi-fidelity search)
    # Where a step reports what it changed (``steps.effects``); None: nobody listens.
    report: Callable[[StepEffect], None] | None = None

    def record(self, effect: StepEffect) -> None:
        """Report a no-op or skipped layers (``petra_hw.apply`` collects them)."""
        if self.report is not None:
            self.report(effect)

    def _setting(self, name: str) -> object:
        if self.reads is not None and name not in self.reads:
            raise UndeclaredSetting(
                f"a step read the setting {name!r} without declaring it in @register(reads=...)"
            )
        return self.pipeline.setting(name)

    @property
    def optimizer(self) -> str:
        return str(self._setting("optimizer"))

    @property
    def lr(self) -> float:
        return float(self._setting("lr"))

    @property
    def loss(self) -> str:
        return str(self._setting("loss"))


StepFn = Callable[[nn.Module, Step, StepContext], nn.Module]
Reads = Collection[str] | Callable[[Step], Collection[str]]

_REGISTRY: dict[str, StepFn] = {}
_READS: dict[str, Reads] = {}


def register(kind: str | KindSpec, reads: Reads = ()) -> Callable[[StepFn], StepFn]:
    """Register ``fn`` for ``kind``; ``reads`` names the settings it reads (or maps a step of
    that kind to them, when its parameters decide).  A ``KindSpec`` (a plug-in's new kind) is
    added to the kind table first, so one decorator registers schema and implementation."""
    if isinstance(kind, KindSpec):
        kind = register_kind(kind).name
    if kind not in KINDS:
        raise ValueError(f"step kind {kind!r} is not in the kind table (petra_hw.kinds)")
    unknown = set() if callable(reads) else set(reads) - ALL_SETTINGS
    if unknown:
        raise ValueError(f"{kind}: unknown settings {sorted(unknown)}")

    def deco(fn: StepFn) -> StepFn:
        _REGISTRY[kind] = fn
        _READS[kind] = reads
        return fn

    return deco


def _load(kinds: Collection[str]) -> None:
    """Import the modules that implement ``kinds`` (``KindSpec.module``); imports stay lazy so
    that parsing a pipeline never pulls in torch-heavy step code."""
    for module in dict.fromkeys(KINDS[k].module for k in kinds if k in KINDS):
        if module:
            importlib.import_module(module)


def get_step(kind: str) -> StepFn:
    if kind not in _REGISTRY:
        _load([kind])
    if kind not in _REGISTRY:
        raise KeyError(f"no implementation registered for step kind {kind!r}")
    return _REGISTRY[kind]


def settings_read(step: Step) -> frozenset[str]:
    """The model-level settings ``step`` reads, as its kind registered them."""
    get_step(step.kind)
    reads = _READS[step.kind]
    return frozenset(reads(step) if callable(reads) else reads)


def registered_kinds() -> list[str]:
    _load(list(KINDS))
    return sorted(_REGISTRY)
