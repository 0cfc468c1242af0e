"""tensorrt backend: TensorRT engines built from the ONNX export, FP32 / FP16 / INT8 on NVIDIA GPUs.

Written against the TensorRT 10 Python API and **not verified here** (this host has no GPU and
cannot install TensorRT); ``tests/test_gpu_path.py`` builds and runs an engine where both exist,
and tests everything up to ``import tensorrt`` everywhere.

- **Strongly typed networks**: precision lives in the ONNX graph, not in builder flags.  FP16 is the
  export converted to half (float32 inputs/outputs kept).  INT8 is explicit quantization only, a
  graph of signed INT8 Q/DQ with zero points 0: the QAT model's own trained scales (exported with
  ``signed_qdq=True``), or PTQ ranges that ONNX Runtime's static QDQ quantizer calibrates
  symmetrically on the calib split.  TensorRT's implicit INT8 calibration and the FP16/INT8 builder
  flags of weakly typed networks are deprecated since TensorRT 10.12 and removed in 11; PDQ
  (dynamic quantization) has no TensorRT form and is refused.
- **Dynamic batch**: two optimization profiles, batch 1 (tuned for latency) and 2..max batch
  (tuned at the profile's largest batch, for throughput); the runner keeps one execution context
  per profile and splits larger batches.
- **Timing cache**: one per GPU model, compute capability and TensorRT version, shared by every
  build of a run and across runs (``$PETRA_HW_CACHE/tensorrt/``, or the ``timing_cache`` option),
  loaded before and saved after each build so rebuilds reuse tactic timings.  It lives outside the
  artifact folder (which is emptied before each compile) and is not part of the deployable files.
- **FP32 means FP32**: TensorRT lets float32 convolutions and GEMMs use TF32 by default; the flag is
  cleared for fp32 engines, so an fp32 engine is compared with the FP32 model on equal terms.
- **Portability**: an engine runs only on the GPU model and TensorRT version that built it.  The
  manifest records both and the compute capability; ``load`` refuses any other.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import BaseBackend, CompileRequest
from petra_hw.errors import ArtifactError
from petra_hw.onnx_export import export_onnx, is_fake_quantized
from petra_hw.profiles import DeviceProfile

log = logging.getLogger(__name__)

ENGINE_FILE = "model.engine"
WORKSPACE_BYTES = 4 << 30
# ONNX Runtime's QDQ quantizer, the way TensorRT wants the graph (see its qdq_quantizer.py notes):
# signed symmetric ranges, float biases, a Q/DQ pair per weight and per consumer, and no Q/DQ on
# the outputs of Conv/Gemm/MatMul (TensorRT fuses them with what follows).
INT8_HELP = (
    "TensorRT INT8 takes explicitly quantized (Q/DQ) models only: end the pipeline with QAT, "
    "or quantize with PTQ (static Q/DQ)"
)


# -- the ONNX graph TensorRT parses (no tensorrt needed) ----------------------------------------
def _integer_op(node) -> bool:
    """An operator of ONNX Runtime's quantized formats (QOperator, dynamic, contrib), none of
    which TensorRT parses: it wants float operators between Quantize/DequantizeLinear pairs."""
    t = node.op_type
    return (
        t.startswith("QLinear")
        or t.endswith("Integer")
        or t == "DynamicQuantizeLinear"
        or node.domain == "com.microsoft"
    )


def check_signed_qdq(path: Path) -> dict[str, object]:
    """Refuse a graph TensorRT would reject: every Q/DQ needs an explicit INT8 zero point of 0."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    ops = Counter(n.op_type for n in graph.node)
    if not ops["QuantizeLinear"] or not ops["DequantizeLinear"]:
        raise ValueError(f"{INT8_HELP}; this model has no Q/DQ nodes")
    integer = sorted({n.op_type for n in graph.node if _integer_op(n)})
    if integer:
        raise ValueError(f"{INT8_HELP}; this model has integer operators {', '.join(integer)}")
    for n in graph.node:
        if n.op_type not in ("QuantizeLinear", "DequantizeLinear"):
            continue
        zp = consts.get(n.input[2]) if len(n.input) > 2 else None
        if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
            raise ValueError(f"{n.op_type} {n.name!r}: TensorRT needs an INT8 zero point of 0")
    return {"quantize_linear": ops["QuantizeLinear"], "dequantize_linear": ops["DequantizeLinear"]}


