"""The ``Pr`` step: channel pruning through torch-pruning's dependency graph.

Structured mode physically removes output channels together with everything coupled to them
(the following layers' input channels, BatchNorm, residual additions, concatenations), so the
pruned model is a smaller dense model that every backend speeds up.  Criteria map onto
torch-pruning importances: ``l1``/``l2`` group magnitude, ``taylor`` first-order Taylor,
``hessian`` Optimal Brain Damage (diagonal Hessian ~ empirical Fisher, mean of squared per-sample
gradients), ``bn_scale`` network slimming (BN gammas after a short L1-on-gamma training pass) and
``lamp``.  Data-driven criteria read the *train* split only.  The model's output layer is never
pruned, so the output keeps its size.  Attention is pruned head-consistently: torch-pruning is
given every ``nn.MultiheadAttention``'s ``num_heads``; as that module's inner width is the model
width, its heads stay whole, the feed-forward channels of ``nn.TransformerEncoderLayer`` are
pruned, and the effect says so (``HEADS_KEPT``).

``structured=False`` zeroes individual weights with ``torch.nn.utils.prune`` masks baked into the
weights.  Shapes do not change: this shrinks an artifact only with sparse storage or compression
and does not speed up dense kernels.

The step prunes the model it is given in place and returns it.
"""

from __future__ import annotations

import logging

import torch
import torch_pruning as tp
from torch import nn
from torch.nn.utils import prune

from petra_hw.pipeline import Step
from petra_hw.steps.base import ALL_SETTINGS, StepContext, register
from petra_hw.steps.effects import StepEffect
from petra_hw.suite import Split
from petra_hw.training import batch_loss, make_loss, train

log = logging.getLogger(__name__)

PRUNABLE = (nn.modules.conv._ConvNd, nn.Linear)
# Why structured pruning leaves attention heads: nn.MultiheadAttention's q/k/v width is its
# embed_dim, the model width itself, so dropping a head would narrow the residual stream of every
# block; torch-pruning, told the heads (num_heads), keeps them whole and prunes FFN channels.
HEADS_KEPT = (
    "nn.MultiheadAttention blocks keep all heads: their inner width is the model width, so a "
    "head cannot go without narrowing the residual stream; FFN channels are pruned"
)
GRAD_SAMPLES = 128  # train samples whose gradients feed the taylor criterion
GRAD_BATCH_SIZE = 32
HESSIAN_SAMPLES = 64  # per-sample gradients averaged into the diagonal Fisher (OBD)
SLIMMING_FRACTION = 0.25  # share of an epoch for the bn_scale sparsity pass
SLIMMING_L1 = 1e-4  # weight of L1(BN gammas), Liu et al. 2017's value


def output_layers(model: nn.Module, example: torch.Tensor) -> list[nn.Module]:
    """Conv/Linear layers whose output *is* the model's output (else the last one run).

    They are excluded from pruning so the model keeps its number of classes / outputs.
    """
    ran: list[tuple[nn.Module, object]] = []
    hooks = [
        m.register_forward_hook(lambda mod, _inp, out: ran.append((mod, out)))
        for m in model.modules()
        if isinstance(m, PRUNABLE)
    ]
    try:
        with torch.no_grad():
            result = model(example)
    finally:
        for h in hooks:
            h.remove()
    outputs = result.values() if isinstance(result, dict) else result
    outputs = list(outputs) if isinstance(outputs, (tuple, list)) else [outputs]
    hits = [m for m, out in ran if any(out is o for o in outputs)]
    if hits:
        return hits
    return [ran[-1][0]] if ran else []


