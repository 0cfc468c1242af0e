"""Cheap objectives of a candidate, from its structure alone: no training, no compile, no timing.

A pipeline's *structural steps* (``LR`` ranks, ``Pr`` channels, anything else that does not
train) are applied to the run's starting model with every training step left out (``Tr``,
``Reg``, ``QAT``, and the ``Tr`` that untrained mode prepends); quantization intents only set the
deployed precision.  From that untrained graph come:

- ``macs``: multiply-accumulates at batch 1, per op type, counted by torch's ``FlopCounterMode``
  (one forward pass on the suite's example input; MACs = FLOPs / 2);
- ``size_bytes``: an estimate of the artifact's bytes: Conv/Linear weights at the deployed
  precision's width (1 byte INT8, 2 FP16/BF16, 4 FP32), every other tensor at 4 bytes;
- ``features``: what the learned cost model reads (``petra_hw.search.costmodel``): MACs per op
  type, layer and channel counts, parameters, and the deployed precision and backend one-hot.

``exact`` says whether this structure is the one the full pipeline builds.  It is not when a step
whose result depends on the weights (``LR`` reads the spectrum, ``Pr(scope=global)`` ranks channels
across layers, any plug-in kind) comes after a training step we left out: then the trained
weights, not the starting ones, decide ranks and channels.  ``Pr(scope=uniform)`` removes the same
number of channels per group whatever the weights, and quantization steps change no shape.
Screening trusts exact structures only (``petra_hw.search.screening``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from petra_hw.backend import choose_backend
from petra_hw.baseline import Baseline
from petra_hw.canonical import canonicalize
from petra_hw.errors import UserError
from petra_hw.pipeline import Pipeline, Step
from petra_hw.precision import PrecisionIntent, deployed_intent

log = logging.getLogger(__name__)

WEIGHT_BYTES = {"int8": 1, "fp16": 2, "bf16": 2, "fp32": 4}
_WEIGHTED = (nn.modules.conv._ConvNd, nn.Linear)


@dataclass(frozen=True)
class Structure:
    """The cheap objectives and cost-model features of one pipeline's untrained graph."""

    macs: float
    size_bytes: float
    precision: str  # the deployed intent's label, e.g. "int8-static"
    backend: str  # the backend that would compile it ("" when none can)
    exact: bool
    features: tuple[tuple[str, float], ...]  # sorted by name: deterministic

    def feature_dict(self) -> dict[str, float]:
        return dict(self.features)


def structural_pipeline(pipeline: Pipeline) -> Pipeline:
    """``pipeline`` without its training steps (the model-level settings kept)."""
    return pipeline.replace_steps([s for s in pipeline.steps if not s.spec.trains])


def _weight_independent(step: Step) -> bool:
    """Steps whose effect on shapes does not depend on the weights they see."""
    if step.spec.quantizes:
        return True
    if step.kind == "Pr":
        return not step["structured"] or step["scope"] == "uniform"
    return False


def is_exact(pipeline: Pipeline) -> bool:
    """Whether leaving the training steps out keeps every shape (see the module docstring)."""
    trained = False
    for step in pipeline.steps:
        if step.spec.trains:
            trained = True
        elif trained and not _weight_independent(step):
            return False
    return True


@torch.no_grad()
def graph_features(model: nn.Module, example: Any, precision: str) -> dict[str, float]:
    """MACs per op type, layer/channel counts, parameters and the size estimate of ``model``."""
    model.eval()
    with FlopCounterMode(display=False) as counter:
        model(example)
    per_op = {str(op): n / 2.0 for op, n in counter.get_flop_counts().get("Global", {}).items()}
    width = WEIGHT_BYTES.get(precision.partition("-")[0], 4)
    feats: dict[str, float] = {f"macs:{op}": v for op, v in per_op.items()}
    macs = float(sum(per_op.values()))
    feats["macs"] = macs
    feats["log_macs"] = math.log1p(macs)
    convs = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    feats["layers:conv"] = float(len(convs))
    feats["layers:linear"] = float(len(linears))
    feats["channels:conv_out"] = float(sum(m.out_channels for m in convs))
    feats["channels:conv_in"] = float(sum(m.in_channels for m in convs))
    feats["channels:conv_max"] = float(max((m.out_channels for m in convs), default=0))
    feats["channels:linear_out"] = float(sum(m.out_features for m in linears))
    feats["channels:linear_in"] = float(sum(m.in_features for m in linears))
    weights = {id(m.weight) for m in model.modules() if isinstance(m, _WEIGHTED)}
    params = size = 0.0
    for p in model.parameters():
        params += p.numel()
        size += p.numel() * (width if id(p) in weights else 4)
    size += sum(b.numel() * 4 for b in model.buffers() if b.is_floating_point())
    feats["params"] = params
    feats["size_bytes"] = size
    feats["log_size_bytes"] = math.log1p(size)
    return feats


