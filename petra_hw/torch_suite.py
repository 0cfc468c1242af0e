"""``Suite.from_torch``: a suite from a trained model and torch datasets, made in Python.

The user's model is the baseline as it is (``Suite.pretrained``: nothing is trained or cached for
it).  Each split is a ``torch.utils.data.Dataset`` or ``DataLoader`` of ``(input, target)``
samples.  The splits are read once, in a fixed order, into the tensors the rest of petra-hw reads
today (``Split``); the training loop shuffles them itself, seeded.  Streaming splits are a later
change of ``Split``; ``from_torch`` is the API that keeps working then.

What can be inferred is, and what is ambiguous must be said: the task follows from a named metric
(``accuracy``: classification, ``rmse``: regression) or, for a callable metric, from the targets
and the model's outputs; a callable metric needs ``higher_is_better``.  Every refusal is one
``UserError`` line.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from petra_hw.errors import UserError
from petra_hw.suite import (
    ACCURACY,
    RMSE,
    Metric,
    ModelLoss,
    Split,
    Splits,
    Suite,
    Task,
    TrainConfig,
)
from petra_hw.suite_ref import capture_origin

NAMED_METRICS = {"accuracy": ("classification", ACCURACY), "rmse": ("regression", RMSE)}
TASKS = ("classification", "regression", "embedding")
READ_BATCH = 256  # samples per batch while reading a split into memory
CALIB_SAMPLES = 512  # calibration samples drawn from train when no calib split is given


def _loader(name: str, data: Any):
    """A fixed-order loader over ``data``: a map-style dataset (also one behind a DataLoader,
    whose collate_fn is kept) is read in index order; an iterable dataset in its own order."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset) or data.batch_size is None:
            return data
        return DataLoader(
            data.dataset, batch_size=data.batch_size, shuffle=False, collate_fn=data.collate_fn
        )
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=READ_BATCH, shuffle=False)
    raise UserError(
        f"split '{name}' must be a torch Dataset or DataLoader, not {type(data).__name__}"
    )


def read_split(name: str, data: Any) -> Split:
    """All ``(input, target)`` samples of one split as CPU tensors, in a fixed order."""
    xs, ys = [], []
    try:
        for batch in _loader(name, data):
            if not isinstance(batch, (tuple, list)) or len(batch) != 2:
                raise UserError(
                    f"split '{name}' must yield (input, target) pairs, got {type(batch).__name__}"
                    + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
                )
            x, y = (torch.as_tensor(v) for v in batch)
            xs.append(x.detach().cpu())
            ys.append(y.detach().cpu())
    except UserError:
        raise
    except Exception as exc:  # the user's dataset code: one line
        raise UserError(f"reading split '{name}' raised {type(exc).__name__}: {exc}") from None
    if not xs:
        raise UserError(f"split '{name}' is empty")
    x, y = torch.cat(xs), torch.cat(ys)
    if not x.is_floating_point():
        raise UserError(
            f"split '{name}': inputs are {x.dtype}; petra-hw compiles models with one float input"
        )
    return Split(x.float(), y)


def _calib_from_train(train: Split) -> Split:
    """A seeded sample of train (all classes, not the first rows of a sorted dataset)."""
    n = min(len(train), CALIB_SAMPLES)
    idx = np.sort(np.random.default_rng(0).permutation(len(train))[:n])
    return Split(train.x[idx], train.y[idx], idx)


def _metric(metric: str | Metric | Callable, higher_is_better: bool | None) -> Metric:
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in NAMED_METRICS:
            raise UserError(
                f"unknown metric '{metric}' (named: {', '.join(NAMED_METRICS)}; or pass a "
                "callable metric(outputs, targets) -> float with higher_is_better)"
            )
        return NAMED_METRICS[metric][1]
    if not callable(metric):
        raise UserError(f"metric must be a name or a callable, not {type(metric).__name__}")
    if higher_is_better is None:
        raise UserError("a callable metric needs higher_is_better=True or False")
    name = getattr(metric, "__name__", "metric")
    return Metric("metric" if name == "<lambda>" else name, bool(higher_is_better), metric)


