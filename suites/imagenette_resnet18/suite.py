"""imagenette-resnet18: Imagenette (10 easy ImageNet classes), torchvision ResNet-18, on CPU.

Imagenette is not shipped: give a folder ``imagenette2-160/`` or ``imagenette/`` (holding
``train/`` and ``val/``, one subfolder per class as torchvision's ``ImageFolder`` reads them) under
``--data-dir``, ``$PETRA_DATA_DIR`` or ``../shared/data``.  Images are resized (shorter side) and
centre-cropped to ``image_size`` (64 by default, so the baseline trains on a CPU) and normalised
with the ImageNet statistics.  The official ``val`` folder is the test split; the official train
images are split, stratified and seeded, into train / calib / val.  The model is torchvision's
resnet18 with its ImageNet stem and a 10-way head.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petra_hw.errors import UserError
from petra_hw.suite import (
    ACCURACY,
    DataContext,
    Split,
    Splits,
    Suite,
    TrainConfig,
    data_roots,
    stratified_split,
)

log = logging.getLogger(__name__)

FOLDERS = ("imagenette2-160", "imagenette")
IMAGE_SIZE = 64
TRAIN_FRACTIONS = (0.8, 0.08, 0.12)  # train, calib, val (of the official train images)
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
HINT = (
    "Download Imagenette (https://github.com/fastai/imagenette, e.g. imagenette2-160) and put "
    "the folder with train/ and val/ under --data-dir or $PETRA_DATA_DIR."
)


def find_imagenette(data_dir: Path | None) -> Path:
    """The first ``imagenette2-160`` or ``imagenette`` folder holding train/ and val/."""
    seen = []
    for root in data_roots(data_dir):
        for name in FOLDERS:
            folder = root / name
            if (folder / "train").is_dir() and (folder / "val").is_dir():
                return folder
            seen.append(str(folder.resolve()))
    raise UserError(f"Imagenette not found: looked for {'; '.join(dict.fromkeys(seen))}. {HINT}")


def read_folder(folder: Path, size: int, classes: list[str] | None = None):
    """All images of an ImageFolder tree as one normalised float tensor, with labels and classes."""
    from torchvision import datasets, transforms

    transform = transforms.Compose(
        [
            transforms.Resize(size),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(MEAN, STD),
        ]
    )
    data = datasets.ImageFolder(str(folder), transform=transform)
    if classes is not None and data.classes != classes:
        raise UserError(f"{folder}: classes {data.classes} differ from train's {classes}")
    if not data.samples:
        raise UserError(f"{folder}: no images")
    x = torch.stack([data[i][0] for i in range(len(data))])
    return x, np.asarray(data.targets, dtype=np.int64), data.classes


def load_imagenette(ctx: DataContext, size: int = IMAGE_SIZE) -> Splits:
    folder = find_imagenette(ctx.data_dir)
    log.info("Imagenette from %s at %dx%d", folder, size, size)
    x_tr, y_tr, classes = read_folder(folder / "train", size)
    x_te, y_te, _ = read_folder(folder / "val", size, classes)
    parts = stratified_split(y_tr, TRAIN_FRACTIONS, ctx.seed)

    def split(x: torch.Tensor, y: np.ndarray, idx: np.ndarray, offset: int = 0) -> Split:
        return Split(x[idx], torch.from_numpy(y[idx]), idx + offset)

    test = np.arange(len(y_te))
    return Splits(*(split(x_tr, y_tr, p) for p in parts), split(x_te, y_te, test, len(y_tr)))


def build_resnet18(num_classes: int = 10) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


def make_suite(image_size: int = IMAGE_SIZE) -> Suite:
    """The suite at ``image_size`` x ``image_size`` pixels (64 by default)."""
    return Suite(
        name="imagenette-resnet18"
        if image_size == IMAGE_SIZE
        else f"imagenette{image_size}-resnet18",
        task="classification",
        build_model=build_resnet18,
        load_splits=partial(load_imagenette, size=image_size),
        metric=ACCURACY,
        input_shape=(3, image_size, image_size),
        train=TrainConfig(epochs=5, batch_size=64, optimizer="adam", lr=1e-3, weight_decay=5e-4),
        description=(
            f"Imagenette (10 ImageNet classes, user-provided) at {image_size}x{image_size}, "
            "torchvision ResNet-18"
        ),
        num_outputs=10,
    )


SUITE = make_suite()
