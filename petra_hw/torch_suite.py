"""``Suite.from_torch``: a suite from a trained model and torch datasets, made in Python.

The user's model is the baseline as it is (``Suite.pretrained``: nothing is trained or cached for
it).  Each split is a ``torch.utils.data.Dataset`` or ``DataLoader`` of ``(input, target)``
samples.  A map-style dataset is streamed (``Split.from_dataset``): read in batches, in index
order or the training loop's seeded shuffle, through ``num_workers`` loader processes, never held
whole in memory; only the first samples of each split are read here, to check them.

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
READ_BATCH = 256  # samples per batch while reading an iterable split into memory
PROBE_SAMPLES = 64  # first samples of each split whose shapes, dtypes and targets are checked
CALIB_SAMPLES = 512  # calibration samples drawn from train when no calib split is given


def _read_iterable(name: str, data: Any) -> Split:
    """All samples of an iterable dataset (no random access to stream from) as CPU tensors."""
    xs, ys = [], []
    try:
        for batch in data:
            x, y = _pair(name, batch)
            xs.append(x.detach().cpu())
            ys.append(y.detach().cpu())
    except UserError:
        raise
    except Exception as exc:  # the user's dataset code: one line
        raise UserError(f"reading split '{name}' raised {type(exc).__name__}: {exc}") from None
    if not xs:
        raise UserError(f"split '{name}' is empty")
    return Split(torch.cat(xs).float(), torch.cat(ys))


def _pair(name: str, batch: Any) -> tuple[torch.Tensor, torch.Tensor]:
    if not isinstance(batch, (tuple, list)) or len(batch) != 2:
        raise UserError(
            f"split '{name}' must yield (input, target) pairs, got {type(batch).__name__}"
            + (f" of {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    return torch.as_tensor(batch[0]), torch.as_tensor(batch[1])


def read_split(name: str, data: Any) -> Split:
    """One split over the user's data: a map-style dataset (also one behind a DataLoader, whose
    collate_fn is kept) streams from it in index order, never loaded whole; an iterable dataset,
    which cannot be indexed or shuffled, is read into memory once."""
    from torch.utils.data import DataLoader, Dataset, IterableDataset

    if isinstance(data, DataLoader):
        if isinstance(data.dataset, IterableDataset) or data.batch_size is None:
            return _read_iterable(name, data)
        split = Split.from_dataset(data.dataset, collate_fn=data.collate_fn)
    elif isinstance(data, IterableDataset):
        return _read_iterable(name, DataLoader(data, batch_size=READ_BATCH))
    elif isinstance(data, Dataset):
        split = Split.from_dataset(data)
    else:
        raise UserError(
            f"split '{name}' must be a torch Dataset or DataLoader, not {type(data).__name__}"
        )
    if len(split) == 0:
        raise UserError(f"split '{name}' is empty")
    try:
        first = (data.dataset if isinstance(data, DataLoader) else data)[0]
    except Exception as exc:  # the user's dataset code: one line
        raise UserError(f"reading split '{name}' raised {type(exc).__name__}: {exc}") from None
    _pair(name, first)
    return split


def _first(name: str, split: Split, n: int = PROBE_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``n`` samples of a split: what the checks look at without reading it whole."""
    try:
        x, y = next(iter(split.take(n).batches(n)))
    except UserError:
        raise
    except Exception as exc:  # the user's dataset code: one line
        raise UserError(f"reading split '{name}' raised {type(exc).__name__}: {exc}") from None
    return x, y


def _calib_from_train(train: Split) -> Split:
    """A seeded sample of train (all classes, not the first rows of a sorted dataset)."""
    n = min(len(train), CALIB_SAMPLES)
    return train.subset(np.sort(np.random.default_rng(0).permutation(len(train))[:n]))


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
    num_workers: int = 0,
) -> Suite:
    """A suite whose baseline is ``model`` as trained, with splits read from torch data.

    ``calib`` defaults to a seeded sample of ``train`` (at most 512).  ``metric`` is
    ``"accuracy"``, ``"rmse"``, a ``Metric`` or ``fn(outputs, targets) -> float`` on numpy arrays
    (with ``higher_is_better``).  ``loss(model, x, y)`` replaces the task's default loss
    (cross-entropy or MSE) in training steps.  ``example_input`` (a batch) fixes the input shape;
    default: the first training sample.  Map-style datasets are streamed, never loaded whole;
    ``num_workers`` loader processes read them (0: in the calling process).
    """
    origin = capture_origin()
    if not isinstance(model, nn.Module):
        raise UserError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    if loss is not None and not callable(loss):
        raise UserError("loss must be a callable loss(model, x, y) -> scalar tensor")
    chosen = _metric(metric, higher_is_better)
    if not isinstance(num_workers, int) or num_workers < 0:
        raise UserError(f"num_workers must be an integer >= 0, not {num_workers!r}")
    splits = {n: read_split(n, d) for n, d in (("train", train), ("val", val), ("test", test))}
    splits["calib"] = read_split("calib", calib) if calib is not None else None
    tr = splits["train"]
    probes = {n: _first(n, s) for n, s in splits.items() if s is not None}
    shape = tuple(probes["train"][0].shape[1:])
    for n, (x, _) in probes.items():
        if tuple(x.shape[1:]) != shape:
            raise UserError(f"split '{n}' has inputs of shape {tuple(x.shape[1:])}, train {shape}")
        if not x.is_floating_point():
            raise UserError(
                f"split '{n}': inputs are {x.dtype}; petra-hw compiles models with one float input"
            )
    example = probes["train"][0][:1] if example_input is None else torch.as_tensor(example_input)
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
    y = probes["train"][1]
    kind = _task(task, metric, y, out)
    _check(kind, y, out, loss)
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
        num_workers=num_workers,
    )
