"""imagenette-resnet18: Imagenette (10 easy ImageNet classes), torchvision ResNet-18, on CPU.

Imagenette is not shipped: give a folder ``imagenette2-160/`` or ``imagenette/`` (holding
``train/`` and ``val/``, one subfolder per class as torchvision's ``ImageFolder`` reads them) under
``--data-dir``, ``$PETRA_DATA_DIR`` or ``../shared/data``.  Images are resized (shorter side) and
centre-cropped to ``image_size`` (160 by default, the paper's Imagenette size) and normalised with
the ImageNet statistics.  The splits stream from the files (``Split.from_dataset`` over torchvision's
``ImageFolder``): an image is decoded when a batch needs it, never the whole set into memory.  The
official ``val`` folder is the test split; the official train images are split, stratified and
seeded, into train / calib / val.  The model is torchvision's resnet18 with its ImageNet stem and a
10-way head.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path

import numpy as np
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
IMAGE_SIZE = 160  # the paper's Imagenette resolution
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


def image_folder(folder: Path, size: int, classes: list[str] | None = None):
    """An ``ImageFolder`` tree as a dataset of normalised ``size`` x ``size`` images (decoded on
    access) and class labels."""
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
    return data


def load_imagenette(ctx: DataContext, size: int = IMAGE_SIZE) -> Splits:
    folder = find_imagenette(ctx.data_dir)
    log.info("Imagenette from %s at %dx%d (streamed from the files)", folder, size, size)
    train = image_folder(folder / "train", size)
    test = image_folder(folder / "val", size, train.classes)
    y_tr = np.asarray(train.targets, dtype=np.int64)
    parts = stratified_split(y_tr, TRAIN_FRACTIONS, ctx.seed)
    whole = Split.from_dataset(train, np.arange(len(train)))
    test_ids = np.arange(len(test)) + len(train)
    return Splits(*(whole.subset(p) for p in parts), Split.from_dataset(test, test_ids))


def build_resnet18(num_classes: int = 10) -> nn.Module:
    from torchvision.models import resnet18

    return resnet18(num_classes=num_classes)


def make_suite(image_size: int = IMAGE_SIZE, num_workers: int = 0) -> Suite:
    """The suite at ``image_size`` x ``image_size`` pixels (160 by default), its images decoded
    by ``num_workers`` loader processes (0: in the process that reads them)."""
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
        num_workers=num_workers,
    )


SUITE = make_suite()
