"""CIFAR-10 data for the bundled CIFAR suites.

Reads the real CIFAR-10 subset shipped in ``shared/data/cifar10_subset`` or a full-size CIFAR-10
folder in the standard python-batches format (``cifar-10-batches-py``), looked for under
``--data-dir``, ``$PETRA_DATA_DIR``, then ``../shared/data``.  The official test batch is the test
split; the official train images are split, stratified and seeded, into train / calib / val.
"""

from __future__ import annotations

import numpy as np
import torch

from petra_hw.errors import UserError
from petra_hw.suite import DataContext, Split, Splits, data_roots, stratified_split

MEAN = np.array([0.4914, 0.4822, 0.4465], dtype=np.float32).reshape(1, 3, 1, 1)
STD = np.array([0.2470, 0.2435, 0.2616], dtype=np.float32).reshape(1, 3, 1, 1)
HINT = (
    "Provide the CIFAR-10 subset (cifar10_subset/cifar10_subset.npz) or a full CIFAR-10 "
    "'cifar-10-batches-py' folder via --data-dir or $PETRA_DATA_DIR."
)


def _load_raw(ctx: DataContext) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    seen = []
    for root in data_roots(ctx.data_dir):
        full = root / "cifar-10-batches-py"
        if (full / "test_batch").exists():
            from torchvision.datasets import CIFAR10

            tr = CIFAR10(str(root), train=True, download=False)
            te = CIFAR10(str(root), train=False, download=False)
            return (
                tr.data.transpose(0, 3, 1, 2),
                np.asarray(tr.targets),
                te.data.transpose(0, 3, 1, 2),
                np.asarray(te.targets),
            )
        subset = root / "cifar10_subset" / "cifar10_subset.npz"
        if subset.exists():
            with np.load(subset, allow_pickle=False) as z:
                return z["x_train"], z["y_train"], z["x_test"], z["y_test"]
        seen.append(str(root.resolve()))
    raise UserError(f"CIFAR-10 not found under {'; '.join(dict.fromkeys(seen))}. {HINT}")


def _norm(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy((x.astype(np.float32) / 255.0 - MEAN) / STD)


def load_cifar10(ctx: DataContext) -> Splits:
    x_tr, y_tr, x_te, y_te = _load_raw(ctx)
    train, calib, val = stratified_split(y_tr, (0.8, 0.08, 0.12), ctx.seed)

    def part(x: np.ndarray, y: np.ndarray, idx: np.ndarray, offset: int = 0) -> Split:
        return Split(_norm(x[idx]), torch.from_numpy(y[idx].astype(np.int64)), idx + offset)

    test_idx = np.arange(len(y_te))
    return Splits(
        part(x_tr, y_tr, train),
        part(x_tr, y_tr, calib),
        part(x_tr, y_tr, val),
        part(x_te, y_te, test_idx, offset=len(y_tr)),
    )


def augment(x: torch.Tensor, gen: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The standard CIFAR training augmentation: a random crop of the 4-pixel zero-padded image
    (one offset per image) and a random horizontal flip, seeded by the training generator."""
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None].expand(n, x.shape[1], h, w + 2 * pad)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :].expand(n, x.shape[1], h, w)
    out = out.gather(3, cols)
    flip = torch.rand(n, generator=gen) < 0.5
    return torch.where(flip[:, None, None, None], out.flip(3), out)