def make_importance(criterion: str) -> tp.importance.Importance:
    """The torch-pruning importance class behind each criterion name."""
    if criterion == "l1":
        return tp.importance.MagnitudeImportance(p=1)
    if criterion == "l2":
        return tp.importance.MagnitudeImportance(p=2)
    if criterion == "taylor":
        return tp.importance.TaylorImportance()
    if criterion == "hessian":
        return tp.importance.HessianImportance()
    if criterion == "bn_scale":
        return tp.importance.BNScaleImportance()
    if criterion == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise ValueError(f"unknown pruning criterion {criterion!r}")


def _train_sample(ctx: StepContext, n: int) -> Split:
    """A seeded random subset of the train split (never val/test)."""
    data = ctx.splits.train
    gen = torch.Generator().manual_seed(ctx.seed)
    return data.subset(torch.randperm(len(data), generator=gen)[: min(n, len(data))])


def _loss_fn(ctx: StepContext) -> nn.Module:
    return make_loss(ctx.loss, ctx.suite.default_loss)


def accumulate_taylor_grads(model: nn.Module, ctx: StepContext) -> None:
    """Leave the mean loss gradient over ``GRAD_SAMPLES`` train samples in ``param.grad``."""
    data, loss_fn = _train_sample(ctx, GRAD_SAMPLES), _loss_fn(ctx)
    n_batches = -(-len(data) // GRAD_BATCH_SIZE)
    model.eval()  # BN running statistics must not move while we only measure
    model.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for x, y in data.batches(GRAD_BATCH_SIZE):
            (batch_loss(loss_fn, model, x, y) / n_batches).backward()


def accumulate_fisher_diagonal(model: nn.Module, ctx: StepContext) -> None:
    """Leave the diagonal empirical Fisher (mean squared per-sample gradient) in ``param.grad``.

    ``HessianImportance`` reads ``grad`` as the Hessian diagonal when its own accumulator is empty;
    we fill it ourselves because 1.6.1's ``accumulate_grad`` keeps only the last sample.
    """
    data, loss_fn = _train_sample(ctx, HESSIAN_SAMPLES), _loss_fn(ctx)
    params = [p for p in model.parameters() if p.requires_grad]
    fisher = [torch.zeros_like(p) for p in params]
    model.eval()
    with torch.enable_grad():
        for x, y in data.batches(1):
            model.zero_grad(set_to_none=True)
            batch_loss(loss_fn, model, x, y).backward()
            for f, p in zip(fisher, params, strict=True):
                if p.grad is not None:
                    f += p.grad.pow(2)
    for f, p in zip(fisher, params, strict=True):
        p.grad = f / max(len(data), 1)


def slimming_pass(model: nn.Module, ctx: StepContext) -> None:
    """Network slimming's sparsity training: L1 on BN gammas for a fraction of an epoch.

    Goes through the one training loop with the pipeline's optimizer, lr and loss.
    """
    gammas = [
        m.weight
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine
    ]
    if not gammas:
        log.info("bn_scale: model has no affine BatchNorm; no channel has a score")
        return
    data = _train_sample(ctx, max(2, int(len(ctx.splits.train) * SLIMMING_FRACTION)))
    result = train(
        model,
        data,
        epochs=1,
        optimizer=ctx.optimizer,
        lr=ctx.lr,
        loss=ctx.loss,
        default_loss=ctx.suite.default_loss,
        seed=ctx.seed,
        extra_loss=lambda _m: SLIMMING_L1 * sum(g.abs().sum() for g in gammas),
    )
    log.info("bn_scale sparsity pass: %d samples, final loss %.4f", len(data), result.final_loss)


# The settings each criterion's data pass reads (gradient criteria the loss, bn_scale trains);
# magnitude criteria and unstructured pruning read none.
CRITERION_READS: dict[str, frozenset[str]] = {
    "taylor": frozenset({"loss"}),
    "hessian": frozenset({"loss"}),
    "bn_scale": ALL_SETTINGS,
}


def pruning_reads(step: Step) -> frozenset[str]:
    if not step["structured"] or float(step["ratio"]) <= 0.0:
        return frozenset()
    return CRITERION_READS.get(str(step["criterion"]), frozenset())


def prepare_criterion(model: nn.Module, criterion: str, ctx: StepContext) -> None:
    """Run the data pass a criterion needs (gradients, Fisher, or slimming) on the train split."""
    if criterion == "taylor":
        accumulate_taylor_grads(model, ctx)
    elif criterion == "hessian":
        accumulate_fisher_diagonal(model, ctx)
    elif criterion == "bn_scale":
        slimming_pass(model, ctx)


def build_pruner(
    model: nn.Module, criterion: str, ratio: float, scope: str, ctx: StepContext
) -> tp.pruner.BasePruner:
    """Run the criterion's data pass, then trace ``model`` into a pruner that spares the output."""
    model.eval()
    example = ctx.suite.example_input(1)
    ignored = output_layers(model, example)
    prepare_criterion(model, criterion, ctx)
    return tp.pruner.BasePruner(
        model,
        example,
        importance=make_importance(criterion),
        global_pruning=scope == "global",
        pruning_ratio=ratio,
        ignored_layers=ignored,
        round_to=ctx.channel_multiple if ctx.channel_multiple > 1 else None,
        # head-consistent: torch-pruning then keeps each attention block's heads whole
        num_heads=attention_heads(model),
    )


def attention_heads(model: nn.Module) -> dict[nn.Module, int]:
    """Each ``nn.MultiheadAttention`` and its number of heads, for torch-pruning's ``num_heads``."""
    return {m: m.num_heads for m in model.modules() if isinstance(m, nn.MultiheadAttention)}


@torch.enable_grad()  # torch-pruning traces the graph through autograd
def channel_importance(
    model: nn.Module, criterion: str, ctx: StepContext
) -> dict[str, torch.Tensor]:
    """Per-channel scores of every prunable group, keyed by the group's root layer name.

    These are the scores the pruner ranks; groups without one (e.g. no BatchNorm under
    ``bn_scale``) are left out.
    """
    pruner = build_pruner(model, criterion, 0.0, "uniform", ctx)
    names = {m: n for n, m in model.named_modules()}
    scores: dict[str, torch.Tensor] = {}
    groups = pruner.DG.get_all_groups(
        ignored_layers=pruner.ignored_layers, root_module_types=pruner.root_module_types
    )
    for group in groups:
        imp = pruner.estimate_importance(group)
        if imp is not None:
            scores[names[group[0].dep.target.module]] = imp
    model.zero_grad(set_to_none=True)
    return scores


@torch.enable_grad()  # torch-pruning traces the graph through autograd
def prune_structured(
    model: nn.Module, criterion: str, ratio: float, scope: str, ctx: StepContext
) -> nn.Module:
    """Remove ``ratio`` of the channels (per group, or ranked globally) by ``criterion``."""
    build_pruner(model, criterion, ratio, scope, ctx).step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def lamp_scores(weight: torch.Tensor) -> torch.Tensor:
    """LAMP (Lee et al. 2021): w^2 over the sum of w^2 of the weights at least as large."""
    sq = weight.detach().flatten().pow(2)
    ordered, idx = sq.sort()
    tail = ordered.flip(0).cumsum(0).flip(0)
    out = torch.empty_like(sq)
    out[idx] = ordered / tail.clamp_min(1e-12)
    return out.view_as(weight)


def prune_unstructured(
    model: nn.Module, criterion: str, ratio: float, scope: str, ignored: list[nn.Module]
) -> nn.Module:
    """Zero the ``ratio`` smallest weights (magnitude; LAMP scores under ``lamp``), shapes kept."""
    if criterion not in ("l1", "l2", "lamp"):
        log.info("unstructured pruning ranks weights by magnitude; %r is for channels", criterion)
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE) and m not in ignored]
    targets = [(m, "weight") for m in layers]
    if scope == "global":
        scores = {t: lamp_scores(t[0].weight) for t in targets} if criterion == "lamp" else None
        prune.global_unstructured(
            targets, pruning_method=prune.L1Unstructured, importance_scores=scores, amount=ratio
        )
    else:  # within one layer LAMP ranks like magnitude
        for m, name in targets:
            prune.l1_unstructured(m, name, amount=ratio)
    for m, name in targets:
        prune.remove(m, name)
    zeros = sum(int((m.weight == 0).sum()) for m in layers)
    total = sum(m.weight.numel() for m in layers)
    log.info(
        "unstructured pruning: %.1f%% of prunable weights are zero, shapes unchanged; smaller only "
        "with sparse storage or compression, no speed-up on dense kernels",
        100.0 * zeros / max(total, 1),
    )
    return model


