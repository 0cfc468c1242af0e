"""ONNX Runtime graph transforms for the onnxruntime backend: INT8 (static QDQ, dynamic, QAT),
FP16, the saved ORT-optimized graph, and op counts that show what really runs in integer.

Static INT8 follows ORT's recipe: ``quant_pre_process`` (symbolic shape inference + basic graph
optimization), then ``quantize_static`` to QDQ with per-channel weights.  The activation/weight
types come from the profile (``[onnxruntime] activation_type``/``weight_type``); on CPUs the
default is U8S8, the pair x86 int8 kernels (VNNI ``vpdpbusd``: u8 x s8) are built for.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections import Counter
from pathlib import Path

from onnxruntime.quantization import CalibrationDataReader

from backends.common import backend_settings, calib_batches, has_vnni
from petra_hw.backend import CompileRequest
from petra_hw.errors import UserError

log = logging.getLogger(__name__)

CALIBRATION = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# ORT's entropy defaults (128 histogram bins, 128 quantized bins) leave the KL search a single
# candidate, the full range, i.e. min-max; TensorRT's recipe (2048 -> 128) makes it a real search.
CALIBRATOR_OPTIONS = {"entropy": {"num_bins": 512, "num_quantized_bins": 128}}
# Compute ops after ORT's optimizer: integer kernels vs float kernels (Fused*: Conv/Gemm + act.).
INT8_OPS = frozenset(
    {
        "QLinearConv", "ConvInteger", "MatMulInteger", "QLinearMatMul", "QGemm",
        "DynamicQuantizeMatMul", "MatMulIntegerToFloat", "QAttention", "DynamicQuantizeLSTM",
        "QLinearConvTranspose",
    }
)  # fmt: skip
FLOAT_OPS = frozenset(
    {
        "Conv", "FusedConv", "NchwcConv", "ConvTranspose", "Gemm", "FusedGemm", "MatMul",
        "FusedMatMul", "Attention", "LSTM", "GRU", "RNN", "Einsum",
    }
)  # fmt: skip
# TensorRT's explicit quantization: signed symmetric INT8 everywhere, a dedicated Q/DQ pair per
# consumer, biases left in float, no Q/DQ after a Conv/Gemm/MatMul output.
SYMMETRIC_QDQ_OPTIONS = {
    "ActivationSymmetric": True,
    "WeightSymmetric": True,
    "QuantizeBias": False,
    "AddQDQPairToWeight": True,
    "DedicatedQDQPair": True,
    "OpTypesToExcludeOutputQuantization": ["Conv", "Gemm", "MatMul"],
}
SYMMETRIC_TYPES = {"activation_type": "QInt8", "weight_type": "QInt8", "reduce_range": False}
DYNAMIC_CONV_NOTE = (
    "dynamic quantization turns convs into ConvInteger, which ONNX Runtime's CPU provider runs "
    "about 4.5x slower than FP32 Conv on this project's x86 host; prefer PTQ for conv nets"
)


class _Reader(CalibrationDataReader):
    """ORT's calibration input: the calib split's batches, one feed dict per call."""

    def __init__(self, input_name: str, batches: list) -> None:
        self.input_name, self.batches, self.i = input_name, batches, 0

    def get_next(self) -> dict | None:
        if self.i >= len(self.batches):
            return None
        self.i += 1
        return {self.input_name: self.batches[self.i - 1]}

    def rewind(self) -> None:
        self.i = 0


def quant_types(request: CompileRequest) -> dict[str, object]:
    """Activation/weight types and reduce_range for this profile (TOML overrides defaults)."""
    settings = backend_settings(request.profile, "onnxruntime")
    default_act = "QInt8" if request.profile.is_gpu else "QUInt8"  # CUDA/TensorRT want S8S8
    act = str(settings.get("activation_type", default_act))
    weight = str(settings.get("weight_type", "QInt8"))
    for name, value in (("activation_type", act), ("weight_type", weight)):
        if value not in ("QInt8", "QUInt8"):
            raise UserError(
                f"profile {request.profile.name}: [onnxruntime] {name} must be QInt8 or QUInt8"
            )
    # u8 x s8 products saturate in AVX2's 16-bit accumulation (vpmaddubsw) without VNNI;
    # 7-bit weights avoid it, as ORT's quantization guide recommends.
    reduce = settings.get("reduce_range", "auto")
    if reduce == "auto":
        reduce = not request.profile.is_gpu and act == "QUInt8" and not has_vnni()
    return {"activation_type": act, "weight_type": weight, "reduce_range": bool(reduce)}


def _quiet(fn, *args, **kwargs) -> None:
    """ORT's calibrators print progress; library code logs instead."""
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        fn(*args, **kwargs)
    if sink.getvalue().strip():
        log.debug("%s: %s", fn.__name__, sink.getvalue().strip())


