"""LR: rank rules, exact reconstruction at full rank, cost accounting, and export of the result."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch_pruning as tp
from torch import nn

from petra_hw.pipeline import Pipeline, Step
from petra_hw.steps import get_step
from petra_hw.steps.base import StepContext
from petra_hw.steps.lowrank import (
    decompose_module,
    factorizable_layers,
    is_lowrank_pair,
    pair_rank,
    rule_spectrum,
    select_rank,
)
from petra_hw.suite import load_suite


def _ctx(multiple: int = 1) -> StepContext:
    return StepContext(
        suite=load_suite("digits"),
        splits=None,  # LR reads no data
        pipeline=Pipeline.parse("LR"),
        channel_multiple=multiple,
        seed=0,
    )


def _lr(model: nn.Module, multiple: int = 1, **params: object) -> nn.Module:
    return get_step("LR")(model, Step.make("LR", **params), _ctx(multiple))


LAYERS = {
    "linear": (lambda: nn.Linear(12, 7), lambda: torch.randn(5, 12)),
    "conv1d": (lambda: nn.Conv1d(4, 6, 3, stride=2, padding=1), lambda: torch.randn(2, 4, 11)),
    "conv2d": (
        lambda: nn.Conv2d(3, 8, 3, stride=2, padding=2, dilation=2),
        lambda: torch.randn(2, 3, 9, 9),
    ),
    "embedding": (lambda: nn.Embedding(20, 6, padding_idx=0), lambda: torch.tensor([[0, 3, 19]])),
}


@pytest.mark.parametrize("kind", sorted(LAYERS))
def test_full_rank_reproduces_layer(kind: str) -> None:
    torch.manual_seed(0)
    make, inputs = LAYERS[kind]
    layer, x = make(), inputs()
    full = min(layer.weight.shape[0], layer.weight[0].numel())
    pair = decompose_module(layer, full)
    assert is_lowrank_pair(pair) and pair_rank(pair) == full
    torch.testing.assert_close(pair(x), layer(x), atol=1e-5, rtol=0)
    # a pair is re-decomposed from its product: at its own rank it is unchanged too
    torch.testing.assert_close(decompose_module(pair, full)(x), layer(x), atol=1e-5, rtol=0)


def test_conv_pair_structure() -> None:
    conv = nn.Conv2d(3, 8, 3, stride=2, padding=1)
    first, second = decompose_module(conv, 2)
    assert (first.out_channels, first.stride, first.padding, first.bias) == (
        2,
        (2, 2),
        (1, 1),
        None,
    )
    assert second.kernel_size == (1, 1) and second.out_channels == 8
    torch.testing.assert_close(second.bias, conv.bias)


SPECTRUM = torch.tensor([4.0, 2.0, 1.0, 1.0, 0.5, 0.0])
# squares 16, 4, 1, 1, 0.25, 0 (sum 22.25); cumulative energy .719, .899, .944, .989, 1, 1


@pytest.mark.parametrize(
    ("rule", "threshold", "multiple", "expected"),
    [
        ("energy", 0.7, 1, 1),
        ("energy", 0.8, 1, 2),
        ("energy", 0.9, 1, 3),
        ("energy", 0.95, 1, 4),
        ("energy", 1.0, 1, 5),  # the zero singular value adds nothing
        ("explained_variance", 0.95, 1, 4),  # same arithmetic, on the centred spectrum
        ("sv_proportion", 0.25, 1, 4),  # s >= 1
        ("sv_proportion", 0.5, 1, 2),  # s >= 2
        ("ratio", 0.5, 1, 3),
        ("ratio", 0.3, 1, 2),  # ceil(1.8)
        ("energy", 0.7, 4, 4),  # rounded up to the channel multiple
        ("ratio", 0.5, 4, 4),
        ("ratio", 0.9, 4, 6),  # ceil(5.4) = 6 -> 8, capped at the full rank 6
    ],
)
def test_select_rank_rules(rule: str, threshold: float, multiple: int, expected: int) -> None:
    assert select_rank(SPECTRUM, rule, threshold, multiple) == expected


def test_select_rank_exact_threshold_and_bad_rule() -> None:
    s = torch.tensor([3.0, 2.0, 1.0])  # squares 9, 4, 1
    assert select_rank(s, "energy", 13 / 14) == 2
    assert select_rank(s, "ratio", 1 / 3) == 1
    with pytest.raises(ValueError):
        select_rank(s, "nuclear", 0.5)


def test_explained_variance_is_pca_ratio() -> None:
    torch.manual_seed(0)
    w = torch.randn(10, 6, dtype=torch.float64) + 5.0  # a large common mean row
    s = rule_spectrum(w, "explained_variance")
    ratio = (s.square() / s.square().sum()).numpy()
    # PCA with rows as samples: eigenvalues of the covariance of the columns
    eig = np.sort(np.linalg.eigvalsh(np.cov(w.numpy(), rowvar=False)))[::-1]
    np.testing.assert_allclose(ratio, eig / eig.sum(), atol=1e-10)
    # the mean dominates the plain spectrum, not the centred one
    plain = rule_spectrum(w, "energy")
    assert (plain[0] ** 2 / plain.square().sum()) > 0.9 > ratio[0]


class Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 16, 3, padding=1)
        self.dw = nn.Conv2d(16, 16, 3, padding=1, groups=16)  # depthwise: skipped
        self.fc1 = nn.Linear(16 * 4 * 4, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.dw(torch.relu(self.conv(x))))
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


def test_macs_and_params_fall_as_predicted() -> None:
    torch.manual_seed(0)
    model, x = Small().eval(), torch.randn(1, 8, 4, 4)
    macs0, params0 = tp.utils.count_ops_and_params(model, x)
    model = _lr(model, rule="ratio", threshold=0.25)
    macs1, params1 = tp.utils.count_ops_and_params(model, x)
    # (rows, cols, rank, output positions): conv 16 x 72 -> 4 on 4x4, fc1 32 x 256 -> 8, fc2 10 x 32 -> 3
    layers = [(16, 72, 4, 16), (32, 256, 8, 1), (10, 32, 3, 1)]
    saved = [rows * cols - r * (rows + cols) for rows, cols, r, _ in layers]
    assert params0 - params1 == sum(saved)
    assert macs0 - macs1 == sum(s * pos for s, (*_, pos) in zip(saved, layers, strict=True))
    assert type(model.dw) is nn.Conv2d
    assert [pair_rank(m) for m in (model.conv, model.fc1, model.fc2)] == [4, 8, 3]


def test_skips_layers_that_would_not_get_cheaper() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(64, 16))
    model = _lr(model, rule="ratio", threshold=0.5)  # 4x4 at rank 2 costs 16 = dense
    assert type(model[0]) is nn.Linear and pair_rank(model[2]) == 8  # 8 * 80 < 1024


def test_channel_multiple_and_redecomposition() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 48))
    # full ranks 64 and 48: ceil(19.2) = 20 -> 24 and ceil(14.4) = 15 -> 16
    model = _lr(model, multiple=8, rule="ratio", threshold=0.3)
    assert [pair_rank(model[i]) for i in (0, 2)] == [24, 16]
    # a pair's ratio is of its current rank: 12 -> 16 and 8
    model = _lr(model, multiple=8, rule="ratio", threshold=0.5)
    assert [pair_rank(model[i]) for i in (0, 2)] == [16, 8]
    assert all(is_lowrank_pair(model[i]) and type(model[i][0]) is nn.Linear for i in (0, 2))
    assert _lr(model, rule="ratio", threshold=1.0) is model  # nothing left to gain
    assert [pair_rank(model[i]) for i in (0, 2)] == [16, 8]


def test_redecomposing_a_truncated_pair_keeps_its_function() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 6)
    pair = decompose_module(nn.Conv2d(5, 12, 3, padding=1), 4)
    again = decompose_module(pair, 4)
    torch.testing.assert_close(again(x), pair(x), atol=1e-5, rtol=0)


def test_attention_projections_and_tied_weights_are_skipped() -> None:
    emb = nn.Embedding(30, 16)
    head = nn.Linear(16, 30, bias=False)
    head.weight = emb.weight  # tied
    model = nn.ModuleDict({"attn": nn.MultiheadAttention(16, 2), "emb": emb, "head": head})
    assert factorizable_layers(model) == []


def test_decomposed_model_exports_to_onnx(tmp_path) -> None:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = _lr(Small().eval(), rule="energy", threshold=0.8)
    assert is_lowrank_pair(model.conv)
    x = torch.randn(2, 8, 4, 4)
    path = tmp_path / "lr.onnx"
    torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, verbose=False)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        np.testing.assert_allclose(out, model(x).numpy(), atol=1e-5)
    assert math.isfinite(float(out.sum()))


@pytest.mark.parametrize("kind", ["linear", "conv2d"])
def test_fold_keeps_a_negative_singular_value(kind: str) -> None:
    """Reg(orth_hoyer) trains S freely; folding an LR pair back must keep a negative S_i's sign."""
    from petra_hw.steps.regularized import SVDLayer

    torch.manual_seed(0)
    make, inputs = LAYERS[kind]
    layer, x = make(), inputs()
    pair = decompose_module(layer, 3)
    svd = SVDLayer(pair)
    with torch.no_grad():
        svd.s[1] = -svd.s[1]  # as if training had pushed it through zero
        expected = svd(x)
    folded = svd.fold()
    assert is_lowrank_pair(folded)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=0)
