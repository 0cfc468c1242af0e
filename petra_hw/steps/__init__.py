"""Compression steps: torch transforms registered by kind (``Tr``, ``Reg``, ``LR``, ``Pr``, ...).

Each implementation is ``fn(model, step, ctx) -> model`` and lives in a module with one job; it is
registered with ``@register("KIND", reads=...)``, naming the model-level settings it reads (a new
kind passes its ``KindSpec`` instead of the name; see docs/extending.md).
Quantization intents (``PTQ``, ``PDQ``, ``FP16``) are resolved by backend compilers, not here.
"""

from __future__ import annotations

from petra_hw.steps.base import (
    StepContext,
    StepFn,
    get_step,
    register,
    registered_kinds,
    settings_read,
)

__all__ = ["StepContext", "StepFn", "get_step", "register", "registered_kinds", "settings_read"]
