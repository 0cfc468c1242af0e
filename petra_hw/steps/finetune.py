"""Tr: fine-tune the whole model after a compression step, through the one training loop.

The pipeline's settings choose optimizer, learning rate and loss; batch size and weight decay are
the suite's own (the baseline was trained with them).  Early stopping watches the calib split,
never val or test.  A NaN loss raises ``petra_hw.training.TrainingError``, which the search
records as the candidate's error.
"""

from __future__ import annotations

import logging

from torch import nn

from petra_hw.pipeline import Step
from petra_hw.steps.base import ALL_SETTINGS, StepContext, register
from petra_hw.training import train

log = logging.getLogger(__name__)


def fit(model: nn.Module, epochs: int, ctx: StepContext, lr_share: float = 1.0) -> nn.Module:
    """Train ``model`` in place on the train split as every training step of a pipeline does;
    ``lr_share`` scales the pipeline's learning rate (QAT trains at a small share of it)."""
    result = train(
        model,
        ctx.splits.train,
        epochs=epochs,
        batch_size=ctx.suite.train.batch_size,
        optimizer=ctx.optimizer,
        lr=ctx.lr * lr_share,
        weight_decay=ctx.suite.train.weight_decay,
        loss=ctx.loss,
        default_loss=ctx.suite.default_loss,
        seed=ctx.seed,
        monitor=ctx.splits.calib,
        epoch_callback=ctx.epoch_callback,
        fraction=ctx.fidelity,
    )
    log.info(
        "trained %d/%d epochs in %.1f s (calib loss %s%s)",
        result.epochs_run,
        epochs,
        result.wall_s,
        f"{result.monitor_history[-1]:.4f}" if result.monitor_history else "n/a",
        ", stopped early" if result.stopped_early else "",
    )
    return model


@register("Tr", reads=ALL_SETTINGS)
def finetune_step(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    return fit(model, int(step["epochs"]), ctx)
