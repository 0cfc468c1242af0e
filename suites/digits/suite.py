"""digits: scikit-learn's real 8x8 handwritten digits with a small CNN.

The embedded default suite: its data ships inside scikit-learn, so it runs on any fresh machine.
The CNN is wide enough (32-64-64 channels) that low-rank, pruning and INT8 change its size and
latency visibly, and small enough that a baseline trains in seconds on 2 cores.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from petra_hw.suite import (
    ACCURACY,
    DataContext,
    Split,
    Splits,
    Suite,
    TrainConfig,
    stratified_split,
)


class DigitsCNN(nn.Module):
    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            nn.Conv2d(1, w, 3, padding=1, bias=False),
            nn.BatchNorm2d(w),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(2 * w, 2 * w, 3, padding=1, bias=False),
            nn.BatchNorm2d(2 * w),
            nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(
            nn.Linear(2 * w, 128), nn.ReLU(inplace=True), nn.Linear(128, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def load_digits_splits(ctx: DataContext) -> Splits:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0 - 0.5) / 0.5
    y = d.target.astype(np.int64)
    parts = stratified_split(y, (0.6, 0.1, 0.15, 0.15), ctx.seed)
    return Splits(
        *(Split(torch.from_numpy(x[i][:, None]), torch.from_numpy(y[i]), i) for i in parts)
    )


SUITE = Suite(
    name="digits",
    task="classification",
    build_model=DigitsCNN,
    load_splits=load_digits_splits,
    metric=ACCURACY,
    input_shape=(1, 8, 8),
    train=TrainConfig(epochs=20, batch_size=64, optimizer="adam", lr=3e-3),
    description="scikit-learn digits (1797 real 8x8 images), small CNN; ships inside scikit-learn",
    num_outputs=10,
)
