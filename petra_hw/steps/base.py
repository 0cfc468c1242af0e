"""The step protocol and its registry (in the manner of Torch-Pruning's registry by layer type)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from petra_hw.pipeline import Pipeline, Step
from petra_hw.suite import Splits, Suite


@dataclass(frozen=True)
class StepContext:
    """What a step may use: the suite, its splits (train/calib only!), the pipeline's settings,
    the profile's channel multiple, and the seed."""

    suite: Suite
    splits: Splits
    pipeline: Pipeline
    channel_multiple: int = 1
    seed: int = 0
    epoch_callback: Callable[[int, float], None] | None = None

    @property
    def optimizer(self) -> str:
        return str(self.pipeline.setting("optimizer"))

    @property
    def lr(self) -> float:
        return float(self.pipeline.setting("lr"))

    @property
    def loss(self) -> str:
        return str(self.pipeline.setting("loss"))


StepFn = Callable[[nn.Module, Step, StepContext], nn.Module]

_REGISTRY: dict[str, StepFn] = {}
# Modules that register the built-in steps; imported on first lookup to keep imports light.
_BUILTIN_MODULES = (
    "petra_hw.steps.lowrank",
    "petra_hw.steps.regularized",
    "petra_hw.steps.pruning",
    "petra_hw.steps.finetune",
    "petra_hw.steps.qat",
)


def register(kind: str) -> Callable[[StepFn], StepFn]:
    def deco(fn: StepFn) -> StepFn:
        _REGISTRY[kind] = fn
        return fn

    return deco


def _load_builtins() -> None:
    for name in _BUILTIN_MODULES:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise


def get_step(kind: str) -> StepFn:
    if kind not in _REGISTRY:
        _load_builtins()
    if kind not in _REGISTRY:
        raise KeyError(f"no implementation registered for step kind {kind!r}")
    return _REGISTRY[kind]


def registered_kinds() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)