class StructureProbe:
    """Structures of pipelines on one run's starting model, each computed once.

    ``mode="untrained"`` prepends the suite's training, as the evaluator does
    (``evaluator.applied_pipeline``), so structural steps after it count as inexact.
    """

    def __init__(
        self,
        baseline: Baseline,
        profile,
        *,
        backend: str | None = None,
        mode: str = "pretrained",
        seed: int = 0,
    ) -> None:
        self.baseline = baseline
        self.profile = profile
        self.pinned = backend
        self.mode = mode
        self.seed = seed
        self._by_pipeline: dict[str, Structure | None] = {}
        self._by_graph: dict[tuple[str, str], dict[str, float]] = {}

    @classmethod
    def from_context(cls, ctx) -> StructureProbe:
        """The probe for a run's ``EvalContext``, on the same starting model as its workers."""
        from petra_hw.search.evaluator import _load_env

        env = _load_env(ctx)
        return cls(env.baseline, env.profile, backend=ctx.backend, mode=ctx.mode, seed=ctx.seed)

    def _applied(self, pipeline: Pipeline) -> Pipeline:
        if self.mode != "untrained":
            return pipeline
        epochs = self.baseline.suite.train.epochs
        return pipeline.replace_steps((Step.make("Tr", epochs=epochs), *pipeline.steps))

    def structure(self, pipeline: Pipeline) -> Structure | None:
        """The pipeline's structure, or None when its structural steps fail on the model (the
        full evaluation will record that failure)."""
        key = pipeline.hash
        if key not in self._by_pipeline:
            self._by_pipeline[key] = self._compute(pipeline)
        return self._by_pipeline[key]

    def _compute(self, pipeline: Pipeline) -> Structure | None:
        from petra_hw.apply import keyed_prefix

        intent = deployed_intent(pipeline, self.profile)
        try:
            backend = choose_backend(self.profile, intent, self.pinned)
        except UserError:
            backend = ""
        applied = self._applied(pipeline)
        graph = canonicalize(structural_pipeline(applied))
        gkey = (keyed_prefix(graph, len(graph)).hash, intent.precision)  # unread settings out
        if gkey not in self._by_graph:
            feats = self._graph_features(graph, intent.precision)
            if feats is None:
                log.info("no structure for %s", pipeline)
                return None
            self._by_graph[gkey] = feats
        feats = dict(self._by_graph[gkey])
        feats.update(_one_hot(intent, backend))
        return Structure(
            macs=feats["macs"],
            size_bytes=feats["size_bytes"],
            precision=intent.label(),
            backend=backend,
            exact=is_exact(applied),
            features=tuple(sorted(feats.items())),
        )

    def _graph_features(self, graph: Pipeline, precision: str) -> dict[str, float] | None:
        """Features of ``graph`` applied to the starting model; None when a step fails (the
        candidate's failure, which its full evaluation records)."""
        from petra_hw.apply import apply
        from petra_hw.search.evaluator import computing

        with computing():  # a shared hold on the machine's compute lock: never while measuring
            try:
                model = apply(
                    graph,
                    self.baseline,
                    self.baseline.suite,
                    channel_multiple=self.profile.channel_multiple,
                    seed=self.seed,
                ).model
                return graph_features(model, self.baseline.suite.example_input(1), precision)
            except Exception as exc:
                log.info("structural steps %s failed: %s: %s", graph, type(exc).__name__, exc)
                return None


def _one_hot(intent: PrecisionIntent, backend: str) -> dict[str, float]:
    return {f"precision:{intent.label()}": 1.0, f"backend:{backend or 'none'}": 1.0}
