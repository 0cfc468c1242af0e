"""Models a user brings beyond CNNs: Transformer encoders and MobileNet-like blocks.

Every step kind on ``digits-transformer`` either changes the model or records why not; LR and Reg
keep ``nn.TransformerEncoderLayer``'s eval fast path from crashing; a QAT artifact runs as many
INT8 compute ops as PTQ of the same model; an artifact slower than the Original says so.
"""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
from torch import nn

from petra_hw.assess import compile_model
from petra_hw.pipeline import Pipeline
from petra_hw.precision import PrecisionIntent
from petra_hw.profiles import MeasureSettings
from petra_hw.serialize import load_model, save_model
from petra_hw.steps import get_step
from petra_hw.steps.attention import guard_fast_path
from petra_hw.steps.base import StepContext
from petra_hw.steps.qat import _quantize, fold_batchnorm
from petra_hw.suite import ACCURACY, Splits, Suite, TrainConfig, load_suite
from petra_hw.value import slower_than_original
from suites.digits.suite import load_digits_splits


@pytest.fixture(scope="module")
def transformer():
    from petra_hw.baseline import get_baseline

    return get_baseline(load_suite("digits-transformer"), 0)


def context(baseline, text: str, effects: list | None = None) -> StepContext:
    """Train/calib slices of the real splits (fast on 2 cores); effects land in ``effects``."""
    s = baseline.splits
    splits = Splits(s.train.take(256), s.calib.take(64), s.val, s.test)
    report = effects.append if effects is not None else None
    return StepContext(baseline.suite, splits, Pipeline.parse(text), report=report)


def fast_path_flags(model: nn.Module) -> list[int]:
    return [
        m.activation_relu_or_gelu
        for m in model.modules()
        if isinstance(m, nn.TransformerEncoderLayer)
    ]


def test_lowrank_guards_the_fast_path_of_changed_layers(transformer, tmp_path) -> None:
    effects: list = []
    ctx = context(transformer, "LR(threshold=0.6)", effects)
    model = get_step("LR")(copy.deepcopy(transformer.model), ctx.pipeline.steps[0], ctx).eval()
    assert type(model.encoder.layers[0].linear1) is nn.Sequential  # factorized
    assert fast_path_flags(model) == [0, 0]  # fast path off where the projections changed
    x = transformer.splits.val.inputs(16)
    with torch.no_grad():  # eval + no grad: where the fast path would read linear1.weight
        out = model(x)
    assert out.shape == (16, 10)
    # four attention projections (2 blocks x packed q/k/v + output) are recorded as skipped
    assert effects and effects[0].skipped >= 4 and "MultiheadAttention" in effects[0].why_skipped
    # a model rebuilt from the prefix cache gets the guard again (a fresh build has it on)
    save_model(model, tmp_path / "m.pt")
    loaded, _ = load_model(tmp_path / "m.pt", transformer.suite.build_model)
    assert fast_path_flags(loaded) == [0, 0]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), out)
    assert fast_path_flags(transformer.model) == [1, 1]  # the untouched baseline keeps it


def test_reg_trains_through_the_fast_path_and_gives_it_back(transformer) -> None:
    effects: list = []
    ctx = context(transformer, "Reg(epochs=1)", effects)
    model = get_step("Reg")(copy.deepcopy(transformer.model), ctx.pipeline.steps[0], ctx).eval()
    assert type(model.encoder.layers[0].linear1) is nn.Linear  # folded back
    assert fast_path_flags(model) == [1, 1]
    with torch.no_grad():
        assert torch.isfinite(model(transformer.splits.val.inputs(8))).all()
    assert effects[0].skipped == 4 and "MultiheadAttention" in effects[0].why_skipped


@pytest.mark.parametrize("text", ["LR(threshold=0.6)", "Reg(epochs=1)"])
def test_depthwise_convs_are_recorded_as_skipped(mobile, text) -> None:
    effects: list = []
    ctx = context(mobile, text, effects)
    get_step(ctx.pipeline.steps[0].kind)(copy.deepcopy(mobile.model), ctx.pipeline.steps[0], ctx)
    assert effects and effects[0].changed and "grouped or depthwise" in effects[0].why_skipped


def test_guard_is_exact_without_changes() -> None:
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True).eval()
    assert guard_fast_path(layer) == 0 and layer.activation_relu_or_gelu == 1
    layer.linear1 = nn.Sequential(nn.Linear(16, 4, bias=False), nn.Linear(4, 32))
    assert guard_fast_path(layer) == 1 and layer.activation_relu_or_gelu == 0