def pre_process(src: Path, dst: Path) -> Path:
    from onnxruntime.quantization import quant_pre_process

    _quiet(quant_pre_process, str(src), str(dst))
    return dst


def calibrate(model: Path, method, options: dict, reader: _Reader) -> Path:
    """Activation ranges over the calib split, saved as an ORT calibration cache next to ``model``.

    Run here rather than inside ``quantize_static`` because only ``create_calibrator`` accepts
    the histogram sizes (``CALIBRATOR_OPTIONS``).
    """
    from onnxruntime.quantization import create_calibrator, save_tensors_data

    calibrator = create_calibrator(
        model,
        augmented_model_path=str(model.with_name("augmented.onnx")),
        calibrate_method=method,
        extra_options=options,
    )
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink):
        calibrator.collect_data(reader)
        ranges = calibrator.compute_data()
    log.debug("calibration: %s", sink.getvalue().strip())
    cache = model.with_name("calibration.json")
    save_tensors_data(ranges, cache)
    return cache


def quantize_static_defaults(src: Path, dst: Path, request: CompileRequest) -> dict[str, object]:
    """The ``ort-quantize-static`` reference: ``quantize_static(model, out, reader)`` exactly as
    its documentation's first example calls it (QDQ, S8S8, per-tensor, MinMax, no pre-process)."""
    from onnxruntime.quantization import quantize_static

    batches = calib_batches(request.calib)
    _quiet(quantize_static, str(src), str(dst), _Reader(request.input_spec.name, batches))
    return {"mode": "static", "recipe": "ort-defaults", "format": "QDQ", "per_channel": False,
            "activation_type": "QInt8", "weight_type": "QInt8", "calibration": "minmax",
            "calibration_samples": sum(len(b) for b in batches), "pre_process": False}  # fmt: skip


# ORT's documented x86 recipe (the ``ort-x86`` reference): U8S8, per-channel weights.
X86_TYPES = {"activation_type": "QUInt8", "weight_type": "QInt8"}


