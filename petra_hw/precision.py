"""What precision a pipeline deploys at: the contract between steps and backend compilers.

Quantization steps are *intents*.  The last quantization step of a pipeline decides the artifact,
as its kind declares (``KindSpec.precision``/``int8_mode``): ``PTQ`` -> INT8 static (calibrated on
the calib split with its calibration method), ``PDQ`` -> INT8 dynamic, ``FP16`` -> half precision,
``QAT`` -> INT8 from the fake-quantized model's own QDQ scales when QAT is the last step that
changes the model, otherwise INT8 static.  A pipeline with no
quantization step deploys at the device's float precision (fp32 on CPUs, fp16 on GPUs).
Quantization steps that are not last act on the torch model as described in
``petra_hw.steps.qat`` (see docs/decisions.md).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from petra_hw.pipeline import Pipeline

if TYPE_CHECKING:
    from petra_hw.profiles import DeviceProfile


INT8_MODES = ("static", "dynamic", "qat")


@dataclass(frozen=True)
class PrecisionIntent:
    """What to deploy: the contract a ``CompileRequest`` carries to every backend.

    ``mode`` matters for int8 only (default ``static``); ``calibration`` for int8 static only."""

    precision: str  # "fp32" | "fp16" | "int8" | "bf16"
    mode: str = ""  # for int8: "static" | "dynamic" | "qat"
    calibration: str = "minmax"

    def __post_init__(self) -> None:
        if self.precision == "int8" and not self.mode:
            object.__setattr__(self, "mode", "static")
        if self.mode and (self.precision != "int8" or self.mode not in INT8_MODES):
            raise ValueError(f"int8 mode {self.mode!r} with precision {self.precision!r}")

    def label(self) -> str:
        return f"{self.precision}-{self.mode}" if self.mode else self.precision


def float_precision(device_kind: str, precisions: Collection[str]) -> str:
    """What a pipeline without quantization deploys at on a device of this kind (``cpu`` or
    ``gpu``) running these precisions: fp16 on GPUs that run it, else fp32."""
    return "fp16" if device_kind == "gpu" and "fp16" in precisions else "fp32"


def deployed_intent(pipeline: Pipeline, profile: DeviceProfile) -> PrecisionIntent:
    """``resolve`` on a profile: the intent ``pipeline`` deploys at there."""
    return resolve(pipeline, float_precision(profile.device_kind, profile.precisions))


def resolve(pipeline: Pipeline, float_precision: str = "fp32") -> PrecisionIntent:
    """The intent of the pipeline's last quantizing step (see the module docstring)."""
    quant = [(i, s) for i, s in enumerate(pipeline.steps) if s.spec.quantizes]
    if not quant:
        return PrecisionIntent(float_precision)
    i, step = quant[-1]
    spec = step.spec
    if spec.precision != "int8":
        return PrecisionIntent(spec.precision)
    if spec.deferred:
        calibration = str(step["calibration"]) if "calibration" in dict(step.params) else "minmax"
        return PrecisionIntent("int8", spec.int8_mode, calibration)
    # a trained intent (QAT) deploys its own scales only when nothing after it changes the model
    later_changes = any(not s.spec.quantizes for s in pipeline.steps[i + 1 :])
    return PrecisionIntent("int8", "static" if later_changes else spec.int8_mode)
