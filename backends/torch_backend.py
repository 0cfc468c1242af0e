"""torch backend: the eager reference, saved with ``torch.export`` as a ``.pt2`` program.

``torch.export.save`` writes a self-contained program (graph + weights) that ``torch.export.load``
reads back without unpickling arbitrary objects, so a torch artifact is deployable and safe to load
like the others.  FP32 on CPU.  On CUDA, FP32 or FP16: an FP16 program is exported from
``model.half()``, so its weights are stored (and counted on disk) as half, and it runs on the GPU
in half.  ``cuda_graphs`` (a compile option, or ``cuda_graphs = true`` in the profile's ``[torch]``
table) records the choice in the manifest; the runner then captures one CUDA graph per input shape
and replays it, which removes the per-kernel launch cost that dominates small-batch latency.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from torch import nn

from backends.common import backend_settings
from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import BaseBackend, CompileRequest
from petra_hw.profiles import DeviceProfile

MODEL_FILE = "model.pt2"
GRAPH_WARMUP = 3  # eager runs on a side stream before capture (lazy init, cuDNN autotuning)
Captured = tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]  # graph, input, output


def dtype_of(precision: str) -> torch.dtype:
    return torch.float16 if precision == "fp16" else torch.float32


class TorchRunner:
    def __init__(self, module: nn.Module, device: str, dtype: torch.dtype) -> None:
        self.module, self.device, self.dtype = module, device, dtype

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device, self.dtype)
        return self.module(t).float().cpu().numpy()

    def synchronize(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()


class CudaGraphRunner(TorchRunner):
    """Replays one captured CUDA graph per input shape through static input/output buffers.

    Graphs do not share a memory pool: shapes are replayed in any order, which pool sharing does
    not allow.  Outputs are copied to the host before the next replay overwrites them.
    """

    def __init__(self, module: nn.Module, dtype: torch.dtype) -> None:
        super().__init__(module, "cuda", dtype)
        self.graphs: dict[tuple[int, ...], Captured] = {}

    @torch.inference_mode()
    def __call__(self, x: np.ndarray) -> np.ndarray:
        shape = tuple(x.shape)
        graph, static_in, static_out = self.graphs.get(shape) or self._capture(shape)
        static_in.copy_(torch.from_numpy(np.ascontiguousarray(x)))
        graph.replay()
        return static_out.float().cpu().numpy()

    def _capture(self, shape: tuple[int, ...]) -> Captured:
        static_in = torch.zeros(shape, dtype=self.dtype, device=self.device)
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(GRAPH_WARMUP):
                self.module(static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = self.module(static_in)
        self.graphs[shape] = (graph, static_in, static_out)
        return self.graphs[shape]


def wants_cuda_graphs(request: CompileRequest) -> bool:
    default = backend_settings(request.profile, "torch").get("cuda_graphs", False)
    return bool(request.option("cuda_graphs", default))


class TorchBackend(BaseBackend):
    name = "torch"
    precisions = ("fp32", "fp16")
    search_variant = False  # the eager reference: no compiler, not worth a search's time

    def available(self, profile: DeviceProfile) -> str | None:
        if profile.is_gpu and not torch.cuda.is_available():
            return "torch sees no CUDA device"
        return None

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact:
        gpu = request.profile.is_gpu
        if request.precision == "fp16" and not gpu:
            raise ValueError("torch fp16 is compiled for GPU profiles only")
        graphs = wants_cuda_graphs(request)
        if graphs and not gpu:
            raise ValueError("CUDA graphs need a GPU profile")
        dtype = dtype_of(request.precision)
        model = model.eval().cpu()
        if dtype != torch.float32:
            model = copy.deepcopy(model).to(dtype)  # the caller's model stays FP32
        example = torch.zeros(request.input_spec.sample_shape(2), dtype=dtype)
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
            extra={"device": "cuda" if gpu else "cpu", "cuda_graphs": graphs},
        )

    def load(self, artifact: Artifact, profile: DeviceProfile | None = None) -> TorchRunner:
        device = artifact.manifest.get("device", "cpu")
        if device == "cuda" and not torch.cuda.is_available():
            raise RuntimeError("this torch artifact was compiled for CUDA and no GPU is present")
        if profile is not None and not profile.is_gpu:
            torch.set_num_threads(profile.effective_threads())
        program = torch.export.load(artifact.file(MODEL_FILE))
        dtype = dtype_of(artifact.precision)
        if device != "cuda":
            return TorchRunner(program.module(), device, dtype)
        from torch.export.passes import move_to_device_pass

        module = move_to_device_pass(program, "cuda").module()
        if artifact.manifest.get("cuda_graphs", False):
            return CudaGraphRunner(module, dtype)
        return TorchRunner(module, device, dtype)
