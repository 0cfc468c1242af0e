"""What the CPU compilers share: per-backend profile settings, host CPU flags, calibration batches.

A profile TOML may carry an optional table per backend (``[onnxruntime]``, ``[openvino]``) with
compiler settings that depend on the device (quantization types, performance hint); the profile
parses them (``DeviceProfile.backend_settings``) and backends read their own table here.
"""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petra_hw.artifact import InputSpec
from petra_hw.profiles import DeviceProfile
from petra_hw.suite import Split

# What a re-quantized QAT artifact records beside its quantization settings.
QAT_REQUANTIZED = {
    "weights": "QAT-trained (fake-quantized values)",
    "requantized": "PTQ's QDQ placement; activation ranges calibrated on the calib split",
}
# Instructions that give x86 int8 dot products without the u8*s8 16-bit saturation of AVX2.
VNNI_FLAGS = frozenset({"avx512_vnni", "avx_vnni", "amx_int8"})


def backend_settings(profile: DeviceProfile | None, backend: str) -> dict[str, object]:
    """The profile's optional ``[backend]`` table (empty when the profile has none)."""
    return {} if profile is None else dict(profile.backend_settings.get(backend, {}))


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This host's CPU feature flags from /proc/cpuinfo (empty where there is none)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def has_vnni() -> bool:
    return platform.machine() in ("x86_64", "AMD64") and bool(cpu_flags() & VNNI_FLAGS)


def calib_batches(calib: Split | None, batch_size: int = 32) -> list[np.ndarray]:
    """The calib split as equal-sized float32 batches.

    Histogram calibrators (entropy, percentile) stack per-batch outputs and fail on a short last
    batch, so that batch is completed with samples from the start of the split.
    """
    if calib is None or len(calib) == 0:
        raise ValueError("INT8 static quantization needs a non-empty calib split")
    x = calib.inputs().numpy().astype(np.float32, copy=False)
    bs = min(batch_size, len(x))
    batches = []
    for i in range(0, len(x), bs):
        b = x[i : i + bs]
        if len(b) < bs:
            b = np.concatenate([b, x[: bs - len(b)]])
        batches.append(np.ascontiguousarray(b))
    return batches


def qat_float_model(model: nn.Module, spec: InputSpec) -> nn.Module:
    """The QAT-trained model as a float model for the CPU compilers to re-quantize.

    NNCF's own QDQ export leaves most compute ops in float in ONNX Runtime and OpenVINO (e.g. 3 of
    14 on a small Transformer, 13 of 53 on a MobileNetV2): its Q/DQ pairs sit where their fusers
    do not look.  The CPU backends therefore take the trained weights (already on the INT8 grid)
    and quantize them with the placement their PTQ uses, so a QAT artifact runs as many INT8 ops
    as PTQ of the same model (docs/decisions.md).
    """
    from petra_hw.onnx_export import is_fake_quantized
    from petra_hw.steps.qat import trained_float_model

    if not is_fake_quantized(model):
        raise ValueError(
            "int8_mode 'qat' needs a fake-quantized model, but it has no QDQ quantizers"
        )
    example = torch.zeros(spec.sample_shape(1), dtype=torch.float32)
    return trained_float_model(model, example)