def prepare_onnx(model: nn.Module, request: CompileRequest, dst: Path) -> dict[str, object]:
    """Write the ONNX graph that TensorRT parses for ``request.precision`` to ``dst`` (its folder
    also receives the intermediate files); returns what to record in the manifest."""
    if request.precision not in ("fp32", "fp16", "int8"):
        raise ValueError(f"tensorrt cannot compile {request.precision}")
    mode = request.intent.mode
    qat = request.precision == "int8" and is_fake_quantized(model)
    if request.precision == "int8" and not qat and mode != "static":
        detail = "the model carries no fake quantizers" if mode == "qat" else f"int8_mode {mode!r}"
        raise ValueError(f"{INT8_HELP} ({detail})")
    export = export_onnx(model, request.input_spec, dst.with_name("export.onnx"), signed_qdq=True)
    if request.precision == "fp32":
        shutil.copyfile(export, dst)
        return {}
    if request.precision == "fp16":
        from backends.ort_quantize import to_fp16

        return {"fp16": to_fp16(export, dst)}
    if qat:
        shutil.copyfile(export, dst)
        info: dict[str, object] = {"mode": "qat", "format": "QDQ", "signed": True}
    else:
        from backends.ort_quantize import quantize_static_qdq

        info = quantize_static_qdq(export, dst, request, symmetric=True)
    return {"quantization": {**info, **check_signed_qdq(dst)}}


def optimization_profiles(batch_sizes: tuple[int, ...]) -> list[tuple[int, int, int]]:
    """(min, opt, max) batch of each optimization profile: batch 1 alone, then 2..largest."""
    largest = max(batch_sizes)
    return [(1, 1, 1)] if largest <= 1 else [(1, 1, 1), (2, largest, largest)]


# -- TensorRT (imported only here) -------------------------------------------------------------
def _logger(trt):
    """A TensorRT logger that forwards to ``logging`` (TensorRT's default one prints)."""
    s = trt.ILogger.Severity
    levels = {s.INTERNAL_ERROR: logging.ERROR, s.ERROR: logging.ERROR, s.WARNING: logging.WARNING}
    levels[s.INFO] = logging.DEBUG  # VERBOSE is dropped

    class Logger(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity, msg: str) -> None:
            if severity in levels:
                log.log(levels[severity], "TensorRT: %s", msg)

    return Logger()


def host_info(trt) -> dict[str, str]:
    """What an engine is tied to: the TensorRT version and this GPU."""
    major, minor = torch.cuda.get_device_capability()
    return {
        "version": trt.__version__,
        "gpu": torch.cuda.get_device_name(),
        "compute_capability": f"{major}.{minor}",
    }


def check_portable(where: object, built: dict, here: dict[str, str]) -> None:
    """Refuse an engine built for another GPU model, compute capability or TensorRT version."""
    wrong = [f"{k} {built.get(k)!r} (here {v!r})" for k, v in here.items() if built.get(k) != v]
    if wrong:
        raise ArtifactError(
            f"{where}: a TensorRT engine runs only where it was built, and this one was built "
            f"for {'; '.join(wrong)}: compile it again on this host"
        )


def timing_cache_path(request: CompileRequest, host: dict[str, str]) -> Path:
    """The ``timing_cache`` option, else the cache shared by every build for this GPU model,
    compute capability and TensorRT version (a cache from another one would not fit)."""
    from petra_hw.baseline import cache_dir

    explicit = request.option("timing_cache")
    if explicit:
        return Path(str(explicit))
    key = f"{host['gpu']}-cc{host['compute_capability']}-trt{host['version']}"
    return cache_dir() / "tensorrt" / f"{re.sub(r'[^A-Za-z0-9.]+', '-', key).strip('-')}.cache"


def _write_atomic(path: Path, data) -> None:
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")  # builds may share the timing cache
    with open(tmp, "wb") as f:
        f.write(data)
    os.replace(tmp, path)


def build_engine(onnx_path: Path, request: CompileRequest) -> dict[str, object]:
    """Parse ``onnx_path`` into a strongly typed network and write the engine into out_dir."""
    import tensorrt as trt

    logger = _logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    workspace = int(request.option("workspace_bytes", WORKSPACE_BYTES))
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    profiles = optimization_profiles(request.profile.batch_sizes)
    spec = request.input_spec
    for lo, opt, hi in profiles:
        p = builder.create_optimization_profile()
        p.set_shape(spec.name, spec.sample_shape(lo), spec.sample_shape(opt), spec.sample_shape(hi))
        config.add_optimization_profile(p)
    if request.precision == "fp32":
        config.clear_flag(trt.BuilderFlag.TF32)
    host = host_info(trt)
    cache_path = timing_cache_path(request, host)
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.is_file() else b"")
    if cache is None or not config.set_timing_cache(cache, False):
        log.warning(
            "timing cache %s does not fit this GPU/TensorRT; starting a new one", cache_path
        )
        config.set_timing_cache(config.create_timing_cache(b""), False)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError("TensorRT could not build an engine (its errors are in the log)")
    _write_atomic(request.out_dir / ENGINE_FILE, engine)
    _write_atomic(cache_path, config.get_timing_cache().serialize())
    return {
        **host,
        "strongly_typed": True,
        "tf32": config.get_flag(trt.BuilderFlag.TF32),
        "optimization_profiles": [list(p) for p in profiles],
        "workspace_bytes": workspace,
        "timing_cache": str(cache_path),
    }


