"""What precision a pipeline deploys at: the contract between steps and backend compilers.

Quantization steps are *intents*.  The last quantization step of a pipeline decides the artifact:
``PTQ`` -> INT8 static (calibrated on the calib split with its calibration method), ``PDQ`` -> INT8
dynamic, ``FP16`` -> half precision, ``QAT`` -> INT8 from the fake-quantized model's own QDQ scales
when QAT is the last step that changes the model, otherwise INT8 static.  A pipeline with no
quantization step deploys at the device's float precision (fp32 on CPUs, fp16 on GPUs).
Quantization steps that are not last act on the torch model as described in
``petra_hw.steps.qat`` (see docs/decisions.md).
"""

from __future__ import annotations

from dataclasses import dataclass

from petra_hw.pipeline import Pipeline

QUANT_KINDS = ("PTQ", "PDQ", "FP16", "QAT")


@dataclass(frozen=True)
class PrecisionIntent:
    precision: str  # "fp32" | "fp16" | "int8" | "bf16"
    mode: str = ""  # for int8: "static" | "dynamic" | "qat"
    calibration: str = "minmax"

    def options(self) -> dict[str, object]:
        return (
            {"int8_mode": self.mode, "calibration": self.calibration}
            if self.precision == "int8"
            else {}
        )

    def label(self) -> str:
        return f"{self.precision}-{self.mode}" if self.mode else self.precision


def resolve(pipeline: Pipeline, float_precision: str = "fp32") -> PrecisionIntent:
    quant = [(i, s) for i, s in enumerate(pipeline.steps) if s.kind in QUANT_KINDS]
    if not quant:
        return PrecisionIntent(float_precision)
    i, step = quant[-1]
    if step.kind == "FP16":
        return PrecisionIntent("fp16")
    if step.kind == "PDQ":
        return PrecisionIntent("int8", "dynamic")
    if step.kind == "PTQ":
        return PrecisionIntent("int8", "static", str(step["calibration"]))
    later_changes = any(s.kind not in QUANT_KINDS for s in pipeline.steps[i + 1 :])
    return PrecisionIntent("int8", "static" if later_changes else "qat")
