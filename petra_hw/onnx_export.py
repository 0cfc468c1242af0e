"""ONNX export shared by every ONNX-consuming backend (ONNX Runtime, OpenVINO, TensorRT).

We use torch 2.14's default exporter (``dynamo=True``, built on ``torch.export``), opset 18, with a
dynamic batch axis and ``external_data=False`` so the artifact is one self-contained ``.onnx`` file
(models here are far below the 2 GB protobuf limit).  Its console progress is silenced: library code
does not print.

Fake-quantized (QAT) models are the exception: NNCF's quantizers read scalars with ``.item()``,
which ``torch.export`` cannot trace, so ``export_qdq`` uses the TorchScript exporter in NNCF's ONNX
Quantize/Dequantize mode (QuantizeLinear/DequantizeLinear pairs with the trained scales).
Activations after ReLU are unsigned (UINT8) by default, which ONNX Runtime fuses into QLinearConv;
TensorRT's ONNX parser accepts only signed INT8 Q/DQ, so ``signed_qdq=True`` re-expresses them as
signed INT8 with the same scale (one bit less on those activations).
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
import sys
import warnings
from pathlib import Path

import torch
from torch import nn

from petra_hw.artifact import InputSpec

log = logging.getLogger(__name__)
OPSET = 18


def export_onnx(
    model: nn.Module,
    spec: InputSpec,
    path: Path,
    output_name: str = "output",
    *,
    signed_qdq: bool = False,
) -> Path:
    """Export ``model`` (eval mode, CPU, float32) to ``path`` with a dynamic batch axis."""
    if is_fake_quantized(model):
        return export_qdq(model, spec, path, output_name, opset=OPSET, signed_only=signed_qdq)
    model = model.eval().cpu()
    example = torch.zeros(spec.sample_shape(2), dtype=torch.float32)
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), torch.no_grad():
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[spec.name],
            output_names=[output_name],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1, max=65536)},),
            opset_version=OPSET,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    log.debug("onnx export: %s", sink.getvalue().strip())
    return path


# -- fake-quantized (QAT) models --------------------------------------------------------------------------
def count_quantizers(model: nn.Module) -> int:
    from nncf.torch.quantization.layers import BaseQuantizer

    return sum(isinstance(m, BaseQuantizer) for m in model.modules())


def is_fake_quantized(model: nn.Module) -> bool:
    """Whether ``model`` carries NNCF fake quantizers (cheap: no NNCF import if none is loaded)."""
    if "nncf" not in sys.modules:
        return False
    return count_quantizers(model) > 0


def export_qdq(
    model: nn.Module,
    spec: InputSpec,
    path: Path,
    output_name: str = "output",
    *,
    opset: int,
    signed_only: bool = False,
) -> Path:
    """Export a fake-quantized model as QDQ ONNX (QuantizeLinear/DequantizeLinear pairs)."""
    from nncf.torch.quantization.layers import (
        BaseQuantizer,
        QuantizerExportMode,
        SymmetricQuantizer,
    )

    model = copy.deepcopy(model).eval().cpu()
    for m in model.modules():
        if isinstance(m, BaseQuantizer):
            m.set_export_mode(QuantizerExportMode.ONNX_QUANTIZE_DEQUANTIZE_PAIRS)
            if signed_only:
                if not isinstance(m, SymmetricQuantizer):
                    raise ValueError("signed-only QDQ needs symmetric quantizers")
                m.signed = True
    example = torch.zeros(spec.sample_shape(2), dtype=torch.float32)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad():
        warnings.simplefilter("ignore")  # TorchScript-exporter deprecation and tracer notes
        torch.onnx.export(
            model,
            (example,),
            str(path),
            input_names=[spec.name],
            output_names=[output_name],
            dynamic_axes={spec.name: {0: "batch"}, output_name: {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return path
