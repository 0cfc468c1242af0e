"""LR: truncated-SVD low-rank decomposition of Linear, Conv1d, Conv2d and Embedding layers.

A weight W (out x in*k*k for a conv, viewed as a matrix) becomes W ~ B A with B = U_r sqrt(S_r) and
A = sqrt(S_r) V_r^T, run as two plain torch layers in an ``nn.Sequential`` (a k x k conv to r
channels without bias, then a 1x1 conv with the original bias; Linear(in, r) then Linear(r, out);
Embedding(num, r) then Linear(r, dim)).  Plain layers keep ONNX export and torch-pruning's
dependency graph working; splitting sqrt(S) evenly keeps both factors on the same numeric scale,
which suits INT8 quantization later.  Every layer, the final classifier included, is decomposed only
where the pair is cheaper (:func:`saves_cost`); layers that would not get cheaper stay dense.

Any two-layer ``nn.Sequential`` of that shape is a composition of two linear maps, so it is
recognised as an LR pair whoever built it.  A pair is re-decomposed from the spectrum of its product
(at most its current rank r), and replaced only when the rule keeps fewer than r components; so
``LR - Reg - LR`` truncates the spectrum that Reg sparsified.  Grouped and depthwise convs, embeddings
with ``max_norm`` (a nonlinear renormalisation), subclasses (e.g. the projection inside
``nn.MultiheadAttention``, whose weight is read directly) and tied weights are skipped; attention
projections are counted in the step's ``skipped`` effect, and a ``nn.TransformerEncoderLayer``
whose feed-forward layers became pairs runs without its fused fast path (``steps.attention``).
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from petra_hw import rank_rules
from petra_hw.pipeline import Step
from petra_hw.steps.attention import (
    ATTENTION_SKIP_REASON,
    attention_projections,
    guard_fast_path,
)
from petra_hw.steps.base import StepContext, register
from petra_hw.steps.effects import StepEffect, skipped_effect

log = logging.getLogger(__name__)

_CONVS = (nn.Conv1d, nn.Conv2d)


# -- rank selection ------------------------------------------------------------------------------
def select_rank(
    singular_values: torch.Tensor, rule: str, threshold: float, multiple: int = 1
) -> int:
    """Rank kept by ``rule`` at ``threshold`` for a descending spectrum, rounded up to ``multiple``
    (the rules are defined in ``petra_hw.rank_rules``; :func:`rule_spectrum` says which spectrum
    each reads)."""
    return rank_rules.select_rank(
        singular_values.detach().double().flatten().cpu().numpy(), rule, threshold, multiple
    )


def rule_spectrum(matrix: torch.Tensor, rule: str) -> torch.Tensor:
    """The spectrum ``rule`` reads: singular values of W, or of W with its mean row removed.

    ``explained_variance`` is PCA's explained-variance ratio with each output unit's weight vector
    (a row of W) as one sample: rows are centred on the mean row before the SVD, as
    ``sklearn.decomposition.PCA`` does.  The factors themselves always come from the plain SVD.
    """
    m = matrix.detach().double()
    if rule == "explained_variance":
        m = m - m.mean(dim=0, keepdim=True)
    return torch.linalg.svdvals(m)


# -- layers as matrices ---------------------------------------------------------------------------
def _is_dense(m: nn.Module) -> bool:
    if type(m) is nn.Linear:
        return True
    if type(m) in _CONVS:
        return m.groups == 1
    return type(m) is nn.Embedding and m.max_norm is None


def _is_pointwise(conv: nn.Module) -> bool:
    return (
        all(k == 1 for k in conv.kernel_size)
        and all(s == 1 for s in conv.stride)
        and all(d == 1 for d in conv.dilation)
        and (conv.padding == "valid" or all(p == 0 for p in conv.padding))
        and conv.groups == 1
    )


def is_lowrank_pair(m: nn.Module) -> bool:
    """True for a two-layer ``nn.Sequential`` that composes two linear maps as LR builds them."""
    if type(m) is not nn.Sequential or len(m) != 2:
        return False
    a, b = m[0], m[1]
    if type(a) is nn.Linear and type(b) is nn.Linear:
        return a.bias is None and a.out_features == b.in_features
    if type(a) in _CONVS and type(b) is type(a):
        return (
            a.bias is None
            and a.groups == 1
            and _is_pointwise(b)
            and a.out_channels == b.in_channels
        )
    if type(a) is nn.Embedding and type(b) is nn.Linear:
        return a.max_norm is None and b.bias is None and a.embedding_dim == b.in_features
    return False


def _matrix(m: nn.Module) -> torch.Tensor:
    """A dense layer's weight as the matrix W of y = W x (rows: outputs)."""
    return m.weight.detach().reshape(m.weight.shape[0], -1)