class TensorRTRunner:
    """Runs an engine on a CUDA stream with torch CUDA tensors as device buffers (not verified
    here).  Each call copies the batch in, enqueues the engine and copies the output back, which
    waits for the stream: the numpy result is complete when the call returns."""

    device = "cuda"

    def __init__(self, runtime, engine, logger, profiles: list[tuple[int, int, int]]) -> None:
        import tensorrt as trt

        self._keep = (runtime, engine, logger)  # contexts need all three alive
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        mode = {n: engine.get_tensor_mode(n) for n in names}
        inputs = [n for n in names if mode[n] == trt.TensorIOMode.INPUT]
        outputs = [n for n in names if mode[n] == trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(f"engine has inputs {inputs} and outputs {outputs}; want one each")
        if any(engine.get_tensor_dtype(n) != trt.float32 for n in names):
            raise ArtifactError("engine inputs/outputs must be float32")
        self.input_name, self.output_name = inputs[0], outputs[0]
        self.stream = torch.cuda.Stream()
        self.contexts = []
        for k, (lo, _, hi) in enumerate(profiles):
            context = engine.create_execution_context()
            if k and not context.set_optimization_profile_async(k, self.stream.cuda_stream):
                raise RuntimeError(f"TensorRT cannot select optimization profile {k}")
            self.contexts.append((lo, hi, context))
        self.max_batch = profiles[-1][2]

    def __call__(self, x: np.ndarray) -> np.ndarray:
        n = len(x)
        if n > self.max_batch:
            parts = [self(x[i : i + self.max_batch]) for i in range(0, n, self.max_batch)]
            return np.concatenate(parts)
        context = next(c for lo, hi, c in self.contexts if lo <= n <= hi)
        with torch.cuda.stream(self.stream):
            inp = torch.from_numpy(np.ascontiguousarray(x, np.float32)).to("cuda")
            if not context.set_input_shape(self.input_name, tuple(inp.shape)):
                raise RuntimeError(f"TensorRT refused input shape {tuple(inp.shape)}")
            shape = tuple(context.get_tensor_shape(self.output_name))
            out = torch.empty(shape, dtype=torch.float32, device="cuda")
            context.set_tensor_address(self.input_name, inp.data_ptr())
            context.set_tensor_address(self.output_name, out.data_ptr())
            if not context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError("TensorRT execution failed (see the log)")
            return out.cpu().numpy()

    def synchronize(self) -> None:
        self.stream.synchronize()


class TensorRTBackend(BaseBackend):
    """TensorRT engines (not verified here: written against the TensorRT 10 Python API)."""

    name = "tensorrt"
    precisions = ("fp32", "fp16", "int8")
    int8_modes = ("static", "qat")  # explicit Q/DQ only; no dynamic quantization in TensorRT

    def available(self, profile: DeviceProfile) -> str | None:
        if not profile.is_gpu:
            return "TensorRT builds engines for NVIDIA GPU profiles only"
        reasons = []
        if not torch.cuda.is_available():
            reasons.append("torch sees no CUDA GPU")
        try:
            import tensorrt  # noqa: F401
        except (ImportError, OSError) as exc:
            reasons.append(f"tensorrt cannot be imported ({exc}); install NVIDIA's tensorrt wheel")
        return "; ".join(reasons) or None

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact:
        reason = self.available(request.profile)
        if reason:
            raise RuntimeError(f"cannot build a TensorRT engine here: {reason}")
        request.out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="petra-trt-") as tmp:
            info = prepare_onnx(model, request, Path(tmp) / "model.onnx")
            built = build_engine(Path(tmp) / "model.onnx", request)
        return write_artifact(
            request.out_dir,
            backend=self.name,
            precision=request.precision,
            files=[ENGINE_FILE],
            input_spec=request.input_spec,
            pipeline=request.pipeline,
            extra={"tensorrt": built, **info},
        )

    def load(self, artifact: Artifact, profile: DeviceProfile | None = None) -> TensorRTRunner:
        import tensorrt as trt

        if not torch.cuda.is_available():
            raise RuntimeError("this TensorRT engine needs an NVIDIA GPU and none is present")
        built = artifact.manifest.get("tensorrt", {})
        check_portable(artifact.path, built, host_info(trt))
        logger = _logger(trt)
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(artifact.file(ENGINE_FILE).read_bytes())
        if engine is None:
            raise ArtifactError(f"{artifact.path}: TensorRT cannot deserialize {ENGINE_FILE}")
        profiles = [tuple(p) for p in built["optimization_profiles"]]
        return TensorRTRunner(runtime, engine, logger, profiles)
