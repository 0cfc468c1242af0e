"""Pr step: real torch-pruning on the bundled models (digits CNN, CIFAR ResNet-20), no mocks."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch_pruning as tp
from torch import nn

from petra_hw.pipeline import Pipeline, Step
from petra_hw.steps import get_step, pruning
from petra_hw.steps.base import StepContext, settings_read
from petra_hw.steps.pruning import channel_importance, output_layers, pruning_step
from petra_hw.suite import DataContext, load_suite
from suites.cifar10_resnet20.suite import BasicBlock, ResNet20
from suites.digits.suite import DigitsCNN

CRITERIA = ("l1", "l2", "taylor", "hessian", "bn_scale", "lamp")


@pytest.fixture(autouse=True)
def small_data_passes(monkeypatch):
    """Tests check which channels go, not how good the estimates are: keep data passes tiny."""
    monkeypatch.setattr(pruning, "GRAD_SAMPLES", 16)
    monkeypatch.setattr(pruning, "HESSIAN_SAMPLES", 8)
    monkeypatch.setattr(pruning, "SLIMMING_FRACTION", 0.1)


@pytest.fixture(scope="module")
def digits():
    suite = load_suite("digits")
    return suite, suite.load_splits(DataContext(None, 0))


@pytest.fixture(scope="module")
def cifar():
    suite = load_suite("cifar10-resnet20")
    return suite, suite.load_splits(DataContext(None, 0))


def make_ctx(suite_splits, channel_multiple: int = 1) -> StepContext:
    suite, splits = suite_splits
    return StepContext(
        suite=suite,
        splits=splits,
        pipeline=Pipeline.parse("Pr"),
        channel_multiple=channel_multiple,
        seed=0,
    )


def kept(channels: int, ratio: float, multiple: int) -> int:
    """torch-pruning's rule: keep int(c * (1 - ratio)), rounded down to the multiple."""
    n = int(channels * (1 - ratio))
    return n - n % multiple


def narrow_digits(w1: int, w2: int, hidden: int) -> nn.Module:
    m = DigitsCNN()
    f = m.features
    f[0], f[1] = nn.Conv2d(1, w1, 3, padding=1, bias=False), nn.BatchNorm2d(w1)
    f[3], f[4] = nn.Conv2d(w1, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2)
    f[7], f[8] = nn.Conv2d(w2, w2, 3, padding=1, bias=False), nn.BatchNorm2d(w2)
    m.classifier[0], m.classifier[2] = nn.Linear(w2, hidden), nn.Linear(hidden, 10)
    return m


def narrow_resnet20(widths: tuple[int, int, int]) -> nn.Module:
    m = ResNet20()
    m.conv1, m.bn1 = nn.Conv2d(3, widths[0], 3, 1, 1, bias=False), nn.BatchNorm2d(widths[0])
    blocks, cin = [], widths[0]
    for cout, stride in zip(widths, (1, 2, 2), strict=True):
        for i in range(3):
            blocks.append(BasicBlock(cin, cout, stride if i == 0 else 1))
            cin = cout
    m.layers, m.fc = nn.Sequential(*blocks), nn.Linear(widths[2], 10)
    return m


def count(model: nn.Module, x: torch.Tensor) -> tuple[float, float]:
    return tp.utils.count_ops_and_params(model, x)


def test_registered_as_pr():
    assert get_step("Pr") is pruning_step


def test_digits_uniform_removes_expected_channels_params_and_macs(digits):
    ratio, mult = 0.3, 4
    torch.manual_seed(0)
    model, x = DigitsCNN(), digits[0].example_input(1)
    macs0, params0 = count(model, x)
    model = pruning_step(model, Step.make("Pr", ratio=ratio), make_ctx(digits, mult))
    f = model.features
    w1, w2, hidden = kept(32, ratio, mult), kept(64, ratio, mult), kept(128, ratio, mult)
    assert (f[0].out_channels, f[3].out_channels, f[7].out_channels) == (w1, w2, w2)
    assert model.classifier[0].out_features == hidden
    assert model.classifier[2].out_features == 10  # the output layer is never pruned
    assert all(c % mult == 0 for c in (w1, w2, hidden))
    macs, params = count(model, x)
    assert (macs, params) == count(narrow_digits(w1, w2, hidden), x)
    assert params < params0 * (1 - ratio) and macs < macs0 * (1 - ratio)
    assert model(digits[0].example_input(3)).shape == (3, 10)


def test_resnet20_residual_groups_prune_together(cifar):
    torch.manual_seed(0)
    model, x = ResNet20(), cifar[0].example_input(1)
    macs0, params0 = count(model, x)
    model = pruning_step(model, Step.make("Pr", ratio=0.5), make_ctx(cifar, 8))
    macs, params = count(model, x)
    assert (macs, params) == count(narrow_resnet20((8, 16, 32)), x)
    assert 0.24 < params / params0 < 0.30 and 0.24 < macs / macs0 < 0.30
    assert model.fc.out_features == 10 and model.fc.in_features == 32


