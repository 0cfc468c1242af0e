"""onnxruntime backend: an ONNX export run by ONNX Runtime, at FP32, INT8 or (GPU) FP16.

CPU execution provider with the profile's thread count; on GPU profiles the CUDA execution
provider, with a hard error if ONNX Runtime silently falls back to CPU (``onnxruntime-gpu`` imports
fine without a GPU and then runs everything on the CPU).  INT8 is static QDQ (PTQ), dynamic (PDQ)
or the QAT model's own QDQ (see ``backends.ort_quantize``).  On CPU the artifact holds ORT's
optimized graph, so what is shipped, counted and measured is what runs.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np
from torch import nn

from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import BaseBackend, CompileRequest
from petra_hw.onnx_export import export_onnx
from petra_hw.profiles import DeviceProfile

MODEL_FILE = "model.onnx"


class OrtRunner:
    def __init__(self, session, device: str) -> None:
        self.session, self.device = session, device
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def synchronize(self) -> None:
        """session.run returns after the device work completes; nothing to wait for."""


def providers_for(profile: DeviceProfile | None) -> list[str]:
    return (
        ["CUDAExecutionProvider"]
        if profile is not None and profile.is_gpu
        else ["CPUExecutionProvider"]
    )


def session_options(profile: DeviceProfile | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = profile.effective_threads() if profile is not None else 0
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def make_session(path: str, profile: DeviceProfile | None):
    """Create a session and refuse a silent fall-back from the CUDA provider to the CPU."""
    import onnxruntime as ort

    wanted = providers_for(profile)
    session = ort.InferenceSession(path, sess_options=session_options(profile), providers=wanted)
    if session.get_providers()[0] != wanted[0]:
        raise RuntimeError(
            f"ONNX Runtime fell back to {session.get_providers()[0]} instead of {wanted[0]} "
            f"(available: {', '.join(ort.get_available_providers())})"
        )
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
    if mode == "qat":
        info = q.check_qdq(src)
        shutil.copyfile(src, dst)
        return {"quantization": info}
    raise ValueError(f"unknown int8_mode {mode!r} (static, dynamic, qat)")


class OnnxRuntimeBackend(BaseBackend):
    name = "onnxruntime"
    precisions = ("fp32", "int8", "fp16")

    def available(self, profile: DeviceProfile) -> str | None:
        try:
            import onnxruntime as ort
        except ImportError:
            return "onnxruntime is not installed"
        wanted = providers_for(profile)[0]
        if wanted not in ort.get_available_providers():
            return f"ONNX Runtime has no {wanted} (install onnxruntime-gpu on a GPU host)"
        if profile.is_gpu:
            from petra_hw.profiles import gpu_names

            if not gpu_names():
                return "CUDAExecutionProvider is installed but no NVIDIA GPU is present"
        return None

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact:
        import onnxruntime as ort

        from backends import ort_quantize as q

        if request.precision not in self.precisions:
            raise ValueError(f"onnxruntime cannot compile {request.precision}")
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
