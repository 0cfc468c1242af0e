"""The suite's baseline model: trained once, cached, loaded safely.

The cache key is (suite name, seed, code version); the file holds only a state dict and is loaded
with ``weights_only=True``.  The cache folder is ``$PETRA_HW_CACHE`` or ``~/.cache/petra-hw``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petra_hw.suite import DataContext, Split, Splits, Suite
from petra_hw.training import train

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = Path(os.environ.get("PETRA_HW_CACHE", Path.home() / ".cache" / "petra-hw"))
    root.mkdir(parents=True, exist_ok=True)
    return root


@dataclass
class Baseline:
    """The trained baseline with the splits it was trained on and its measured quality."""

    suite: Suite
    model: nn.Module
    splits: Splits
    seed: int
    metrics: dict[str, float]  # {"val": ..., "test": ...} through the eager torch model
    cached: bool

    @property
    def state_hash(self) -> str:
        import hashlib

        h = hashlib.sha256()
        for k, v in sorted(self.model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().numpy().tobytes())
        return h.hexdigest()[:16]


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    model.eval()
    outs = [
        model(x[i : i + batch_size]).detach().cpu().numpy() for i in range(0, len(x), batch_size)
    ]
    return np.concatenate(outs) if outs else np.zeros((0,))


def predict_split(model: nn.Module, split: Split) -> np.ndarray:
    """``model``'s outputs over a whole split, read in batches."""
    return split.outputs(lambda x: predict(model, x))


def score(suite: Suite, model: nn.Module, split: Split) -> float:
    return suite.metric(predict_split(model, split), split.targets().numpy())


def seed_everything(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _metrics(suite: Suite, model: nn.Module, splits: Splits) -> dict[str, float]:
    """The baseline's val and test quality through the eager model."""

    def model_predict(x: torch.Tensor) -> np.ndarray:
        return predict(model, x)

    return {name: suite.score(model_predict, splits, name) for name in ("val", "test")}


EpochProgress = Callable[[int, int, float, float], None]


def get_baseline(
    suite: Suite,
    seed: int = 0,
    data_dir: Path | None = None,
    on_epoch: EpochProgress | None = None,
) -> Baseline:
    """Load the cached baseline or train it (printing nothing: the caller reports the metric).

    Training a converged baseline takes up to an hour on 2 cores, so ``on_epoch(epoch, epochs,
    calib_loss, elapsed_s)`` lets the caller show progress; every epoch is also logged.
    """
    splits = suite.read_splits(DataContext(data_dir, seed))
    seed_everything(seed)
    model = suite.build_model()
    if suite.pretrained:  # the user's trained model is the baseline: nothing to train or cache
        model.eval()
        return Baseline(suite, model, splits, seed, _metrics(suite, model, splits), True)
    key = f"{suite.name}-s{seed}-{suite.code_version()}"
    weights = cache_dir() / "baselines" / f"{key}.pt"
    meta = weights.with_suffix(".json")
    if weights.exists() and meta.exists():
        model.load_state_dict(torch.load(weights, weights_only=True, map_location="cpu"))
        model.eval()
        return Baseline(suite, model, splits, seed, json.loads(meta.read_text()), True)
    cfg = suite.train
    log.info("training baseline %s (seed %d, %d epochs)", suite.name, seed, cfg.epochs)
    started = time.perf_counter()
    total, done = cfg.epochs + cfg.finish_epochs, 0

    def progress(epoch: int, calib_loss: float) -> None:
        elapsed = time.perf_counter() - started
        log.info(
            "baseline epoch %d/%d: calib loss %.4f (%.0f s)",
            done + epoch,
            total,
            calib_loss,
            elapsed,
        )
        if on_epoch is not None:
            on_epoch(done + epoch, total, calib_loss, elapsed)

    common = {
        "batch_size": cfg.batch_size,
        "optimizer": cfg.optimizer,
        "weight_decay": cfg.weight_decay,
        "default_loss": suite.default_loss,
        "monitor": splits.calib,
        "epoch_callback": progress,
    }
    result = train(
        model,
        splits.train,
        epochs=cfg.epochs,
        lr=cfg.lr,
        seed=seed,
        patience=cfg.early_stop_patience(),
        augment=cfg.augment,
        **common,
    )
    if cfg.finish_epochs:
        done = result.epochs_run
        log.info(
            "baseline %s: %d finishing epochs without augmentation", suite.name, cfg.finish_epochs
        )
        finish = train(
            model, splits.train, epochs=cfg.finish_epochs, lr=cfg.lr / 2, seed=seed + 1, **common
        )
        result = dataclasses.replace(
            result,
            epochs_run=result.epochs_run + finish.epochs_run,
            wall_s=result.wall_s + finish.wall_s,
        )

    metrics = {
        **_metrics(suite, model, splits),
        "train_wall_s": result.wall_s,
        "epochs_run": result.epochs_run,
    }
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp = weights.with_suffix(".tmp")
    torch.save(model.state_dict(), tmp)
    os.replace(tmp, weights)
    meta.write_text(json.dumps(metrics, indent=2))
    return Baseline(suite, model, splits, seed, metrics, False)