def test_resnet20_global_taylor_keeps_channel_multiples(cifar):
    torch.manual_seed(0)
    model = ResNet20()
    step = Step.make("Pr", criterion="taylor", ratio=0.4, scope="global")
    model = pruning_step(model, step, make_ctx(cifar, 4))
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert all(c.out_channels % 4 == 0 for c in convs)
    assert sum(c.out_channels for c in convs) < sum(
        c.out_channels for c in ResNet20().modules() if isinstance(c, nn.Conv2d)
    )
    assert model.fc.out_features == 10
    assert model(cifar[1].train.inputs(2)).shape == (2, 10)


@pytest.mark.slow  # the first dynamo export in a process costs ~10 s of tracing set-up
def test_pruned_resnet20_exports_to_onnx_and_matches_onnxruntime(cifar, tmp_path):
    torch.manual_seed(0)
    model = pruning_step(ResNet20(), Step.make("Pr", ratio=0.3), make_ctx(cifar, 4))
    x = cifar[1].calib.inputs(4)
    path = tmp_path / "pruned.onnx"
    torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, external_data=False)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


class Tiny(nn.Module):
    """Two conv+BN blocks and a classifier: small enough to plant a dead channel."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


PLANTED = 3


def planted_tiny() -> Tiny:
    torch.manual_seed(0)
    model = Tiny()
    with torch.no_grad():
        model.conv1.weight[PLANTED].zero_()
        model.bn1.weight[PLANTED] = 0.0
        model.bn1.bias[PLANTED] = 0.0
    return model


@pytest.mark.parametrize("criterion", CRITERIA)
def test_planted_dead_channel_is_least_important_and_removed(digits, criterion):
    ctx = make_ctx(digits)
    scores = channel_importance(planted_tiny(), criterion, ctx)["conv1"]
    assert scores.shape == (8,)
    assert int(scores.argmin()) == PLANTED
    step = Step.make("Pr", criterion=criterion, ratio=1 / 8)
    # Run as ``apply`` runs it: reading a setting the registration does not declare would raise.
    model = pruning_step(planted_tiny(), step, replace(ctx, reads=settings_read(step)))
    assert model.conv1.out_channels == 7
    assert bool((model.conv1.weight.flatten(1).abs().sum(1) > 0).all())  # the dead one is gone
    assert bool((model.bn1.weight != 0).all())


def test_output_layer_found_through_lowrank_pair():
    head = nn.Sequential(nn.Linear(16, 4), nn.Linear(4, 10))
    model = nn.Sequential(nn.Conv2d(1, 16, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)
    assert output_layers(model, torch.zeros(1, 1, 8, 8)) == [head[1]]


@pytest.mark.parametrize(("criterion", "scope"), [("l1", "uniform"), ("taylor", "global")])
def test_lowrank_factored_model_still_prunes(digits, criterion, scope):
    """LR leaves nn.Sequential pairs of plain layers; their rank dimension is prunable."""
    torch.manual_seed(0)
    model = DigitsCNN()
    model.features[3] = nn.Sequential(
        nn.Conv2d(32, 12, 3, padding=1, bias=False), nn.Conv2d(12, 64, 1)
    )
    model.classifier[2] = nn.Sequential(nn.Linear(128, 8), nn.Linear(8, 10))
    step = Step.make("Pr", criterion=criterion, ratio=0.3, scope=scope)
    model = pruning_step(model, step, make_ctx(digits))
    if scope == "uniform":
        assert model.features[3][0].out_channels == kept(12, 0.3, 1)
        assert model.classifier[2][0].out_features == kept(8, 0.3, 1)
    assert model.classifier[2][1].out_features == 10
    assert model(digits[1].train.inputs(5)).shape == (5, 10)


@pytest.mark.parametrize(("criterion", "scope"), [("l1", "uniform"), ("lamp", "global")])
def test_unstructured_zeroes_ratio_of_weights_and_keeps_shapes(digits, criterion, scope):
    torch.manual_seed(0)
    model = DigitsCNN()
    shapes = {n: p.shape for n, p in model.named_parameters()}
    out_weight = model.classifier[2].weight.detach().clone()
    step = Step.make("Pr", criterion=criterion, ratio=0.5, scope=scope, structured=False)
    model = pruning_step(model, step, make_ctx(digits))
    assert {n: p.shape for n, p in model.named_parameters()} == shapes
    assert not any(hasattr(m, "weight_mask") for m in model.modules())  # masks baked in
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))][:-1]
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    assert zeros / sum(m.weight.numel() for m in layers) == pytest.approx(0.5, abs=0.01)
    assert torch.equal(model.classifier[2].weight, out_weight)


def test_zero_ratio_is_a_no_op(digits):
    model = DigitsCNN()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model = pruning_step(model, Step.make("Pr", ratio=0.0), make_ctx(digits))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


def test_prunes_under_a_callers_no_grad(digits):
    """torch-pruning traces through autograd; the step must not depend on the caller's mode."""
    with torch.no_grad():
        model = pruning_step(DigitsCNN(), Step.make("Pr", ratio=0.5), make_ctx(digits))
    assert model.features[0].out_channels == 16