def quantize_static_qdq(
    src: Path, dst: Path, request: CompileRequest, symmetric: bool = False
) -> dict[str, object]:
    """Static PTQ to per-channel QDQ, calibrated on the calib split with the intent's method.

    ``symmetric``: signed INT8 activations and weights with zero points 0 and explicit Q/DQ pairs
    (``SYMMETRIC_QDQ_OPTIONS``), as TensorRT requires; otherwise the profile's types
    (``quant_types``), which on x86 CPUs are U8S8 for ORT's integer kernels.  The reference
    recipes (``recipe`` option) are ORT's own defaults and its x86 recipe, whatever the profile.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    if request.option("recipe") == "ort-defaults":
        return quantize_static_defaults(src, dst, request)
    calibration = request.intent.calibration
    if calibration not in CALIBRATION:
        raise UserError(f"unknown calibration '{calibration}' ({', '.join(CALIBRATION)})")
    method = getattr(CalibrationMethod, CALIBRATION[calibration])
    types = SYMMETRIC_TYPES if symmetric else quant_types(request)
    if request.option("recipe") == "ort-x86":  # the peer ignores the profile's overrides
        types = {**types, **X86_TYPES, "reduce_range": not has_vnni()}
    batches = calib_batches(request.calib)
    pre = pre_process(src, dst.with_name("pre.onnx"))
    options = CALIBRATOR_OPTIONS.get(calibration, {})
    cache = calibrate(pre, method, options, _Reader(request.input_spec.name, batches))
    _quiet(
        quantize_static,
        str(pre),
        str(dst),
        None,
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=types["reduce_range"],
        activation_type=getattr(QuantType, str(types["activation_type"])),
        weight_type=getattr(QuantType, str(types["weight_type"])),
        calibrate_method=method,
        calibration_cache_path=str(cache),
        extra_options=SYMMETRIC_QDQ_OPTIONS if symmetric else None,
    )
    return {
        "mode": "static",
        **({"recipe": "ort-x86"} if request.option("recipe") == "ort-x86" else {}),
        "format": "QDQ",
        "symmetric": symmetric,
        "per_channel": True,
        **types,
        "calibration": calibration,
        "calibrator_options": options,
        "calibration_samples": sum(len(b) for b in batches),
        "pre_process": True,
    }


def quantize_dynamic_int8(src: Path, dst: Path, request: CompileRequest) -> dict[str, object]:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    types = quant_types(request)
    pre = pre_process(src, dst.with_name("pre.onnx"))
    quantize_dynamic(
        str(pre),
        str(dst),
        per_channel=True,
        reduce_range=types["reduce_range"],
        weight_type=getattr(QuantType, str(types["weight_type"])),
    )
    return {"mode": "dynamic", "per_channel": True, "weight_type": types["weight_type"],
            "reduce_range": types["reduce_range"], "pre_process": True}  # fmt: skip


def check_qdq(src: Path) -> dict[str, object]:
    """A QAT model is compiled as exported: its QDQ nodes carry the trained scales."""
    import onnx

    ops = Counter(n.op_type for n in onnx.load(str(src)).graph.node)
    if not ops["QuantizeLinear"] or not ops["DequantizeLinear"]:
        raise ValueError(
            "int8_mode 'qat' needs a fake-quantized model, but its ONNX export has no QDQ nodes"
        )
    return {
        "mode": "qat",
        "format": "QDQ",
        "qdq_pairs": min(ops["QuantizeLinear"], ops["DequantizeLinear"]),
    }


def to_fp16(src: Path, dst: Path) -> dict[str, object]:
    """FP16 weights and compute with float32 inputs/outputs kept, so the runner's I/O is unchanged."""
    import onnx

    try:
        from onnxconverter_common.float16 import convert_float_to_float16

        converter = "onnxconverter-common"
    except ImportError:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        converter = "onnxruntime.transformers.float16"
    onnx.save(convert_float_to_float16(onnx.load(str(src)), keep_io_types=True), str(dst))
    return {"converter": converter, "keep_io_types": True}


def optimize(src: Path, dst: Path, threads: int) -> str:
    """Save ORT's optimized graph (fusions, int8 QDQ -> QLinear* kernels) so loading is fast.

    ORT_ENABLE_EXTENDED, not ALL: ALL adds NCHWc layout transforms tied to this CPU's vector
    width that ORT warns must not leave the machine; ALL is applied again at load on the target.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(dst)
    opts.intra_op_num_threads = threads
    ort.InferenceSession(str(src), sess_options=opts, providers=["CPUExecutionProvider"])
    return "ORT_ENABLE_EXTENDED"


def op_counts(path: Path, graph: str) -> dict[str, object]:
    """Integer vs float compute ops of the graph ONNX Runtime will run (``graph`` says which)."""
    import onnx

    by_type = Counter(n.op_type for n in onnx.load(str(path)).graph.node)
    return {
        "int8": sum(n for op, n in by_type.items() if op in INT8_OPS),
        "float": sum(n for op, n in by_type.items() if op in FLOAT_OPS),
        "by_type": dict(sorted(by_type.items())),
        "graph": graph,
    }
