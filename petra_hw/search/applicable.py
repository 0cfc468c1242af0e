"""Fit a search space to the suite's model: drop the step kinds and choices that cannot change it.

A new run inspects the model's structure once (no data, no training) before it journals its
space, so the search never spends evaluations on steps that would be no-ops for every candidate:
LR without a Linear/Conv/Embedding layer that a low-rank pair could make cheaper, Pr without a
prunable layer besides the output, Pr's ``bn_scale`` criterion without BatchNorm, Reg's
regularizers without the layers they act on, and Pr's unstructured masks when no backend of the
device profits from zeroed weights (``Backend.sparse_weights``).  Each drop is logged with its
reason.  What only some
candidates make a no-op (an LR threshold that keeps the full rank) is caught per candidate when its
steps run (``petra_hw.steps.effects``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from petra_hw.errors import UserError
from petra_hw.profiles import DeviceProfile
from petra_hw.search.space import ParamRange, SearchSpace
from petra_hw.steps.lowrank import factorizable_layers, is_lowrank_pair, pair_rank, saves_cost
from petra_hw.steps.pruning import PRUNABLE, has_batchnorm, output_layers

log = logging.getLogger(__name__)

_NORM_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass(frozen=True)
class ModelTraits:
    """What the space's kinds need from a model, read once from its structure."""

    factorizable: int  # layers LR could factorize
    cheaper_factorizable: int  # ... of which a low-rank pair at the smallest rank is cheaper
    prunable: int  # Conv/Linear layers besides the output layer(s)
    batchnorm: bool  # affine BatchNorm, which bn_scale scores channels by
    norm_layers: int  # Linear/Conv weights (Reg norm; sparsity also counts embeddings)
    embeddings: int

    @staticmethod
    def of(model: nn.Module, example: torch.Tensor, channel_multiple: int = 1) -> ModelTraits:
        model = model.eval()
        layers = [m for _, m in factorizable_layers(model)]
        smallest = max(1, int(channel_multiple))
        cheaper = [
            m
            for m in layers
            if (pair_rank(m) > smallest if is_lowrank_pair(m) else saves_cost(m, smallest))
        ]
        outputs = output_layers(model, example)
        return ModelTraits(
            factorizable=len(layers),
            cheaper_factorizable=len(cheaper),
            prunable=sum(isinstance(m, PRUNABLE) and m not in outputs for m in model.modules()),
            batchnorm=has_batchnorm(model),
            norm_layers=sum(isinstance(m, _NORM_LAYERS) for m in model.modules()),
            embeddings=sum(isinstance(m, nn.Embedding) for m in model.modules()),
        )


def inapplicable(traits: ModelTraits) -> tuple[dict[str, str], dict[tuple[str, str, str], str]]:
    """(kind -> why it cannot change the model, (kind, parameter, choice) -> why not)."""
    kinds: dict[str, str] = {}
    if traits.factorizable == 0:
        kinds["LR"] = "no Linear, Conv or Embedding layer to factorize"
    elif traits.cheaper_factorizable == 0:
        kinds["LR"] = (
            f"none of its {traits.factorizable} factorizable layers gets cheaper as a low-rank "
            "pair, even at the smallest rank"
        )
    if traits.prunable == 0:
        kinds["Pr"] = "no prunable Conv or Linear layer besides the output"
    choices: dict[tuple[str, str, str], str] = {}
    if not traits.batchnorm:
        choices["Pr", "criterion", "bn_scale"] = (
            "bn_scale scores channels by BatchNorm scales; the model has none"
        )
    if traits.factorizable == 0:
        choices["Reg", "reg", "orth_hoyer"] = (
            "orth_hoyer trains factorizable layers; the model has none"
        )
    if traits.norm_layers == 0:
        choices["Reg", "reg", "norm"] = "norm acts on Linear and Conv weights; the model has none"
        if traits.embeddings == 0:
            choices["Reg", "reg", "sparsity"] = (
                "sparsity acts on Linear, Conv, Embedding weights; the model has none"
            )
    return kinds, choices


def dense_backends(profile: DeviceProfile) -> tuple[str, ...]:
    """The profile's backends when none profits from zeroed weights (then unstructured pruning
    can only cost quality), else ()."""
    from petra_hw.backend import get_backend

    names = tuple(profile.backends)
    return () if any(get_backend(n).sparse_weights for n in names) else names


def fit_space(
    space: SearchSpace,
    model: nn.Module,
    example: torch.Tensor,
    channel_multiple: int = 1,
    dense_backends: tuple[str, ...] = (),
) -> SearchSpace:
    """``space`` without what cannot change ``model`` (or, for ``dense_backends``, the profile's
    backends when none profits from zeroed weights, its measured objectives); a UserError when
    nothing is left."""
    dropped_kinds, dropped_choices = inapplicable(ModelTraits.of(model, example, channel_multiple))
    if dense_backends:
        dropped_choices["Pr", "structured", False] = (
            f"unstructured masks save no time or bytes on {', '.join(dense_backends)}"
        )
    ranges = dict(space.ranges)
    for (kind, name, choice), why in dropped_choices.items():
        key = f"{kind}.{name}"
        r = ranges.get(key)
        if kind not in space.kinds or r is None or choice not in r.choices:
            continue
        left = tuple(c for c in r.choices if c != choice)
        log.info("search space: %s=%s dropped: %s", key, choice, why)
        if left:
            ranges[key] = ParamRange(r.type, choices=left)
        else:
            dropped_kinds.setdefault(kind, f"its only {name} {choice!r} cannot apply ({why})")
    kinds = []
    for kind in space.kinds:
        if kind in dropped_kinds:
            log.info("search space: %s dropped: %s", kind, dropped_kinds[kind])
        else:
            kinds.append(kind)
    if not kinds:
        reasons = "; ".join(f"{k}: {why}" for k, why in dropped_kinds.items())
        raise UserError(f"no step kind of the search space can change this model ({reasons})")
    ranges = {k: r for k, r in ranges.items() if "." not in k or k.partition(".")[0] in kinds}
    return SearchSpace(tuple(kinds), space.max_len, space.min_len, ranges)
