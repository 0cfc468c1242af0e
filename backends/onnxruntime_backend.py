"""onnxruntime backend: an ONNX export run by ONNX Runtime, at FP32, INT8 or (GPU) FP16.

CPU execution provider with the profile's thread count; on GPU profiles the CUDA execution
provider alone, with ``session.disable_cpu_ep_fallback=1`` so that a session in which any node
would run on the CPU provider is refused at creation (``onnxruntime-gpu`` imports fine without a
GPU and would otherwise run everything, or single unsupported nodes, on the CPU), and the recorded
node assignment checked once more after creation.  INT8 is static QDQ (PTQ), dynamic (PDQ) or, for
QAT, the trained weights re-quantized with PTQ's QDQ placement (``backends.common.qat_float_model``;
the model's own QDQ only for TensorRT's GPU path; see ``backends.ort_quantize``), on the CPU
provider only: the CUDA provider has
no INT8 convolution kernels (``refusal``).  On CPU the artifact holds ORT's optimized graph, so what
is shipped, counted and measured is what runs.
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from importlib import metadata
from pathlib import Path

import numpy as np
from torch import nn

from backends.common import QAT_REQUANTIZED, qat_float_model
from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import BaseBackend, CompileRequest
from petra_hw.onnx_export import export_onnx
from petra_hw.precision import PrecisionIntent
from petra_hw.profiles import DeviceProfile

MODEL_FILE = "model.onnx"
CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"
# Session config keys (onnxruntime_session_options_config_keys.h).
NO_CPU_FALLBACK = "session.disable_cpu_ep_fallback"
RECORD_ASSIGNMENT = "session.record_ep_graph_assignment_info"
CPU_FIX = 'pip install -e ".[cpu]"'
GPU_FIX = 'pip uninstall -y onnxruntime onnxruntime-gpu && pip install -e ".[gpu]"'


class OrtRunner:
    def __init__(self, session, device: str) -> None:
        self.session, self.device = session, device
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def synchronize(self) -> None:
        """session.run returns after the device work completes; nothing to wait for."""


def providers_for(profile: DeviceProfile | None) -> list[str]:
    """The CUDA provider alone on GPU profiles: listing the CPU provider as well would contradict
    ``session.disable_cpu_ep_fallback`` (ONNX Runtime refuses that combination)."""
    return [CUDA] if profile is not None and profile.is_gpu else [CPU]


def refusal(precision: str, mode: str, profile: DeviceProfile | None) -> str | None:
    """Why ONNX Runtime does not compile ``precision`` (int8 ``mode``) for ``profile``; None if it
    does.  The CUDA provider has no INT8 convolution/GEMM kernels: a Q/DQ model runs float kernels
    plus the Q/DQ work, slower than fp16 and not INT8 at all, so INT8 on NVIDIA GPUs is left to
    TensorRT (or ONNX Runtime's TensorRT provider)."""
    if profile is not None and profile.is_gpu and precision == "int8":
        kind = f"int8 {mode}" if mode else "int8"
        return (
            f"onnxruntime does not compile {kind} for GPU profiles: the CUDA execution provider "
            "has no INT8 kernels (a Q/DQ model would run float kernels plus Q/DQ work); INT8 on "
            "NVIDIA GPUs is compiled by the tensorrt backend"
        )
    return None


def install_problem(gpu_host: bool) -> str | None:
    """What is wrong with this host's ONNX Runtime install, naming the fix; None when nothing is.

    ``onnxruntime`` and ``onnxruntime-gpu`` write the same ``onnxruntime`` package, so with both
    installed whichever came last wins and the CUDA provider may be missing on a GPU host."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        return (
            f"no ONNX Runtime is installed ({exc}): {CPU_FIX} on a CPU host, "
            'pip install -e ".[gpu]" on an NVIDIA GPU host'
        )
    if not gpu_host or CUDA in ort.get_available_providers():
        return None
    dists = [d for d in ("onnxruntime", "onnxruntime-gpu") if _installed(d)]
    why = (
        "both onnxruntime and onnxruntime-gpu are installed and overwrite each other"
        if len(dists) == 2
        else f"the installed ONNX Runtime ({', '.join(dists) or 'unknown build'}) has no {CUDA}"
    )
    return f"this host has an NVIDIA GPU but {why}; fix: {GPU_FIX}"


def _installed(dist: str) -> bool:
    try:
        metadata.version(dist)
    except metadata.PackageNotFoundError:
        return False
    return True


def session_options(profile: DeviceProfile | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = profile.effective_threads() if profile is not None else 0
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry(RECORD_ASSIGNMENT, "1")
    if profile is not None and profile.is_gpu:
        opts.add_session_config_entry(NO_CPU_FALLBACK, "1")
    return opts


def assignment(session) -> dict[str, int]:
    """Nodes per execution provider, as ONNX Runtime recorded the partition of this session."""
    counts: Counter[str] = Counter()
    for subgraph in session.get_provider_graph_assignment_info():
        counts[subgraph.ep_name] += len(subgraph.get_nodes())
    return dict(counts)


def check_assignment(session, wanted: str) -> dict[str, int]:
    """Refuse a session in which any node runs on another provider than ``wanted``."""
    placed = assignment(session)
    others = {ep: n for ep, n in placed.items() if ep != wanted}
    if others or not placed:
        where = ", ".join(f"{n} on {ep}" for ep, n in sorted(others.items())) or "no nodes"
        raise RuntimeError(f"ONNX Runtime placed nodes off {wanted}: {where}")
    return placed


def make_session(path: str, profile: DeviceProfile | None):
    """Create a session whose every node runs on the profile's provider (no silent CPU fall-back:
    on GPU profiles ONNX Runtime itself refuses one, and the recorded assignment is checked)."""
    import onnxruntime as ort
    from onnxruntime.capi.onnxruntime_pybind11_state import Fail

    wanted = providers_for(profile)
    try:
        session = ort.InferenceSession(
            path, sess_options=session_options(profile), providers=wanted
        )
    except Fail as exc:
        if wanted[0] == CPU:
            raise
        raise RuntimeError(
            f"ONNX Runtime would run part of this model on the CPU instead of {wanted[0]} "
            f"(available: {', '.join(ort.get_available_providers())}): {exc}"
        ) from None
    check_assignment(session, wanted[0])
    return session


def _transform(src: Path, dst: Path, request: CompileRequest) -> dict[str, object]:
    """Turn the FP32 export ``src`` into the model at the request's precision in ``dst``."""
    from backends import ort_quantize as q

    if request.precision == "fp32":
        shutil.copyfile(src, dst)
        return {}
    if request.precision == "fp16":
        if not request.profile.is_gpu:
            raise ValueError("onnxruntime fp16 is compiled for GPU profiles only")
        return {"fp16": q.to_fp16(src, dst)}
    mode = request.intent.mode
    if mode == "static":
        return {"quantization": q.quantize_static_qdq(src, dst, request)}
    if mode == "dynamic":
        return {"quantization": q.quantize_dynamic_int8(src, dst, request)}
    if mode == "qat" and not request.profile.is_gpu:  # re-quantized (``qat_float_model``)
        info = q.quantize_static_qdq(src, dst, request)
        return {"quantization": {**info, "mode": "qat", **QAT_REQUANTIZED}}
    if mode == "qat":
        info = q.check_qdq(src)
        shutil.copyfile(src, dst)
        return {"quantization": info}
    raise ValueError(f"unknown int8_mode {mode!r} (static, dynamic, qat)")


