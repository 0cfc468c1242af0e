"""The one training loop: baseline training, Tr, Reg and QAT all go through ``train``.

Early stopping monitors a held-out slice of *train* (or the calib split), never val or test, so the
split that judges a candidate is never fitted on.  A NaN or infinite loss ends training with
``TrainingError``, which the evaluator records as the candidate's error.  A suite may bring its
own objective (``Suite.loss_fn``, e.g. CoLES's contrastive loss); it then replaces the named losses.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from petra_hw.suite import Augment, ModelLoss, Split

log = logging.getLogger(__name__)

ExtraLoss = Callable[[nn.Module], torch.Tensor]


class TrainingError(RuntimeError):
    """Training diverged (NaN/inf loss) or was cut; the message says which and when."""


@dataclass(frozen=True)
class TrainResult:
    epochs_run: int
    final_loss: float
    monitor_history: tuple[float, ...]
    stopped_early: bool
    wall_s: float


class SuiteLoss(nn.Module):
    """A suite's own objective (``Suite.loss_fn``): it needs the model and the batch, not outputs.

    CoLES, for one, runs the model on random sub-sequences of each client's history.
    """

    def __init__(self, fn: ModelLoss) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.fn(model, x, y)


def make_loss(name: str, default: str | ModelLoss) -> nn.Module:
    """Map a pipeline's loss setting to a torch loss; 'default' is the suite's own."""
    if not isinstance(default, str):
        if name != "default":
            raise ValueError(f"loss {name!r}: this suite trains with its own objective ('default')")
        return SuiteLoss(default)
    name = default if name == "default" else name
    losses: dict[str, Callable[[], nn.Module]] = {
        "cross_entropy": nn.CrossEntropyLoss,
        "label_smoothing": lambda: nn.CrossEntropyLoss(label_smoothing=0.1),
        "mse": nn.MSELoss,
        "huber": nn.HuberLoss,
    }
    if name not in losses:
        raise ValueError(f"unknown loss {name!r}")
    return losses[name]()


def make_optimizer(
    name: str, params, lr: float, weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(
            params, lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True
        )
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay or 1e-2)
    raise ValueError(f"unknown optimizer {name!r}")


def compute_loss(loss_fn: nn.Module, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The loss exactly as training computes it (class targets cast to long, regression reshaped)."""
    if isinstance(loss_fn, SuiteLoss):
        raise TypeError("the suite's own objective needs the model and the batch: use batch_loss")
    if isinstance(loss_fn, nn.CrossEntropyLoss):
        return loss_fn(out, y.long())
    return loss_fn(out.reshape(y.shape), y.float())


def batch_loss(
    loss_fn: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor
) -> torch.Tensor:
    """One batch's training loss: the suite's own objective, or ``compute_loss`` on ``model(x)``."""
    if isinstance(loss_fn, SuiteLoss):
        return loss_fn(model, x, y)
    return compute_loss(loss_fn, model(x), y)


@torch.no_grad()
def evaluate_loss(
    model: nn.Module, split: Split, loss_fn: nn.Module, batch_size: int | None = None
) -> float:
    """Mean loss over ``split`` (batches of ``split.eval_batch_size()`` unless given)."""
    model.eval()
    total, n = 0.0, 0
    for x, y in split.batches(batch_size or split.eval_batch_size()):
        total += float(batch_loss(loss_fn, model, x, y)) * len(x)
        n += len(x)
    return total / max(n, 1)


def train(
    model: nn.Module,
    data: Split,
    *,
    epochs: int,
    batch_size: int = 64,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    loss: str = "default",
    default_loss: str | ModelLoss = "cross_entropy",
    seed: int = 0,
    extra_loss: ExtraLoss | None = None,
    monitor: Split | None = None,
    patience: int | None = 3,
    schedule: str = "cosine",
    epoch_callback: Callable[[int, float], None] | None = None,
    augment: Augment | None = None,
    fraction: float = 1.0,
) -> TrainResult:
    """Train ``model`` in place on ``data``.

    ``extra_loss(model)`` adds a regularizer (Reg); ``monitor`` is the early-stopping split (a
    slice of train or calib); ``epoch_callback(epoch, monitor_loss)`` may raise ``TrainingError``
    to cut a hopeless candidate after its first epoch; ``augment(x, generator)`` transforms each
    training batch (the suite's baseline augmentation; seeded by ``seed`` like the order);
    ``patience=None`` trains the whole schedule and keeps the final weights (the monitor is
    still reported): a cosine schedule's low-rate tail is where a converged model gains most.
    ``fraction`` < 1 runs each epoch over only that share of its shuffled batches (a reduced
    fidelity of multi-fidelity search: the schedule and the epoch-1 cut keep their meaning).
    """
    import time

    start = time.perf_counter()
    gen = torch.Generator().manual_seed(seed)
    loss_fn = make_loss(loss, default_loss)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(optimizer, params, lr, weight_decay)
    steps_per_epoch = max(1, math.ceil(len(data) * min(1.0, fraction) / batch_size))
    seen = min(len(data), steps_per_epoch * batch_size)  # samples each epoch trains on
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
        if schedule == "cosine"
        else None
    )
    history: list[float] = []
    best, bad, best_state = math.inf, 0, None
    last = math.nan
    epoch = 0
    for epoch in range(1, epochs + 1):
        model.train()
        order = torch.randperm(len(data), generator=gen)[:seen]
        for step, (x, y) in enumerate(data.batches(batch_size, order)):
            if len(x) < 2 and len(data) > 1:
                continue  # BatchNorm cannot train on a batch of one
            if augment is not None:
                x = augment(x, gen)
            value = batch_loss(loss_fn, model, x, y)
            if extra_loss is not None:
                value = value + extra_loss(model)
            if not torch.isfinite(value):
                raise TrainingError(f"non-finite loss at epoch {epoch}, step {step}")
            opt.zero_grad(set_to_none=True)
            value.backward()
            opt.step()
            if sched is not None:
                sched.step()
            last = float(value.detach())
        if monitor is not None and len(monitor) > 0:
            m = evaluate_loss(model, monitor, loss_fn)
            if not np.isfinite(m):
                raise TrainingError(f"non-finite monitor loss at epoch {epoch}")
            history.append(m)
            if epoch_callback is not None:
                epoch_callback(epoch, m)
            if patience is None:
                continue
            if m < best - 1e-6:
                best, bad = m, 0
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            else:
                bad += 1
                if bad >= patience:
                    log.info("early stop at epoch %d (monitor loss %.4f)", epoch, m)
                    break
    stopped = epoch < epochs
    if best_state is not None and history and history[-1] > best:
        model.load_state_dict(best_state)
    model.eval()
    return TrainResult(epoch, last, tuple(history), stopped, time.perf_counter() - start)