def has_batchnorm(model: nn.Module) -> bool:
    """Whether ``model`` has an affine BatchNorm (what ``bn_scale`` scores channels by)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.affine for m in model.modules())


def _effect(
    step: Step,
    model: nn.Module,
    before: list[tuple[int, int]],
    after: list[tuple[int, int]],
) -> StepEffect | None:
    """What pruning changed, from each prunable layer's (output channels, zero weights) before
    and after (structured pruning removes output channels, a layer's inputs follow another's
    outputs; unstructured pruning adds zeros); None: every layer changed."""
    index = 0 if step["structured"] else 1
    untouched = sum(b[index] == a[index] for b, a in zip(before, after, strict=True))
    if not before:
        return StepEffect.no_op(step, "no prunable Conv or Linear layer besides the output")
    if untouched == 0:
        return None
    if untouched < len(before):
        why = "no output channel removed" if index == 0 else "no weight zeroed"
        blocks = len(attention_heads(model))
        if index == 0 and blocks:
            why += f" ({blocks} {HEADS_KEPT})"
        return StepEffect(str(step), skipped=untouched, why_skipped=why)
    if index == 1:
        return StepEffect.no_op(step, "zeroed no weight")
    if step["criterion"] == "bn_scale" and not has_batchnorm(model):
        return StepEffect.no_op(
            step, "criterion bn_scale scores channels by BatchNorm scales; the model has none"
        )
    return StepEffect.no_op(step, f"removed no channel of {len(before)} prunable layers")


@register("Pr", reads=pruning_reads)
def pruning_step(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    """``Pr(criterion, ratio, scope, structured)``: prune ``model`` in place and log its cost."""
    criterion, scope = str(step["criterion"]), str(step["scope"])
    ratio = float(step["ratio"])
    model.eval()
    example = ctx.suite.example_input(1)
    if ratio <= 0.0:
        log.info("Pr: ratio 0, nothing pruned")
        ctx.record(StepEffect.no_op(step, "ratio 0"))
        return model
    macs0, params0 = tp.utils.count_ops_and_params(model, example)
    outputs = output_layers(model, example)
    layers = [m for m in model.modules() if isinstance(m, PRUNABLE) and m not in outputs]
    before = [(m.weight.shape[0], int((m.weight == 0).sum())) for m in layers]
    if step["structured"]:
        prune_structured(model, criterion, ratio, scope, ctx)
    else:
        prune_unstructured(model, criterion, ratio, scope, outputs)
    after = [(m.weight.shape[0], int((m.weight == 0).sum())) for m in layers]
    effect = _effect(step, model, before, after)
    if effect is not None:
        ctx.record(effect)
    macs1, params1 = tp.utils.count_ops_and_params(model, example)
    log.info(
        "Pr(%s, ratio=%.2f, %s, %s): params %d -> %d (%.1f%%), MACs %d -> %d (%.1f%%)",
        criterion,
        ratio,
        scope,
        "structured" if step["structured"] else "unstructured",
        params0,
        params1,
        100.0 * params1 / max(params0, 1),
        macs0,
        macs1,
        100.0 * macs1 / max(macs0, 1),
    )
    return model
