"""What the steps need to know about torch's attention blocks (``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer``).

``nn.TransformerEncoderLayer`` has an inference *fast path* (eval mode, no grad): one fused kernel,
``torch._transformer_encoder_layer_fwd``, fed with ``linear1.weight``, ``linear1.bias``,
``self_attn.out_proj.weight`` ... read directly.  A step that replaces ``linear1`` by an LR pair
(``nn.Sequential``) or by Reg's ``SVDLayer`` breaks it (``AttributeError: 'Sequential' object has
no attribute 'weight'``), and a two-factor layer cannot be fed to a kernel that takes one weight.
:func:`guard_fast_path` therefore turns the fast path off on exactly the layers whose feed-forward
or attention projections are no longer plain ``nn.Linear``: it clears ``activation_relu_or_gelu``,
the flag the layer itself consults (its slow path calls ``self.activation``, which is unchanged),
and ``use_nested_tensor`` on an encoder holding such a layer.  Unchanged layers keep their fast
path.  The guard is a function of the structure alone, so a model rebuilt from the prefix cache
(``petra_hw.serialize``) gets it again.

``nn.MultiheadAttention`` reads ``in_proj_weight`` (a bare parameter) and ``out_proj.weight``
directly in ``F.multi_head_attention_forward``; LR and Reg leave those projections dense and say
so (:func:`attention_projections`).
"""

from __future__ import annotations

import logging

import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

ATTENTION_SKIP_REASON = (
    "attention projections of nn.MultiheadAttention, whose weights it reads directly"
)


def attention_projections(model: nn.Module) -> int:
    """How many projections (packed q/k/v input, output) the model's ``nn.MultiheadAttention``
    blocks hold: the Linear-like layers that LR and Reg cannot factorize."""
    return sum(2 for m in model.modules() if isinstance(m, nn.MultiheadAttention))


def _fast_path_intact(layer: nn.TransformerEncoderLayer) -> bool:
    """Whether every tensor the fused kernel reads is still where it reads it."""
    plain = all(type(layer.get_submodule(n)) is nn.Linear for n in ("linear1", "linear2"))
    attn = layer.self_attn
    return (
        plain
        and isinstance(attn, nn.MultiheadAttention)
        and isinstance(getattr(attn.out_proj, "weight", None), nn.Parameter)
        and getattr(attn, "in_proj_weight", None) is not None
    )


def _activation_flag(layer: nn.TransformerEncoderLayer) -> int:
    """The flag torch's constructor sets: 1 relu, 2 gelu, 0 other (no fast path)."""
    act = layer.activation
    if act is F.relu or isinstance(act, nn.ReLU):
        return 1
    if act is F.gelu or isinstance(act, nn.GELU):
        return 2
    return 0


def guard_fast_path(model: nn.Module) -> int:
    """Turn off the encoder fast path of every ``nn.TransformerEncoderLayer`` whose projections a
    step changed, and give it back to a layer whose plain ``nn.Linear`` projections are back (Reg
    folds its factors); returns how many layers run the slow (module-by-module) path."""
    guarded = 0
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoderLayer):
            intact = _fast_path_intact(m)
            m.activation_relu_or_gelu = _activation_flag(m) if intact else 0
            guarded += not intact
    for m in model.modules():
        if isinstance(m, nn.TransformerEncoder) and any(
            isinstance(layer, nn.TransformerEncoderLayer) and not _fast_path_intact(layer)
            for layer in m.layers
        ):
            m.use_nested_tensor = False
    if guarded:
        log.info("fast path off on %d TransformerEncoderLayer(s) with changed projections", guarded)
    return guarded