def _changed(before: nn.Module, after: nn.Module) -> bool:
    a, b = before.state_dict(), after.state_dict()
    if a.keys() != b.keys():
        return True
    return any(a[k].shape != b[k].shape or not torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(
    "text",
    ["Tr(epochs=1)", "Reg(epochs=1)", "LR(threshold=0.6)", "Pr(ratio=0.3)",
     "Pr(ratio=0.3, structured=False)", "QAT(epochs=1)", "PTQ", "PDQ", "FP16"],
)  # fmt: skip
def test_every_step_kind_changes_the_transformer_or_says_why(transformer, text) -> None:
    """Each kind as a torch transform (the quantization kinds also as deploying steps below)."""
    effects: list = []
    ctx = context(transformer, text, effects)
    step = ctx.pipeline.steps[0]
    before = copy.deepcopy(transformer.model)
    after = get_step(step.kind)(copy.deepcopy(transformer.model), step, ctx)
    assert _changed(before, after) or any(not e.changed for e in effects), text
    if step.kind == "LR" or (step.kind == "Pr" and step["structured"]):
        assert effects and effects[0].skipped > 0  # attention: skipped N layers, with the reason
    with torch.no_grad():
        assert torch.isfinite(after.eval()(transformer.splits.val.inputs(8))).all()


def test_structured_pruning_keeps_heads_and_prunes_ffn(transformer) -> None:
    effects: list = []
    ctx = context(transformer, "Pr(ratio=0.3)", effects)
    model = get_step("Pr")(copy.deepcopy(transformer.model), ctx.pipeline.steps[0], ctx)
    layer = model.encoder.layers[0]
    assert layer.linear1.out_features < 64  # FFN channels removed
    assert layer.self_attn.embed_dim == 32 and layer.self_attn.num_heads == 4  # heads whole
    assert "keep all heads" in effects[0].why_skipped


class InvertedResidual(nn.Module):
    """A MobileNetV2-like model: stem, pointwise expand, depthwise 3x3, pointwise project, add."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16),
                                  nn.ReLU6())  # fmt: skip
        self.block = nn.Sequential(
            nn.Conv2d(16, 48, 1, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 48, 3, padding=1, groups=48, bias=False), nn.BatchNorm2d(48), nn.ReLU6(),
            nn.Conv2d(48, 16, 1, bias=False), nn.BatchNorm2d(16),
        )  # fmt: skip
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        return self.head(x + self.block(x))


MOBILE = Suite(
    name="digits-inverted-residual",
    task="classification",
    build_model=InvertedResidual,
    load_splits=load_digits_splits,
    metric=ACCURACY,
    input_shape=(1, 8, 8),
    train=TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=3e-3),
    num_outputs=10,
)


@pytest.fixture(scope="module")
def mobile():
    from petra_hw.baseline import get_baseline

    return get_baseline(MOBILE, 0)


@pytest.mark.parametrize(
    ("which", "backend"),
    [("transformer", "onnxruntime"), ("transformer", "openvino"), ("mobile", "onnxruntime")],
)
def test_qat_artifact_runs_as_many_int8_ops_as_ptq(
    request, which, backend, cpu_profile, tmp_path
) -> None:
    baseline = request.getfixturevalue(which)
    ctx = context(baseline, "QAT")
    model = copy.deepcopy(baseline.model)
    fold_batchnorm(model)
    fq = _quantize(model, ctx)  # fake quantizers as QAT trains them (training itself not needed)
    counts = {}
    for mode, m in (("static", baseline.model), ("qat", fq)):
        artifact = compile_model(m, baseline.suite, baseline.splits, cpu_profile, backend,
                                 PrecisionIntent("int8", mode), tmp_path / mode)  # fmt: skip
        counts[mode] = artifact.manifest["op_counts"]
    assert counts["qat"]["int8"] == counts["static"]["int8"] > 0
    assert counts["qat"]["float"] == counts["static"]["float"] == 0


def test_slower_than_original_warning() -> None:
    assert slower_than_original(1.0, 2.0) is None
    assert slower_than_original(2.0, 2.0) is None
    line = slower_than_original(5.0, 1.0)
    assert line is not None and "slower than the Original" in line and "5.00x" in line


def test_compile_flags_an_artifact_slower_than_the_original(digits, cpu_profile, tmp_path) -> None:
    """Planted: PDQ turns the digits CNN's convs into ConvInteger, which ONNX Runtime's CPU
    provider runs several times slower than FP32 Conv (DYNAMIC_CONV_NOTE)."""
    from petra_hw.api import compile_pipeline

    quick = MeasureSettings(warmup_iters=5, min_iters=50, min_time_s=0.2, max_time_s=2.0,
                            repeats_if_noisy=0)  # fmt: skip
    profile = dataclasses.replace(cpu_profile, measurement=quick)
    compiled = compile_pipeline(Pipeline.parse("PDQ"), profile, PrecisionIntent("int8", "dynamic"),
                                "onnxruntime", digits, tmp_path / "a")  # fmt: skip
    manifest = compiled.assessment.artifact.manifest
    assert manifest["original"]["latency_ms"] > 0
    assert compiled.warnings == manifest["warnings"]
    assert compiled.warnings and "slower than the Original" in compiled.warnings[0]
