"""Reg: regularized training toward low rank (orthogonality + Hoyer) or sparsity.

``orth_hoyer`` (PETRA, Revin et al.): every layer LR could factorize (dense Linear/Conv/Embedding
and LR pairs) is temporarily trained as W = U diag(S) V^T, initialised from its SVD so the function
is unchanged, with L_train + (lambda_O/|D|) sum L_O(U, V) + (lambda_H/|D|) sum L_H(S).  Afterwards
the factors are folded back into the original structure (dense: W = U diag(S) V^T; pair:
B = U sign(S) sqrt|S|, A = sqrt|S| V^T: a singular value training drove negative keeps its sign),
so Reg leaves the architecture unchanged and a later LR truncates
the spectrum that the Hoyer term concentrated.  While the factors train, a
``nn.TransformerEncoderLayer`` holding one runs without its fused fast path, and attention
projections (read directly by ``nn.MultiheadAttention``) are left out and counted as skipped
(``steps.attention``).

``lai``, ``sparsity`` and ``norm`` add ``strength`` times their term (see ``regularizers``) to the
loss of the plain weights.  All variants go through the one training loop,
:func:`petra_hw.training.train`, monitoring the calib split (never val or test).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import nn
from torch.func import functional_call

from petra_hw.pipeline import Step
from petra_hw.steps.attention import (
    ATTENTION_SKIP_REASON,
    attention_projections,
    guard_fast_path,
)
from petra_hw.steps.base import ALL_SETTINGS, StepContext, register
from petra_hw.steps.effects import skipped_effect
from petra_hw.steps.lowrank import (
    GROUPED_SKIP_REASON,
    build_pair,
    dense_equivalent,
    factorizable_layers,
    grouped_convs,
    is_lowrank_pair,
    pair_rank,
    replace_module,
)
from petra_hw.steps.regularizers import (
    hoyer_loss,
    lai_loss,
    norm_loss,
    orth_hoyer_penalty,
    sparsity_loss,
)
from petra_hw.suite import ModelLoss
from petra_hw.training import ExtraLoss, compute_loss, make_loss, train

log = logging.getLogger(__name__)

_NORM_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
_SPARSE_LAYERS = (*_NORM_LAYERS, nn.Embedding)


class SVDLayer(nn.Module):
    """A dense layer or LR pair run as W = U diag(S) Vh; :meth:`fold` gives plain layers back."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.pair = is_lowrank_pair(module)
        self.template = dense_equivalent(module) if self.pair else module
        weight = self.template.weight
        self._weight_trainable = weight.requires_grad
        weight.requires_grad_(False)  # U, S, Vh replace it while training
        u, s, vh = torch.linalg.svd(
            weight.detach().reshape(weight.shape[0], -1).double(), full_matrices=False
        )
        if self.pair:  # the product has rank <= r: r components reproduce it
            r = pair_rank(module)
            u, s, vh = u[:, :r], s[:r], vh[:r]
        self.u = nn.Parameter(u.to(weight.dtype))
        self.s = nn.Parameter(s.to(weight.dtype))
        self.vh = nn.Parameter(vh.to(weight.dtype))

    def weight(self) -> torch.Tensor:
        return ((self.u * self.s) @ self.vh).reshape(self.template.weight.shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return functional_call(self.template, {"weight": self.weight()}, (x,))

    @torch.no_grad()
    def fold(self) -> nn.Module:
        """The trained layer in its original structure (a dense layer or an LR pair)."""
        if self.pair:
            return build_pair(self.template, self.u, self.s, self.vh)
        self.template.weight.copy_(self.weight())
        self.template.weight.requires_grad_(self._weight_trainable)
        return self.template


class _Tap:
    """Runs ``model`` on each training batch and keeps the last (x, y, output).

    ``train`` hands ``extra_loss`` only the model, but Lai and sparsity need the batch's targets;
    the tap is the training objective (a suite-style ``loss(model, x, y)``), so it sees them
    without a second training loop, whatever the split streams from.
    """

    def __init__(self, inner: nn.Module, input_grad: bool) -> None:
        self.inner = inner  # the pipeline's named loss, computed on the tapped outputs
        self.input_grad = input_grad
        self.last: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.input_grad:
            x = x.detach().requires_grad_(True)
        out = model(x)
        self.last = (x, y, out)
        return compute_loss(self.inner, out, y)


_TapTerm = Callable[[_Tap], torch.Tensor]


def _per_sample(loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample values of the training loss (``loss_fn`` built with ``reduction='none'``)."""
    return compute_loss(loss_fn, out, y).reshape(len(y), -1).mean(dim=1)


def _layer_weights(model: nn.Module, kinds: tuple[type[nn.Module], ...]) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, kinds) and m.weight.requires_grad]


def _run(
    model: nn.Module,
    ctx: StepContext,
    step: Step,
    extra: ExtraLoss | None,
    objective: ModelLoss | None = None,
) -> None:
    train(
        model,
        ctx.splits.train,
        epochs=int(step["epochs"]),
        batch_size=ctx.suite.train.batch_size,
        optimizer=ctx.optimizer,
        lr=ctx.lr,
        loss=ctx.loss if objective is None else "default",
        default_loss=ctx.suite.default_loss if objective is None else objective,
        seed=ctx.seed,
        extra_loss=extra,
        monitor=ctx.splits.calib,
        epoch_callback=ctx.epoch_callback,
        fraction=ctx.fidelity,
    )


def _spectrum_hoyer(layers: list[SVDLayer]) -> float:
    with torch.no_grad():
        return float(torch.stack([hoyer_loss(layer.s) for layer in layers]).mean())


def _orth_hoyer(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    names = [name for name, _ in factorizable_layers(model)]
    if not names:
        log.warning("Reg(orth_hoyer): no factorizable layers; training without the term")
        _run(model, ctx, step, None)
        return model
    for name in names:
        model = replace_module(model, name, SVDLayer(model.get_submodule(name)))
    guard_fast_path(model)  # the calib monitor runs in eval mode, where the fast path would read
    layers = [model.get_submodule(name) for name in names]
    lambda_o, lambda_h = float(step["lambda_o"]), float(step["lambda_h"])

    def extra(_: nn.Module) -> torch.Tensor:
        factors = [(layer.u, layer.s, layer.vh.T) for layer in layers]
        return orth_hoyer_penalty(factors, lambda_o, lambda_h)

    before = _spectrum_hoyer(layers)
    _run(model, ctx, step, extra)
    log.info(
        "Reg(orth_hoyer): %d layers; mean Hoyer of spectra %.3f -> %.3f",
        len(layers),
        before,
        _spectrum_hoyer(layers),
    )
    for name, layer in zip(names, layers, strict=True):
        model = replace_module(model, name, layer.fold())
    guard_fast_path(model)  # plain layers again: the fast path is back
    skipped = skipped_effect(
        step,
        [
            (attention_projections(model), ATTENTION_SKIP_REASON),
            (grouped_convs(model), GROUPED_SKIP_REASON),
        ],
    )
    if skipped is not None:
        ctx.record(skipped)
    return model


def _lai_term(loss_fn: nn.Module, classification: bool, strength: float) -> _TapTerm:
    """Lai loss on the tapped batch; slopes are input-gradient norms of the target's score."""

    def term(tap: _Tap) -> torch.Tensor:
        x, y, out = tap.last
        score = out.gather(1, y.long().view(-1, 1)).sum() if classification else out.sum()
        (grad,) = torch.autograd.grad(score, x, create_graph=True)
        # the 1e-12 keeps the norm differentiable where an input gradient vanishes
        slopes = grad.flatten(1).square().sum(dim=1).add(1e-12).sqrt()
        return strength * lai_loss(_per_sample(loss_fn, out, y), slopes)

    return term


def _sparsity_term(loss_fn: nn.Module, weights: list[torch.Tensor], strength: float) -> _TapTerm:
    """Bonetta et al.'s selective decay, relevance from the tapped batch's data-loss gradient."""

    def term(tap: _Tap) -> torch.Tensor:
        _, y, out = tap.last
        data_loss = _per_sample(loss_fn, out, y).mean()
        grads = torch.autograd.grad(data_loss, weights, retain_graph=True, allow_unused=True)
        terms = [
            sparsity_loss(w, torch.zeros_like(w) if g is None else g)
            for w, g in zip(weights, grads, strict=True)
        ]
        return strength * torch.stack(terms).sum()

    return term


def _with_batch_term(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    reg, strength = str(step["reg"]), float(step["strength"])
    loss_fn = make_loss(ctx.loss, ctx.suite.default_loss)
    loss_fn.reduction = "none"
    if reg == "lai":
        if not ctx.splits.train.inputs(1).is_floating_point():
            raise ValueError("Reg(lai) needs floating-point inputs (it differentiates w.r.t. them)")
        term = _lai_term(loss_fn, ctx.suite.task == "classification", strength)
    else:
        weights = _layer_weights(model, _SPARSE_LAYERS)
        if not weights:
            raise ValueError("Reg(sparsity): the model has no Linear, Conv or Embedding weights")
        term = _sparsity_term(loss_fn, weights, strength)
    tap = _Tap(make_loss(ctx.loss, ctx.suite.default_loss), input_grad=reg == "lai")
    _run(model, ctx, step, lambda _: term(tap), tap)
    return model


def _with_norm(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    strength = float(step["strength"])
    weights = _layer_weights(model, _NORM_LAYERS)
    if not weights:
        raise ValueError("Reg(norm): the model has no Linear or Conv weights")

    def extra(_: nn.Module) -> torch.Tensor:
        return strength * torch.stack([norm_loss(w) for w in weights]).sum()

    _run(model, ctx, step, extra)
    return model


@register("Reg", reads=ALL_SETTINGS)
def regularized_step(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    """Train with the chosen regularizer; the architecture comes back unchanged."""
    reg = str(step["reg"])
    if reg == "orth_hoyer":
        return _orth_hoyer(model, step, ctx)
    if reg in ("lai", "sparsity"):
        return _with_batch_term(model, step, ctx)
    if reg == "norm":
        return _with_norm(model, step, ctx)
    raise ValueError(f"unknown regularizer {reg!r}")
