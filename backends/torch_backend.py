"""torch backend: the eager reference, saved with ``torch.export`` as a ``.pt2`` program.

``torch.export.save`` writes a self-contained program (graph + weights) that ``torch.export.load``
reads back without unpickling arbitrary objects, so a torch artifact is deployable and safe to load
like the others.  FP32 on CPU; FP16 on CUDA when a GPU exists.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import CompileRequest
from petra_hw.profiles import Profile

MODEL_FILE = "model.pt2"


class TorchRunner:
    def __init__(self, module: nn.Module, device: str, half: bool) -> None:
        self.module, self.device, self.half = module, device, half

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        if self.half:
            t = t.half()
        return self.module(t).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class TorchBackend:
    name = "torch"
    precisions = ("fp32", "fp16")

    def available(self, profile: Profile) -> str | None:
        if profile.is_gpu and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact:
        if request.precision == "fp16" and not request.profile.is_gpu:
            raise ValueError("torch fp16 is compiled for GPU profiles only")
        model = model.eval().cpu()
        example = torch.zeros(request.input_spec.sample_shape(2), dtype=torch.float32)
        batch = torch.export.Dim("batch", min=1, max=65536)
        with torch.no_grad():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
        request.out_dir.mkdir(parents=True, exist_ok=True)
        torch.export.save(program, request.out_dir / MODEL_FILE)
        return write_artifact(
            request.out_dir,
            backend=self.name,
            precision=request.precision,
            files=[MODEL_FILE],
            input_spec=request.input_spec,
            pipeline=request.pipeline,
            extra={"device": "cuda" if request.profile.is_gpu else "cpu"},
        )

    def load(self, artifact: Artifact, profile: Profile | None = None) -> TorchRunner:
        device = artifact.manifest.get("device", "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("this torch artifact was compiled for CUDA and no GPU is present")
        if profile is not None and not profile.is_gpu:
            torch.set_num_threads(profile.effective_threads())
        module = torch.export.load(artifact.file(MODEL_FILE)).module().to(device)
        half = artifact.precision == "fp16"
        if half:
            module = module.half()
        return TorchRunner(module, device, half)
