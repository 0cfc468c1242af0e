"""Regularizers (hand-computed values, gradcheck) and the Reg step on the digits suite."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from torch import nn

from petra_hw.pipeline import Pipeline, Step
from petra_hw.steps import get_step
from petra_hw.steps.base import StepContext
from petra_hw.steps.lowrank import decompose_module, is_lowrank_pair, pair_rank
from petra_hw.steps.regularized import SVDLayer
from petra_hw.steps.regularizers import (
    hoyer_loss,
    lai_loss,
    norm_loss,
    orth_hoyer_penalty,
    orthogonality_loss,
    sparsity_loss,
)
from petra_hw.suite import DataContext, load_suite

F64 = torch.float64


# -- pure losses ----------------------------------------------------------------------------------
def test_orthogonality_by_hand() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]])  # U^T U - I = diag(0, 3)
    v = torch.eye(2)
    assert float(orthogonality_loss(u, v)) == pytest.approx(9 / 4)
    assert float(orthogonality_loss(v, u)) == pytest.approx(9 / 4)


def test_orthogonality_is_zero_for_orthonormal_factors() -> None:
    torch.manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(7, 3, dtype=F64))
    v, _ = torch.linalg.qr(torch.randn(5, 3, dtype=F64))
    assert float(orthogonality_loss(u, v)) == pytest.approx(0.0, abs=1e-12)


def test_hoyer_by_hand_and_scale_invariance() -> None:
    s = torch.tensor([3.0, 4.0])
    assert float(hoyer_loss(s)) == pytest.approx(7 / 5)
    assert float(hoyer_loss(torch.tensor([2.0, 0.0, 0.0]))) == pytest.approx(1.0)  # rank one
    assert float(hoyer_loss(torch.ones(4))) == pytest.approx(2.0)  # flat: sqrt(n)
    for c in (1e-3, 0.5, 7.0, 1e4):
        assert float(hoyer_loss(c * s)) == pytest.approx(7 / 5, rel=1e-6)


def test_orth_hoyer_penalty_averages_over_layers() -> None:
    u = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    eye = torch.eye(2)
    factors = [(u, torch.tensor([3.0, 4.0]), eye), (eye, torch.tensor([1.0, 0.0]), eye)]
    expected = 0.1 * (9 / 4 + 0) / 2 + 2.0 * (7 / 5 + 1) / 2
    assert float(orth_hoyer_penalty(factors, 0.1, 2.0)) == pytest.approx(expected)
    with pytest.raises(ValueError):
        orth_hoyer_penalty([], 1.0, 1.0)


def test_lai_by_hand() -> None:
    e = torch.tensor([2.0])
    flat, diagonal = torch.tensor([0.0]), torch.tensor([1.0])
    assert float(lai_loss(e, flat)) == pytest.approx(2.0)  # max(sin 0, cos 0) = 1
    assert float(lai_loss(e, diagonal)) == pytest.approx(2 / math.sqrt(2))  # sin = cos = 1/sqrt 2
    assert float(lai_loss(e, flat, lam=2.0)) == pytest.approx(4.0)  # lam * cos 0
    assert float(lai_loss(e, diagonal, lam=0.5)) == pytest.approx(2 * math.sqrt(2))  # sin / lam
    # lam < 1 prices steep slopes: the weight grows toward 1 / lam
    assert float(lai_loss(e, torch.tensor([1e6]), lam=0.25)) == pytest.approx(8.0, rel=1e-6)


def test_sparsity_by_hand() -> None:
    w = torch.tensor([1.0, 2.0])
    g = torch.tensor([0.0, -2.0])  # mean |g| = 1: relevance 0 and 2
    assert float(sparsity_loss(w, g)) == pytest.approx(1.0 + 4.0 * math.exp(-2.0))
    assert float(sparsity_loss(w, torch.zeros(2))) == pytest.approx(5.0)  # plain weight decay


def test_norm_loss_by_hand() -> None:
    w = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    assert float(norm_loss(w)) == pytest.approx((1 - 5) ** 2 + (1 - 0.5) ** 2)
    filters = torch.zeros(2, 1, 2, 2)
    filters[0, 0, 0, 0] = 1.0
    filters[1, 0] = 1.0  # norm 2
    assert float(norm_loss(filters)) == pytest.approx(1.0)


def test_gradcheck_every_loss() -> None:
    torch.manual_seed(0)

    def leaf(*shape: int, shift: float = 0.0) -> torch.Tensor:
        return (torch.randn(*shape, dtype=F64) + shift).requires_grad_(True)

    grad = torch.randn(3, 4, dtype=F64)
    checks = [
        (orthogonality_loss, (leaf(5, 3), leaf(4, 3))),
        (hoyer_loss, (leaf(4, shift=3.0),)),
        (
            lambda e, k: lai_loss(e, k),
            (
                leaf(6, shift=2.0),
                torch.tensor([0.1, 0.4, 0.9, 1.3, 2.0, 5.0], dtype=F64, requires_grad=True),
            ),
        ),
        (
            lambda e, k: lai_loss(e, k, lam=0.3),
            (leaf(3), torch.tensor([0.05, 0.5, 4.0], dtype=F64, requires_grad=True)),
        ),
        (lambda w: sparsity_loss(w, grad), (leaf(3, 4),)),
        (norm_loss, (leaf(3, 2, 2, shift=1.0),)),
        (
            lambda u, s, v: orth_hoyer_penalty([(u, s, v)], 0.3, 0.7),
            (leaf(5, 3), leaf(3, shift=3.0), leaf(4, 3)),
        ),
    ]
    for fn, args in checks:
        assert torch.autograd.gradcheck(fn, args), fn


# -- SVD reparametrization ----------------------------------------------------------------------
@pytest.mark.parametrize(
    ("make", "shape"),
    [
        (lambda: nn.Linear(9, 5), (2, 9)),
        (lambda: nn.Conv2d(3, 6, 3, padding=1), (2, 3, 8, 8)),
        (lambda: decompose_module(nn.Conv2d(4, 6, 3, stride=2), 2), (2, 4, 8, 8)),
        (lambda: nn.Embedding(12, 5), None),
    ],
)
def test_svd_layer_keeps_function_and_folds_back(make, shape) -> None:
    torch.manual_seed(0)
    module = make()
    x = torch.randn(*shape) if shape else torch.tensor([[1, 4, 11]])
    expected = module(x).detach()
    layer = SVDLayer(module)
    torch.testing.assert_close(layer(x), expected, atol=1e-5, rtol=0)
    folded = layer.fold()
    assert type(folded) is type(module)
    torch.testing.assert_close(folded(x), expected, atol=1e-5, rtol=0)


# -- the Reg step on real data ------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits_data():
    """The digits suite with its train and calib splits cut to a few batches, to stay fast."""
    suite = load_suite("digits")
    splits = suite.load_splits(DataContext(None, 0))
    train, calib = splits.train, splits.calib
    return suite, dataclasses.replace(splits, train=train.take(256), calib=calib.take(64))


def _model(suite) -> nn.Module:
    torch.manual_seed(0)
    return suite.build_model(width=8)  # DigitsCNN, narrowed


def _ctx(suite, splits, settings: str = "") -> StepContext:
    return StepContext(
        suite=suite,
        splits=splits,
        pipeline=Pipeline.parse("LR" + settings),
        channel_multiple=1,
        seed=0,
    )


def _architecture(model: nn.Module) -> list[tuple[str, str, tuple[int, ...]]]:
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters()}
    return [(n, type(m).__name__, shapes.get(f"{n}.weight", ())) for n, m in model.named_modules()]


@pytest.mark.parametrize("reg", ["orth_hoyer", "lai", "sparsity", "norm"])
def test_reg_step_keeps_architecture(digits_data, reg: str) -> None:
    suite, splits = digits_data
    model = _model(suite)
    arch = _architecture(model)
    step = Step.make("Reg", reg=reg, epochs=1, strength=1e-2)
    model = get_step("Reg")(model, step, _ctx(suite, splits))
    assert _architecture(model) == arch
    assert all(p.requires_grad for p in model.parameters())
    with torch.no_grad():
        assert torch.isfinite(model.eval()(splits.calib.inputs(32))).all()


def _hoyer_of(layer: nn.Module) -> float:
    return float(hoyer_loss(torch.linalg.svdvals(layer.weight.detach().flatten(1))))


def test_reg_orth_hoyer_concentrates_the_spectrum(digits_data) -> None:
    suite, splits = digits_data
    model = _model(suite)
    before = _hoyer_of(model.classifier[0])
    step = Step.make("Reg", reg="orth_hoyer", lambda_h=10.0, epochs=3)
    model = get_step("Reg")(model, step, _ctx(suite, splits, " ; lr=0.05"))
    assert _hoyer_of(model.classifier[0]) < before - 0.1


def test_reg_orth_hoyer_keeps_lowrank_pairs(digits_data) -> None:
    suite, splits = digits_data
    model = _model(suite)
    ctx = _ctx(suite, splits)
    model = get_step("LR")(model, Step.make("LR", rule="ratio", threshold=0.25), ctx)
    ranks = [pair_rank(m) for m in model.modules() if is_lowrank_pair(m)]
    assert ranks
    arch = _architecture(model)
    model = get_step("Reg")(model, Step.make("Reg", epochs=1), ctx)
    assert _architecture(model) == arch
    assert [pair_rank(m) for m in model.modules() if is_lowrank_pair(m)] == ranks
