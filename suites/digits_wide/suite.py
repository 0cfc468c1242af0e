"""digits-wide: scikit-learn's 8x8 digits at 16x16 with a wider CNN: the default of ``tune``.

The digits CNN runs in ~0.03 ms, where the fixed cost of each operator hides what pruning and
INT8 save (a bare tune's best point there was ``PTQ`` at -7 to -12% latency).  Here the images are
upsampled once to 16x16 (bilinear) and the network is a VGG-style stack of 32-64 | 128-128 | 256
channels (~24 M multiply-accumulates per image, ~0.4 M parameters), so convolutions dominate the
time and a pruned or INT8 model is measurably faster.  It still needs nothing beyond installed
packages, and its baseline trains in under a minute on 2 cores.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from petra_hw.suite import ACCURACY, DataContext, Split, Splits, Suite, TrainConfig
from suites.digits.suite import load_digits_splits

SIDE = 16  # pixels per side after upsampling


def _block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class WideDigitsCNN(nn.Module):
    """32-64, pool, 128-128, pool, 256, global average pool, linear."""

    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        w = width
        self.features = nn.Sequential(
            *_block(1, w),
            *_block(w, 2 * w),
            nn.MaxPool2d(2),
            *_block(2 * w, 4 * w),
            *_block(4 * w, 4 * w),
            nn.MaxPool2d(2),
            *_block(4 * w, 8 * w),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
        )
        self.classifier = nn.Linear(8 * w, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _upsampled(split: Split) -> Split:
    x = F.interpolate(split.inputs(), size=(SIDE, SIDE), mode="bilinear", align_corners=False)
    return Split(x.contiguous(), split.targets(), split.ids)


def load_wide_splits(ctx: DataContext) -> Splits:
    """The digits suite's splits (same seed, same samples), upsampled to 16x16."""
    base = load_digits_splits(ctx)
    return Splits(*(_upsampled(s) for s in (base.train, base.calib, base.val, base.test)))


SUITE = Suite(
    name="digits-wide",
    task="classification",
    build_model=WideDigitsCNN,
    load_splits=load_wide_splits,
    metric=ACCURACY,
    input_shape=(1, SIDE, SIDE),
    train=TrainConfig(epochs=10, batch_size=64, optimizer="adam", lr=3e-3),
    description="scikit-learn digits upsampled to 16x16, wider CNN (compute dominates); "
    "ships inside scikit-learn",
    num_outputs=10,
)