class OnnxRuntimeBackend(BaseBackend):
    name = "onnxruntime"
    precisions = ("fp32", "int8", "fp16")

    def available(self, profile: DeviceProfile) -> str | None:
        from petra_hw.profiles import gpu_names

        problem = install_problem(profile.is_gpu and bool(gpu_names()))
        if problem:
            return problem
        import onnxruntime as ort

        wanted = providers_for(profile)[0]
        if wanted not in ort.get_available_providers():
            return f"ONNX Runtime has no {wanted} (no NVIDIA GPU here, or fix: {GPU_FIX})"
        if profile.is_gpu and not gpu_names():
            return f"{CUDA} is installed but no NVIDIA GPU is present"
        return None

    def supports(self, intent: PrecisionIntent, profile: DeviceProfile) -> str | None:
        """The declared precisions and modes, then no INT8 on GPU profiles (``refusal``)."""
        return refusal(intent.precision, intent.mode, profile) or super().supports(intent, profile)

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact:
        import onnxruntime as ort

        from backends import ort_quantize as q

        if request.precision not in self.precisions:
            raise ValueError(f"onnxruntime cannot compile {request.precision}")
        reason = refusal(request.precision, request.intent.mode, request.profile)
        if reason:
            raise ValueError(reason)
        if request.intent.mode == "qat" and not request.profile.is_gpu:
            model = qat_float_model(model, request.input_spec)
        request.out_dir.mkdir(parents=True, exist_ok=True)
        target = request.out_dir / MODEL_FILE
        with tempfile.TemporaryDirectory(prefix="petra-ort-") as tmp:
            # TensorRT (GPU) parses only signed INT8 Q/DQ; ORT on CPU fuses U8 activations too.
            export = export_onnx(
                model,
                request.input_spec,
                Path(tmp) / "export.onnx",
                signed_qdq=request.profile.is_gpu,
            )
            converted = Path(tmp) / "converted.onnx"
            info = _transform(export, converted, request)
            if request.profile.is_gpu:
                # CUDA/TensorRT fuse QDQ and pick kernels at load on the GPU host itself.
                shutil.copyfile(converted, target)
                level, graph = "none (execution provider optimizes at load)", "stored"
            else:
                level = q.optimize(converted, target, request.profile.effective_threads())
                graph = "ort-optimized"
        counts = q.op_counts(target, graph)
        if counts["by_type"].get("ConvInteger"):
            info["quantization"]["note"] = q.DYNAMIC_CONV_NOTE
        return write_artifact(
            request.out_dir,
            backend=self.name,
            precision=request.precision,
            files=[MODEL_FILE],
            input_spec=request.input_spec,
            pipeline=request.pipeline,
            extra={
                "providers": providers_for(request.profile),
                "onnxruntime": {"version": ort.__version__, "saved_optimization": level},
                "op_counts": counts,
                "size_bytes": target.stat().st_size,
                **info,
            },
        )

    def load(self, artifact: Artifact, profile: DeviceProfile | None = None) -> OrtRunner:
        session = make_session(str(artifact.file(MODEL_FILE)), profile)
        return OrtRunner(session, "cuda" if profile is not None and profile.is_gpu else "cpu")
