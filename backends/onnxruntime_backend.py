"""onnxruntime backend: an ONNX export run by ONNX Runtime.

CPU execution provider with the profile's thread count; on GPU profiles the CUDA execution
provider, with a hard error if ONNX Runtime silently falls back to CPU (``onnxruntime-gpu`` imports
fine without a GPU and then runs everything on the CPU).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import CompileRequest
from petra_hw.onnx_export import export_onnx
from petra_hw.profiles import Profile

MODEL_FILE = "model.onnx"


class OrtRunner:
    def __init__(self, session, device: str) -> None:
        self.session, self.device = session, device
        self.input_name = session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def synchronize(self) -> None:
        """session.run returns after the device work completes; nothing to wait for."""


def providers_for(profile: Profile | None) -> list[str]:
    return ["CUDAExecutionProvider"] if profile is not None and profile.is_gpu else ["CPUExecutionProvider"]


def session_options(profile: Profile | None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = profile.effective_threads() if profile is not None else 0
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return opts


def make_session(path: str, profile: Profile | None):
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


class OnnxRuntimeBackend:
    name = "onnxruntime"
    precisions = ("fp32",)

    def available(self, profile: Profile) -> str | None:
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
        request.out_dir.mkdir(parents=True, exist_ok=True)
        export_onnx(model, request.input_spec, request.out_dir / MODEL_FILE)
        return write_artifact(
            request.out_dir,
            backend=self.name,
            precision=request.precision,
            files=[MODEL_FILE],
            input_spec=request.input_spec,
            pipeline=request.pipeline,
            extra={"providers": providers_for(request.profile)},
        )

    def load(self, artifact: Artifact, profile: Profile | None = None) -> OrtRunner:
        session = make_session(str(artifact.file(MODEL_FILE)), profile)
        return OrtRunner(session, "cuda" if profile is not None and profile.is_gpu else "cpu")
