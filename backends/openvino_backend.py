"""openvino backend: OpenVINO IR run by the CPU plugin, at FP32, BF16 or INT8 (NNCF).

The IR is converted from the shared ONNX export (``petra_hw.onnx_export``), not from the torch
module: every ONNX-consuming backend then compiles the same graph.  INT8 static is NNCF
post-training quantization of the IR over the calib split; a QAT model's trained weights are
re-quantized the same way (``backends.common.qat_float_model``), so its INT8 ops are PTQ's.

The CPU plugin picks its own inference precision (BF16 where the CPU has it) unless told, so
every compile names ``INFERENCE_PRECISION_HINT`` (f32 for fp32 and for the float parts of int8,
bf16 for bf16) and the artifact records the precision the compiled model reports and the
per-op runtime precisions of its execution graph.  ``PERFORMANCE_HINT`` is LATENCY: the runner
serves one synchronous request at a time (batch 1 and batch N alike); THROUGHPUT would split the
cores into streams that only several requests in flight can fill.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import tempfile
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from torch import nn

from backends.common import QAT_REQUANTIZED, backend_settings, qat_float_model
from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import BaseBackend, CompileRequest
from petra_hw.errors import UserError
from petra_hw.onnx_export import export_onnx
from petra_hw.profiles import DeviceProfile

if TYPE_CHECKING:
    import openvino

log = logging.getLogger(__name__)

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
HINTS = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: precision of the float parts
PRESETS = ("performance", "mixed")
# The CPU plugin's compute layers (execution-graph layer types); their runtime precision says
# whether they run in integer.
COMPUTE_LAYERS = frozenset(
    {
        "Convolution",
        "GroupConvolution",
        "Deconvolution",
        "FullyConnected",
        "MatMul",
        "RNNSeq",
        "RNNCell",
    }
)
INT_PRECISIONS = frozenset({"u8", "i8"})


@functools.cache
def core() -> openvino.Core:
    """One OpenVINO Core for the whole process, never destroyed.  OpenVINO 2026.4's CPU plugin
    installs its own signal alternate stack when a Core creates it and unmaps that memory when
    the Core goes away, leaving the thread's alternate stack pointing at unmapped memory: the
    next signal handled on it (a child's SIGCHLD with torch's DataLoader handler installed)
    killed the process with a SIGSEGV that no handler could report.  A Core kept alive keeps
    its stack mapped (docs/decisions.md)."""
    import openvino as ov

    return ov.Core()


@functools.cache
def cpu_capabilities() -> tuple[str, ...]:
    return tuple(core().get_property("CPU", "OPTIMIZATION_CAPABILITIES"))


def compile_config(
    hint: str | None, threads: int, settings: dict[str, object]
) -> dict[str, object]:
    """The CPU plugin's configuration; ``hint=None`` leaves the inference precision to the plugin
    (its default: BF16 float parts on a BF16 CPU), as a user of ``nncf.quantize`` gets it."""
    config: dict[str, object] = {
        "PERFORMANCE_HINT": str(settings.get("performance_hint", "LATENCY")),
        "INFERENCE_NUM_THREADS": threads,
    }
    if hint is not None:
        config["INFERENCE_PRECISION_HINT"] = hint
    return config


def inference_hint(request: CompileRequest) -> str | None:
    """What the compile asks the plugin for: the precision's hint, or for the ``nncf-default``
    reference recipe only the one it names (none: the plugin's default)."""
    if request.option("recipe") == "nncf-default":
        hint = request.option("inference_precision")
        return None if hint is None else str(hint)
    return HINTS[request.precision]


def runtime_op_counts(compiled) -> dict[str, object]:
    """Integer vs float compute layers of the CPU plugin's execution graph (what really runs)."""
    by_type: Counter[str] = Counter()
    for op in compiled.get_runtime_model().get_ordered_ops():
        rt = op.get_rt_info()
        layer = rt["layerType"].astype(str)
        if layer not in ("Const", "Input", "Output"):
            by_type[f"{layer}:{rt['runtimePrecision'].astype(str)}"] += 1
    compute = {k: n for k, n in by_type.items() if k.split(":")[0] in COMPUTE_LAYERS}
    return {
        "int8": sum(n for k, n in compute.items() if k.split(":")[1] in INT_PRECISIONS),
        "float": sum(n for k, n in compute.items() if k.split(":")[1] not in INT_PRECISIONS),
        "by_type": dict(sorted(by_type.items())),
        "graph": "openvino-runtime",
    }


def _nncf_quantize(model, request: CompileRequest, settings: dict[str, object]):
    """NNCF post-training quantization of the IR over the calib split, one sample per item."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters
    from nncf.quantization.range_estimator import RangeEstimatorParametersSet as Ranges

    nncf.set_log_level(logging.WARNING)  # NNCF logs INFO to its own handler by default

    calibration = request.intent.calibration
    # NNCF has no KL-entropy calibrator; its histogram search is the closest kin.
    ranges = {
        "minmax": Ranges.MINMAX,
        "percentile": Ranges.MEAN_QUANTILE,
        "entropy": Ranges.HISTOGRAM,
    }
    if calibration not in ranges:
        raise UserError(f"unknown calibration '{calibration}' ({', '.join(ranges)})")
    preset = str(settings.get("preset", "performance"))
    if preset not in PRESETS:
        raise UserError(
            f"profile {request.profile.name}: [openvino] preset must be one of {PRESETS}"
        )
    if request.calib is None or len(request.calib) == 0:
        raise ValueError("INT8 static quantization needs a non-empty calib split")
    samples = list(request.calib.inputs().numpy().astype(np.float32)[:, None])  # batch-1 items
    sink = io.StringIO()
    if request.option("recipe") == "nncf-default":  # the peer: nncf.quantize at its defaults
        with contextlib.redirect_stdout(sink):
            quantized = nncf.quantize(model, nncf.Dataset(samples))
        log.debug("nncf: %s", sink.getvalue().strip())
        return quantized, {"mode": "static", "tool": f"nncf {nncf.__version__}",
                           "recipe": "nncf-default", "calibration_samples": min(300, len(samples))}  # fmt: skip
    with contextlib.redirect_stdout(sink):  # NNCF draws progress bars on stdout
        quantized = nncf.quantize(
            model,
            nncf.Dataset(samples),
            preset=nncf.QuantizationPreset(preset),
            subset_size=len(samples),
            fast_bias_correction=True,
            advanced_parameters=AdvancedQuantizationParameters(
                activations_range_estimator_params=ranges[calibration]
            ),
        )
    log.debug("nncf: %s", sink.getvalue().strip())
    info = {"mode": "static", "tool": f"nncf {nncf.__version__}", "preset": preset,
            "calibration": calibration, "calibration_samples": len(samples),
            "fast_bias_correction": True}  # fmt: skip
    return quantized, info


def _prepare(model, request: CompileRequest, settings: dict[str, object]):
    """The IR at the request's precision, plus what to record about its quantization."""
    if request.precision != "int8":
        return model, {}
    mode = request.intent.mode
    if mode == "static":
        return _nncf_quantize(model, request, settings)
    if mode == "qat":  # the trained weights, re-quantized as PTQ would (``qat_float_model``)
        quantized, info = _nncf_quantize(model, request, settings)
        return quantized, {**info, "mode": "qat", **QAT_REQUANTIZED}
    raise UserError(
        f"openvino compiles int8 static (PTQ) or qat, not {mode!r}; use onnxruntime for PDQ"
    )


class OvRunner:
    """One synchronous infer request on a dynamic-batch compiled model."""

    device = "cpu"

    def __init__(self, compiled) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.request.infer({0: np.ascontiguousarray(x, np.float32)})[0]

    def synchronize(self) -> None:
        """``infer`` is synchronous; nothing to wait for."""


class OpenVinoBackend(BaseBackend):
    name = "openvino"
    int8_modes = ("static", "qat")  # no dynamic quantization: PDQ goes to onnxruntime

    @property
    def precisions(self) -> tuple[str, ...]:
        """fp32 and int8 everywhere; bf16 only where the CPU plugin has it (else it runs f32)."""
        try:
            has_bf16 = "BF16" in cpu_capabilities()
        except ImportError:
            has_bf16 = False
        return ("fp32", "int8", "bf16") if has_bf16 else ("fp32", "int8")

    def available(self, profile: DeviceProfile) -> str | None:
        if profile.is_gpu:
            return "the openvino backend compiles for x86 CPUs; GPU profiles use tensorrt or onnxruntime"
        try:
            import openvino  # noqa: F401  (whether it is installed)
        except ImportError:
            return "openvino is not installed"
        if "CPU" not in core().available_devices:
            return "OpenVINO sees no CPU device"
        return None

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact:
        import openvino as ov

        if request.precision not in HINTS:
            raise ValueError(f"openvino cannot compile {request.precision}")
        if request.precision == "bf16" and "BF16" not in cpu_capabilities():
            raise UserError(
                f"this CPU has no BF16 in OpenVINO (capabilities: {', '.join(cpu_capabilities())}); "
                "a bf16 artifact would run f32"
            )
        settings = backend_settings(request.profile, self.name)
        if request.precision == "int8" and request.intent.mode == "qat":
            model = qat_float_model(model, request.input_spec)
        with tempfile.TemporaryDirectory(prefix="petra-ov-") as tmp:
            onnx_path = export_onnx(model, request.input_spec, Path(tmp) / "export.onnx")
            ov_model = ov.convert_model(str(onnx_path))
        ov_model.reshape({0: ov.PartialShape([-1, *request.input_spec.shape[1:]])})
        ov_model, quantization = _prepare(ov_model, request, settings)
        request.out_dir.mkdir(parents=True, exist_ok=True)
        # Keep FP32 weights in the IR (save_model would halve them to FP16 by default).
        ov.save_model(ov_model, str(request.out_dir / MODEL_FILE), compress_to_fp16=False)
        hint = inference_hint(request)
        config = compile_config(hint, request.profile.effective_threads(), settings)
        compiled = core().compile_model(ov_model, "CPU", config)
        effective = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()
        if hint is not None and effective != hint:
            raise UserError(f"OpenVINO compiled the {request.precision} artifact at {effective}")
        files = [MODEL_FILE, WEIGHTS_FILE]
        return write_artifact(
            request.out_dir,
            backend=self.name,
            precision=request.precision,
            files=files,
            input_spec=request.input_spec,
            pipeline=request.pipeline,
            extra={
                "openvino": {
                    "version": ov.get_version(),
                    "config": config,
                    "inference_precision": effective,
                },
                "op_counts": runtime_op_counts(compiled),
                "size_bytes": sum((request.out_dir / f).stat().st_size for f in files),
                **({"quantization": quantization} if quantization else {}),
            },
        )

    def load(self, artifact: Artifact, profile: DeviceProfile | None = None) -> OvRunner:
        config = dict(artifact.manifest["openvino"]["config"])
        if profile is not None:
            config["INFERENCE_NUM_THREADS"] = profile.effective_threads()
        ov_core = core()
        model = ov_core.read_model(str(artifact.file(MODEL_FILE)), str(artifact.file(WEIGHTS_FILE)))
        return OvRunner(ov_core.compile_model(model, "CPU", config))