def pair_rank(pair: nn.Sequential) -> int:
    """Inner rank r of an LR pair."""
    a = pair[0]
    if isinstance(a, nn.Linear):
        return a.out_features
    if isinstance(a, nn.Embedding):
        return a.embedding_dim
    return a.out_channels


def dense_equivalent(m: nn.Module) -> nn.Module:
    """A new dense layer computing the same function as the LR pair ``m``."""
    a, b = m[0], m[1]
    kw = {"device": a.weight.device, "dtype": a.weight.dtype}
    if isinstance(a, nn.Embedding):
        dense = nn.Embedding(
            a.num_embeddings,
            b.out_features,
            padding_idx=a.padding_idx,
            scale_grad_by_freq=a.scale_grad_by_freq,
            sparse=a.sparse,
            **kw,
        )
        weight = a.weight.detach() @ b.weight.detach().T
    elif isinstance(a, nn.Linear):
        dense = nn.Linear(a.in_features, b.out_features, bias=b.bias is not None, **kw)
        weight = b.weight.detach() @ a.weight.detach()
    else:
        dense = type(a)(
            a.in_channels,
            b.out_channels,
            a.kernel_size,
            stride=a.stride,
            padding=a.padding,
            dilation=a.dilation,
            bias=b.bias is not None,
            padding_mode=a.padding_mode,
            **kw,
        )
        inner = b.weight.detach().reshape(b.out_channels, -1) @ _matrix(a)
        weight = inner.reshape(dense.weight.shape)
    with torch.no_grad():
        dense.weight.copy_(weight)
        if getattr(dense, "bias", None) is not None:
            dense.bias.copy_(b.bias.detach())
    return dense


def build_pair(
    dense: nn.Module, u: torch.Tensor, s: torch.Tensor, vh: torch.Tensor
) -> nn.Sequential:
    """The LR pair for ``dense`` with W ~ U diag(S) Vh: B = U sign(S) sqrt|S|, A = sqrt|S| Vh.

    An SVD gives S >= 0, but Reg(orth_hoyer) trains S freely and may drive some negative; the sign
    goes into the left factor so B A = U diag(S) Vh still holds (clamping at 0 would drop them).
    """
    s = s.detach()
    root = s.abs().sqrt()
    left = (u.detach() * (torch.sign(s) * root)).to(dense.weight.dtype)  # out x r
    right = (root[:, None] * vh.detach()).to(dense.weight.dtype)  # r x in
    r = int(s.numel())
    kw = {"device": dense.weight.device, "dtype": dense.weight.dtype}
    has_bias = getattr(dense, "bias", None) is not None
    if isinstance(dense, nn.Embedding):
        first = nn.Embedding(
            dense.num_embeddings,
            r,
            padding_idx=dense.padding_idx,
            scale_grad_by_freq=dense.scale_grad_by_freq,
            sparse=dense.sparse,
            **kw,
        )
        second = nn.Linear(r, dense.embedding_dim, bias=False, **kw)
        weights = (left, right.T)
    elif isinstance(dense, nn.Linear):
        first = nn.Linear(dense.in_features, r, bias=False, **kw)
        second = nn.Linear(r, dense.out_features, bias=has_bias, **kw)
        weights = (right, left)
    else:
        conv = type(dense)
        first = conv(
            dense.in_channels,
            r,
            dense.kernel_size,
            stride=dense.stride,
            padding=dense.padding,
            dilation=dense.dilation,
            bias=False,
            padding_mode=dense.padding_mode,
            **kw,
        )
        second = conv(r, dense.out_channels, 1, bias=has_bias, **kw)
        weights = (right.reshape(first.weight.shape), left.reshape(second.weight.shape))
    with torch.no_grad():
        first.weight.copy_(weights[0])
        second.weight.copy_(weights[1])
        if has_bias:
            second.bias.copy_(dense.bias.detach())
    return nn.Sequential(first, second)


def decompose_module(module: nn.Module, rank: int) -> nn.Sequential:
    """Replace a dense layer (or an LR pair) by the rank-``rank`` truncated-SVD pair.

    At full rank the pair reproduces the layer's output up to floating-point error.
    """
    dense = dense_equivalent(module) if is_lowrank_pair(module) else module
    if not _is_dense(dense):
        raise TypeError(f"cannot decompose {type(module).__name__}")
    u, s, vh = torch.linalg.svd(_matrix(dense).double(), full_matrices=False)
    if not 1 <= rank <= s.numel():
        raise ValueError(f"rank {rank} outside 1..{s.numel()}")
    return build_pair(dense, u[:, :rank], s[:rank], vh[:rank])


