"""A petra-hw plug-in: one new step kind, one backend and one search strategy in one file.

docs/extending.md walks through it; ``tests/test_extending.py`` runs it end to end through
``tune`` (``--plugin tests/plugin_example.py``) without editing any other file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from petra_hw.artifact import Artifact, write_artifact
from petra_hw.backend import BaseBackend, CompileRequest, register_backend
from petra_hw.kinds import KindSpec, ParamSpec
from petra_hw.onnx_export import export_onnx
from petra_hw.pipeline import Pipeline, Step
from petra_hw.profiles import DeviceProfile
from petra_hw.search.strategy import Strategy, register_strategy
from petra_hw.search.types import Candidate, Evaluation
from petra_hw.steps import StepContext, register

# -- a step kind: schema (KindSpec) and implementation in one registration -------------------------
SOFT = KindSpec(
    "Soft",
    (ParamSpec("threshold", float, 0.1, low=0.0, high=1.0, doc="in standard deviations"),),
    doc="soft-threshold Conv/Linear weights toward zero (a one-shot sparsifier)",
)


@register(SOFT)  # reads=(): no model-level setting (optimizer, lr, loss) matters to it
@torch.no_grad()
def soft_threshold(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            t = float(step["threshold"]) * float(m.weight.std())
            m.weight.copy_(m.weight.sign() * (m.weight.abs() - t).clamp_min(0.0))
    return model


# -- a backend: ONNX Runtime with default session settings, FP32 only ------------------------------
class PlainOrtRunner:
    device = "cpu"

    def __init__(self, path: Path) -> None:
        import onnxruntime as ort

        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: np.ascontiguousarray(x, np.float32)})[0]

    def synchronize(self) -> None:
        """``run`` is synchronous."""


class PlainOrtBackend(BaseBackend):
    name = "plain-ort"
    precisions = ("fp32",)  # BaseBackend.supports refuses every other intent

    def available(self, profile: DeviceProfile) -> str | None:
        return "CPU profiles only" if profile.is_gpu else None

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact:
        request.out_dir.mkdir(parents=True, exist_ok=True)
        export_onnx(model, request.input_spec, request.out_dir / "model.onnx")
        return write_artifact(
            request.out_dir,
            backend=self.name,
            precision=request.precision,
            files=["model.onnx"],
            input_spec=request.input_spec,
            pipeline=request.pipeline,
        )

    def load(self, artifact: Artifact, profile: DeviceProfile | None = None) -> PlainOrtRunner:
        return PlainOrtRunner(artifact.file("model.onnx"))


register_backend(PlainOrtBackend.name, f"{__name__}:PlainOrtBackend")


# -- a strategy: each kind of the space alone, in table order, then random pipelines ------------
@register_strategy
class OneStepFirst(Strategy):
    name = "one-step-first"

    def _ask(self, n: int) -> list[Candidate]:
        out: list[Candidate] = []
        kinds = iter(self.space.kinds[self.n_asked :])
        for _ in range(50 * n + 100):
            if len(out) == n:
                break
            kind = next(kinds, None)
            p = (
                Pipeline.make([self.space.random_step(self.rng, kind)])
                if kind
                else self.space.random_pipeline(self.rng)
            )
            if self._claim(p):
                out.append(Candidate(p, self.generation, None, "one-step" if kind else "random"))
        return out

    def _tell(self, evaluations: list[Evaluation]) -> None:
        self.generation += 1
