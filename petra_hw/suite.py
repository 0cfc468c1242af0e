"""Suites: a user's model + data + metric, declared in one Python file.

A suite file defines one module-level ``SUITE = Suite(...)``.  Bundled suites live in
``suites/<name>/suite.py`` (``-`` in a name maps to ``_`` in the folder); any other file is given by
path.  Splits are deterministic and disjoint; which split serves which purpose is fixed by the
architecture: train/calib for fitting and calibration, val for the search, test for reports.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from petra_hw.errors import UserError

if TYPE_CHECKING:
    import torch  # imported lazily at run time: suites stay cheap to list

Task = Literal["classification", "regression", "embedding"]


READ_BATCH = 256  # samples per batch where a streamed split is read only for its targets or rows
EVAL_BATCH = 256  # samples per batch where a model only predicts (see Split.eval_batch_size)
EVAL_BATCH_BYTES = 16 * 1024**2  # at most this many bytes of inputs in such a batch


class Split:
    """The samples of one split, read in batches: CPU tensors, or a ``torch.utils.data.Dataset``
    of ``(input, target)`` samples that is never loaded whole (``Split.from_dataset``).

    Every reader (training, calibration, quality, timing inputs) goes through ``batches`` /
    ``input_batches`` / ``outputs`` / ``inputs`` / ``subset``, so a split too large for memory
    streams from its files, through ``num_workers`` loader processes where the suite allows.
    Tensors are sliced directly, so bundled suites keep their results bit-for-bit.
    """

    def __init__(
        self,
        x: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        ids: np.ndarray | None = None,
        *,
        dataset: Any = None,
        collate_fn: Callable | None = None,
        num_workers: int = 0,
    ) -> None:
        if (dataset is None) == (x is None or y is None):
            raise ValueError("a Split holds either tensors x and y or a dataset")
        self._x, self._y, self._dataset = x, y, dataset
        self._collate = collate_fn
        self.ids = ids  # source row/sample ids, used to prove disjointness
        self.num_workers = int(num_workers)
        self._targets: torch.Tensor | None = y
        self._sample_bytes: int | None = None  # bytes of one input, read once

    @classmethod
    def from_dataset(
        cls,
        dataset: Any,
        ids: np.ndarray | None = None,
        *,
        collate_fn: Callable | None = None,
        num_workers: int = 0,
    ) -> Split:
        """A split streamed from a map-style dataset of ``(input, target)`` samples."""
        return cls(dataset=dataset, ids=ids, collate_fn=collate_fn, num_workers=num_workers)

    @property
    def streaming(self) -> bool:
        return self._dataset is not None

    def __len__(self) -> int:
        return len(self._dataset) if self._dataset is not None else int(self._x.shape[0])

    def __repr__(self) -> str:
        kind = type(self._dataset).__name__ if self._dataset is not None else "tensors"
        return f"Split({len(self)} samples, {kind}, num_workers={self.num_workers})"

    def with_workers(self, num_workers: int) -> Split:
        """The same split read through ``num_workers`` loader processes (datasets only)."""
        if self._dataset is None or num_workers == self.num_workers:
            return self
        return Split.from_dataset(
            self._dataset, self.ids, collate_fn=self._collate, num_workers=num_workers
        )

    def batches(
        self, batch_size: int, order: Sequence[int] | torch.Tensor | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(inputs, targets)`` batches in index order, or in ``order`` (e.g. a shuffle)."""
        import torch

        if self._dataset is None:
            if order is None:
                for i in range(0, len(self), batch_size):
                    yield self._x[i : i + batch_size], self._y[i : i + batch_size]
            else:
                for i in range(0, len(order), batch_size):
                    idx = order[i : i + batch_size]
                    yield self._x[idx], self._y[idx]
            return
        from torch.utils.data import DataLoader

        loader = DataLoader(
            self._dataset,
            batch_size=batch_size,
            sampler=None if order is None else [int(i) for i in order],
            shuffle=False,
            num_workers=self.num_workers,
            collate_fn=self._collate,
        )
        for batch in loader:
            x, y = batch
            yield torch.as_tensor(x).float(), torch.as_tensor(y)

    def input_batches(
        self, batch_size: int, order: Sequence[int] | torch.Tensor | None = None
    ) -> Iterator[torch.Tensor]:
        """The input batches of ``batches`` alone."""
        for x, _ in self.batches(batch_size, order):
            yield x

    def subset(self, indices: Sequence[int] | np.ndarray | torch.Tensor) -> Split:
        """The rows ``indices`` (in that order) as a split of their own, ids carried."""
        import torch

        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        ids = self.ids[idx.numpy()] if self.ids is not None else None
        if self._dataset is None:
            return Split(self._x[idx], self._y[idx], ids)
        from torch.utils.data import Subset

        return Split.from_dataset(
            Subset(self._dataset, idx.tolist()),
            ids,
            collate_fn=self._collate,
            num_workers=self.num_workers,
        )

    def take(self, n: int) -> Split:
        """The first ``n`` rows (all when fewer)."""
        if self._dataset is None:
            n = min(n, len(self))
            ids = self.ids[:n] if self.ids is not None else None
            return Split(self._x[:n], self._y[:n], ids)
        return self.subset(range(min(n, len(self))))

    def inputs(self, n: int | None = None) -> torch.Tensor:
        """The first ``n`` inputs (all when None) stacked in memory: for calibration and timing
        rows, small by design; never call it without ``n`` on a large split."""
        import torch

        if self._dataset is None:
            return self._x if n is None else self._x[:n]
        part = self if n is None else self.take(n)
        return torch.cat(list(part.input_batches(READ_BATCH)))

    def eval_batch_size(self, limit: int = EVAL_BATCH) -> int:
        """Samples per batch where a model only predicts: ``limit``, fewer where that many inputs
        would exceed ``EVAL_BATCH_BYTES`` (a forward pass's activations grow with the batch, and
        224 px images at 256 a batch take gigabytes; small inputs keep 256, and their results)."""
        if self._sample_bytes is None:
            self._sample_bytes = max(1, int(np.prod(self.inputs(1).shape[1:])) * 4)
        return max(1, min(limit, EVAL_BATCH_BYTES // self._sample_bytes))

    def outputs(
        self, predict: Callable[[torch.Tensor], np.ndarray], batch_size: int | None = None
    ) -> np.ndarray:
        """``predict`` over every input batch, in index order, as one array (the targets are
        kept on the way, so ``targets`` costs no second pass over a streamed split); batches of
        ``eval_batch_size`` unless ``batch_size`` is given."""
        import torch

        outs, ys = [], []
        for x, y in self.batches(batch_size or self.eval_batch_size()):
            outs.append(np.asarray(predict(x)))
            ys.append(y)
        if self._targets is None and ys:
            self._targets = torch.cat(ys)
        return np.concatenate(outs) if outs else np.zeros((0,))

    def targets(self) -> torch.Tensor:
        """All targets in index order (small: labels, not inputs); read once, then kept."""
        import torch

        if self._targets is None:
            self._targets = _dataset_targets(self._dataset)
            if self._targets is None:
                self._targets = torch.cat([y for _, y in self.batches(READ_BATCH)])
        return self._targets


def _dataset_targets(dataset: Any) -> torch.Tensor | None:
    """Targets a dataset lists without loading its inputs (``ImageFolder.targets``, through
    ``Subset``s); None when it lists none."""
    import torch
    from torch.utils.data import Subset

    if isinstance(dataset, Subset):
        inner = _dataset_targets(dataset.dataset)
        return None if inner is None else inner[torch.as_tensor(dataset.indices, dtype=torch.long)]
    targets = getattr(dataset, "targets", None)
    if (
        getattr(dataset, "target_transform", None) is not None
        or targets is None
        or len(targets) != len(dataset)
    ):
        return None
    return torch.as_tensor(np.asarray(targets))


SPLIT_NAMES = ("train", "calib", "val", "test")


@dataclass(frozen=True)
class Splits:
    train: Split
    calib: Split
    val: Split
    test: Split
    # (mean, std) of regression targets standardized for training; metrics see original units
    target_scale: tuple[float, float] | None = None

    def with_workers(self, num_workers: int) -> Splits:
        """Every streamed split read through ``num_workers`` loader processes."""
        return dataclasses.replace(
            self,
            **{n: getattr(self, n).with_workers(num_workers) for n in SPLIT_NAMES},
        )

    def by_name(self, name: str) -> Split:
        if name not in ("train", "calib", "val", "test"):
            raise UserError(f"unknown split '{name}' (train, calib, val, test)")
        return getattr(self, name)


@dataclass(frozen=True)
class Metric:
    """A quality metric over model outputs and targets (both numpy)."""

    name: str
    higher_is_better: bool
    fn: Callable[[np.ndarray, np.ndarray], float]

    def __call__(self, outputs: np.ndarray, targets: np.ndarray) -> float:
        return float(self.fn(outputs, targets))


def _accuracy(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float((outputs.argmax(axis=1) == targets).mean())


def _rmse(outputs: np.ndarray, targets: np.ndarray) -> float:
    return float(np.sqrt(np.mean((outputs.reshape(targets.shape) - targets) ** 2)))


ACCURACY = Metric("accuracy", True, _accuracy)
RMSE = Metric("rmse", False, _rmse)

# Maps a batch of inputs to outputs: an eager model or a deployed runner (``Split.outputs`` runs
# it over a whole split).
PredictFn = Callable[["torch.Tensor"], np.ndarray]  # noqa: F821
# A suite's own training objective, computed from the model and one batch (x, y).
ModelLoss = Callable[["torch.nn.Module", "torch.Tensor", "torch.Tensor"], "torch.Tensor"]  # noqa: F821
# Quality of split ``name`` from a predictor, when it is more than ``metric(outputs, targets)``.
Evaluate = Callable[[PredictFn, Splits, str], float]


# A random training-time transform of one input batch (e.g. crops and flips for images).
Augment = Callable[["torch.Tensor", "torch.Generator"], "torch.Tensor"]  # noqa: F821


@dataclass(frozen=True)
class TrainConfig:
    """How the suite's baseline is trained (once, then cached).

    A bundled baseline trains *until more training stops helping*: ``epochs`` is a cap, the
    cosine schedule spans it, and training stops after ``patience`` epochs without a better calib
    loss (None: a third of the cap, at least 3; 0: never, the whole schedule runs and its final
    weights are kept).  ``finish_epochs`` then train without augmentation on a fresh cosine from
    half the rate, stopped on calib loss like a pipeline's ``Tr``: a model trained on augmented
    inputs still gains from a short fine-tune on clean ones, and the baseline must have that gain
    before any pipeline is credited with it.  ``augment`` transforms each training batch of
    the baseline (candidates' short fine-tunes train without it, as the training control does).
    """

    epochs: int = 10
    batch_size: int = 64
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    patience: int | None = None
    augment: Augment | None = None
    finish_epochs: int = 0

    def early_stop_patience(self) -> int | None:
        """Epochs without a better calib loss before stopping; None: run the whole schedule."""
        if self.patience == 0:
            return None
        return self.patience if self.patience is not None else max(3, self.epochs // 3)


@dataclass(frozen=True)
class DataContext:
    """Where a suite looks for files and which seed fixes its splits."""

    data_dir: Path | None
    seed: int

    def find(self, relative: str, hint: str) -> Path:
        """Resolve ``relative`` under --data-dir, $PETRA_DATA_DIR, then ../shared/data."""
        return find_data(relative, hint, self.data_dir)


def data_roots(data_dir: Path | None) -> list[Path]:
    roots: list[Path] = []
    if data_dir is not None:
        roots.append(Path(data_dir))
    if os.environ.get("PETRA_DATA_DIR"):
        roots.append(Path(os.environ["PETRA_DATA_DIR"]))
    roots.append(Path.cwd().parent / "shared" / "data")
    return roots


def find_data(relative: str, hint: str, data_dir: Path | None) -> Path:
    seen: list[str] = []
    for root in data_roots(data_dir):
        candidate = root / relative
        if candidate.exists():
            return candidate
        seen.append(str(candidate.resolve()))
    raise UserError(f"data not found: looked for {'; '.join(dict.fromkeys(seen))}. {hint}")


@dataclass(frozen=True)
class Suite:
    """Everything petra-hw needs to know about one user task."""

    name: str
    task: Task
    build_model: Callable[[], torch.nn.Module]
    load_splits: Callable[[DataContext], Splits]
    metric: Metric
    input_shape: tuple[int, ...]
    train: TrainConfig = field(default_factory=TrainConfig)
    description: str = ""
    num_outputs: int = 0
    source: str = ""  # path of the suite file; set by the loader
    # Optional hooks for suites whose objective or quality is not a plain loss/metric on outputs
    # (e.g. CoLES: contrastive training, quality = LightGBM on the embeddings).
    loss_fn: ModelLoss | None = None  # used by the one training loop instead of a named loss
    evaluate: Evaluate | None = None  # used by baseline scoring and by judge instead of metric
    # A search space spec (petra_hw.search.space.SearchSpace.from_spec) narrowing what tune
    # searches for this suite; ``tune --space FILE`` overrides it.
    space: dict[str, Any] | None = None
    # The model ``build_model`` returns is already trained (``Suite.from_torch``): it is the
    # baseline as it is; nothing is trained or cached for it.
    pretrained: bool = False
    # Where a suite made in Python was made (``petra_hw.suite_ref``), so that worker processes
    # can make it again; None for suite files, which travel by their path.
    origin: Any = field(default=None, compare=False, repr=False)
    # Loader processes per streamed split (``Split.from_dataset``); 0 reads in this process.
    num_workers: int = 0

    @classmethod
    def from_torch(cls, model: torch.nn.Module, **kwargs: Any) -> Suite:
        """A suite from a trained model and torch datasets or loaders (see
        ``petra_hw.torch_suite.from_torch`` for the arguments)."""
        from petra_hw.torch_suite import from_torch

        return from_torch(model, **kwargs)

    @property
    def default_loss(self) -> str | ModelLoss:
        if self.loss_fn is not None:
            return self.loss_fn
        return "cross_entropy" if self.task == "classification" else "mse"

    def read_splits(self, ctx: DataContext) -> Splits:
        """The suite's splits, streamed ones read through the suite's ``num_workers``."""
        splits = self.load_splits(ctx)
        return splits.with_workers(self.num_workers) if self.num_workers else splits

    def score(
        self,
        predict: PredictFn,
        splits: Splits,
        name: str,
        outputs: np.ndarray | None = None,
    ) -> float:
        """Quality of split ``name`` through ``predict`` (the suite's evaluate hook or metric);
        ``outputs`` are ``predict``'s on that split when the caller has them already."""
        if self.evaluate is not None:
            return float(self.evaluate(predict, splits, name))
        split = splits.by_name(name)
        if outputs is None:
            outputs = split.outputs(predict)
        targets = split.targets().numpy()
        if splits.target_scale is not None:
            mean, std = splits.target_scale
            outputs, targets = outputs * std + mean, targets * std + mean
        return self.metric(outputs, targets)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        import torch

        return torch.zeros((batch, *self.input_shape), dtype=torch.float32)

    def code_version(self) -> str:
        """Hash of the suite file, its training recipe and petra-hw's version: part of the
        baseline cache key, so a suite varied in code (fewer epochs for a test) never shares a
        cached baseline with the file's own."""
        from petra_hw import __version__

        h = hashlib.sha256(__version__.encode())
        if self.source and Path(self.source).exists():
            h.update(Path(self.source).read_bytes())
        cfg = self.train
        augment = getattr(cfg.augment, "__qualname__", repr(cfg.augment))
        recipe = (cfg.epochs, cfg.batch_size, cfg.optimizer, cfg.lr, cfg.weight_decay)
        finish = (cfg.finish_epochs,) if cfg.finish_epochs else ()  # older keys stay valid
        h.update(repr((*recipe, cfg.patience, augment, *finish)).encode())
        return h.hexdigest()[:12]


def bundled_names() -> list[str]:
    """Bundled suite names: folders of the ``suites`` package holding a suite.py."""
    import suites

    root = Path(suites.__file__).parent
    return sorted(p.parent.name.replace("_", "-") for p in root.glob("*/suite.py"))


def load_suite(name_or_path: str) -> Suite:
    """Load a bundled suite by name, a user suite file by path, or a suite made in Python by its
    reference (``module:factory`` or ``file.py:factory``, see ``petra_hw.suite_ref``)."""
    from petra_hw.suite_ref import is_reference, load_reference
    from petra_hw.user_module import load_user_file

    if is_reference(name_or_path):
        return load_reference(name_or_path)
    path = Path(name_or_path)
    if name_or_path.endswith(".py") or path.exists():
        if not path.is_file():
            raise UserError(f"suite file not found: {name_or_path}")
        module = load_user_file(path)
        source = str(path.resolve())
    else:
        if name_or_path not in bundled_names():
            raise UserError(
                f"unknown suite '{name_or_path}' (bundled: {', '.join(bundled_names())}; "
                "or give a path to a suite.py)"
            )
        module = importlib.import_module(f"suites.{name_or_path.replace('-', '_')}.suite")
        source = module.__file__ or ""
    suite = getattr(module, "SUITE", None)
    if not isinstance(suite, Suite):
        raise UserError(f"suite file {source or name_or_path} defines no SUITE = Suite(...)")
    if source:
        from petra_hw.failures import register_suite

        register_suite(Path(source), user=name_or_path.endswith(".py") or path.exists())
    return dataclasses.replace(suite, source=source)


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Deterministic, disjoint, class-stratified index sets whose sizes follow ``fractions``.

    Stratifying keeps small splits (calib, val) representative of every class.
    """
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fractions]
    groups = np.unique(y) if y.dtype.kind in "iub" else [None]
    for g in groups:
        idx = np.flatnonzero(y == g) if g is not None else np.arange(len(y))
        idx = rng.permutation(idx)
        bounds = np.round(np.cumsum(fractions) / sum(fractions) * len(idx)).astype(int)
        for i, (lo, hi) in enumerate(zip(np.r_[0, bounds[:-1]], bounds)):
            parts[i].append(idx[lo:hi])
    return [np.sort(np.concatenate(p)) for p in parts]