def _task(
    task: str | None, metric: str | Metric | Callable, y: torch.Tensor, out: torch.Tensor
) -> Task:
    """The task given, else the one a named metric implies, else the one targets and outputs
    leave no doubt about."""
    if task is not None:
        if task not in TASKS:
            raise UserError(f"unknown task '{task}' (choose {', '.join(TASKS)})")
        return task  # type: ignore[return-value]
    if isinstance(metric, str) and metric in NAMED_METRICS:
        return NAMED_METRICS[metric][0]  # type: ignore[return-value]
    integer = not y.is_floating_point() and y.dim() == 1
    if integer and out.dim() == 2 and out.shape[1] > 1 and int(y.max()) < out.shape[1]:
        return "classification"
    if y.is_floating_point() and out[0].numel() == y[0].numel():
        return "regression"
    raise UserError(
        f"cannot tell the task from targets of dtype {y.dtype} and outputs of shape "
        f"{tuple(out.shape)}: pass task='classification', 'regression' or 'embedding'"
    )


def _check(task: str, y: torch.Tensor, out: torch.Tensor, loss: ModelLoss | None) -> None:
    if task == "classification":
        if y.is_floating_point() or y.dim() != 1:
            raise UserError("classification needs integer class targets of shape (N,)")
        if out.dim() != 2 or int(y.max()) >= out.shape[1] or int(y.min()) < 0:
            raise UserError(
                f"classification needs outputs (N, classes) covering targets 0..{int(y.max())}; "
                f"the model outputs {tuple(out.shape)}"
            )
    if task == "embedding" and loss is None:
        raise UserError("task 'embedding' needs loss=fn(model, x, y) -> scalar tensor")


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "model"


def from_torch(
    model: nn.Module,
    *,
    train: Any,
    val: Any,
    test: Any,
    calib: Any = None,
    metric: str | Metric | Callable[[np.ndarray, np.ndarray], float] = "accuracy",
    higher_is_better: bool | None = None,
    example_input: torch.Tensor | None = None,
    task: str | None = None,
    loss: ModelLoss | None = None,
    name: str | None = None,
    space: dict[str, Any] | None = None,
) -> Suite:
    """A suite whose baseline is ``model`` as trained, with splits read from torch data.

    ``calib`` defaults to a seeded sample of ``train`` (at most 512).  ``metric`` is
    ``"accuracy"``, ``"rmse"``, a ``Metric`` or ``fn(outputs, targets) -> float`` on numpy arrays
    (with ``higher_is_better``).  ``loss(model, x, y)`` replaces the task's default loss
    (cross-entropy or MSE) in training steps.  ``example_input`` (a batch) fixes the input shape;
    default: the first training sample.
    """
    origin = capture_origin()
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if loss is not None and not callable(loss):
        raise UserError("loss must be a callable loss(model, x, y) -> scalar tensor")
    chosen = _metric(metric, higher_is_better)
    splits = {n: read_split(n, d) for n, d in (("train", train), ("val", val), ("test", test))}
    splits["calib"] = read_split("calib", calib) if calib is not None else None
    tr = splits["train"]
    shape = tuple(tr.x.shape[1:])
    for n, s in splits.items():
        if s is not None and tuple(s.x.shape[1:]) != shape:
            raise UserError(
                f"split '{n}' has inputs of shape {tuple(s.x.shape[1:])}, train {shape}"
            )
    example = tr.x[:1] if example_input is None else torch.as_tensor(example_input)
    if tuple(example.shape[1:]) != shape:
        raise UserError(
            f"example_input has shape {tuple(example.shape)}; give a batch (1, *{shape}) like "
            "the training inputs"
        )
    reference = copy.deepcopy(model).cpu().eval()
    try:
        with torch.no_grad():
            out = torch.as_tensor(reference(example.float()))
    except Exception as exc:
        raise UserError(f"the model fails on example_input: {type(exc).__name__}: {exc}") from None
    kind = _task(task, metric, tr.y, out)
    _check(kind, tr.y, out, loss)
    loaded = Splits(
        train=tr,
        calib=splits["calib"] or _calib_from_train(tr),
        val=splits["val"],
        test=splits["test"],
    )
    batch_size = getattr(train, "batch_size", None) or 64
    return Suite(
        name=name or _slug(type(model).__name__),
        task=kind,
        build_model=lambda: copy.deepcopy(reference),
        load_splits=lambda ctx: loaded,
        metric=chosen,
        input_shape=shape,
        train=TrainConfig(epochs=0, batch_size=int(batch_size)),
        description=(
            f"made in Python by Suite.from_torch ({len(tr)} train, {len(loaded.calib)} calib, "
            f"{len(loaded.val)} val, {len(loaded.test)} test samples)"
        ),
        num_outputs=int(out.shape[1]) if kind == "classification" else 0,
        source=origin.file or "",
        loss_fn=loss,
        space=space,
        pretrained=True,
        origin=origin,
    )
