"""ONNX export shared by every ONNX-consuming backend (ONNX Runtime, OpenVINO, TensorRT).

We use torch 2.14's default exporter (``dynamo=True``, built on ``torch.export``), opset 18, with a
dynamic batch axis and ``external_data=False`` so the artifact is one self-contained ``.onnx`` file
(models here are far below the 2 GB protobuf limit).  Its console progress is silenced: library code
does not print.

Fake-quantized (QAT) models are the exception: NNCF's quantizers read scalars with ``.item()``,
which ``torch.export`` cannot trace, so they go to ``petra_hw.steps.qat.export_qdq`` (TorchScript
exporter, QuantizeLinear/DequantizeLinear pairs).  ``signed_qdq=True`` asks for signed INT8 Q/DQ
only, as TensorRT's ONNX parser requires.
"""

from __future__ import annotations

import contextlib
import io
import logging
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
    from petra_hw.steps.qat import export_qdq, is_fake_quantized

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