# -- cost model ----------------------------------------------------------------------------------
def _dims(dense: nn.Module) -> tuple[int, int]:
    """(rows, columns) of the layer's weight matrix."""
    w = dense.weight
    return int(w.shape[0]), int(w[0].numel())


def saves_cost(dense: nn.Module, rank: int) -> bool:
    """Whether a rank-``rank`` pair is cheaper than the dense layer.

    Conv and Linear compare MACs per output position (dense: out*in*k*k; pair: r*(in*k*k + out)).
    An embedding lookup has no MACs, so embeddings compare parameters (num*dim vs r*(num + dim)).
    """
    rows, cols = _dims(dense)
    return rank * (rows + cols) < rows * cols


# -- the step ------------------------------------------------------------------------------------
def factorizable_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """(qualified name, module) of every dense layer or LR pair, outermost first, none nested."""
    uses: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1

    def untied(m: nn.Module) -> bool:
        return all(uses.get(id(p), 0) == 1 for p in m.parameters())

    found: list[tuple[str, nn.Module]] = []

    def visit(prefix: str, m: nn.Module) -> None:
        if (is_lowrank_pair(m) or _is_dense(m)) and untied(m):
            found.append((prefix, m))
            return
        for name, child in m.named_children():
            visit(f"{prefix}.{name}" if prefix else name, child)

    visit("", model)
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    """Put ``new`` at ``name`` and return the (possibly new) root."""
    if not name:
        return new
    model.set_submodule(name, new)
    return model


def decompose_by_rule(
    module: nn.Module, rule: str, threshold: float, multiple: int = 1
) -> nn.Sequential | None:
    """The LR pair ``rule`` gives ``module``, or None where decomposing would not pay.

    A dense layer is decomposed when the pair costs less (:func:`saves_cost`); an LR pair when the
    rule keeps fewer components than its current rank (its spectrum is cut to that rank first, so
    ``ratio`` is a fraction of the current rank).
    """
    pair = is_lowrank_pair(module)
    dense = dense_equivalent(module) if pair else module
    matrix = _matrix(dense)
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    spectrum = rule_spectrum(matrix, rule) if rule == "explained_variance" else s
    if pair:
        current = pair_rank(module)
        r = select_rank(spectrum[:current], rule, threshold, multiple)
        if r >= current:
            return None
    else:
        r = select_rank(spectrum, rule, threshold, multiple)
        if not saves_cost(dense, r):
            return None
    return build_pair(dense, u[:, :r], s[:r], vh[:r])


GROUPED_SKIP_REASON = "grouped or depthwise convs (no dense weight matrix to factorize)"


def grouped_convs(model: nn.Module) -> int:
    """Grouped and depthwise convs: LR leaves them (their weight is block-diagonal already)."""
    return sum(type(m) in _CONVS and m.groups > 1 for m in model.modules())


@register("LR")
def lowrank_step(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    """Decompose every layer whose rule-selected rank lowers its cost; leave the rest."""
    rule, threshold = str(step["rule"]), float(step["threshold"])
    layers = factorizable_layers(model)
    ranks: dict[str, int] = {}
    for name, module in layers:
        new = decompose_by_rule(module, rule, threshold, ctx.channel_multiple)
        if new is None:
            continue
        model = replace_module(model, name, new)
        ranks[name or "<root>"] = pair_rank(new)
    log.info(
        "LR(%s, %s): decomposed %d of %d layers; ranks %s",
        rule,
        threshold,
        len(ranks),
        len(layers),
        ranks,
    )
    guard_fast_path(model)
    cheap = len(layers) - len(ranks)
    why = f"not cheaper at the rank {rule}={threshold} selects"
    skipped = skipped_effect(
        step,
        [
            (cheap, why),
            (attention_projections(model), ATTENTION_SKIP_REASON),
            (grouped_convs(model), GROUPED_SKIP_REASON),
        ],
    )
    if not layers:
        ctx.record(StepEffect.no_op(step, "no Linear, Conv or Embedding layer to factorize"))
    elif not ranks:
        ctx.record(StepEffect.no_op(step, f"decomposed 0 of {len(layers)} layers: {why}"))
    elif skipped is not None:
        ctx.record(skipped)
    return model
