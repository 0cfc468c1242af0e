"""cifar10-resnet18: the paper's CIFAR model.

torchvision's resnet18 with 10 classes and the CIFAR stem: a 3x3 stride-1 first convolution and no
max-pool, so 32x32 inputs keep their resolution through the first stage.
"""

from __future__ import annotations

from torch import nn

from petra_hw.suite import ACCURACY, Suite, TrainConfig
from suites._cifar import augment, load_cifar10


def build_resnet18() -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(num_classes=10)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


SUITE = Suite(
    name="cifar10-resnet18",
    task="classification",
    build_model=build_resnet18,
    load_splits=load_cifar10,
    metric=ACCURACY,
    input_shape=(3, 32, 32),
    # Trained until more training stops helping: crops and flips, a cosine schedule over at
    # most 30 epochs, stopped after 6 without a better calib loss.
    train=TrainConfig(
        epochs=30,
        batch_size=64,
        optimizer="adam",
        lr=1e-3,
        weight_decay=5e-4,
        patience=0,  # the whole cosine schedule, final weights (see cifar10-resnet20)
        augment=augment,
        finish_epochs=5,
    ),
    description="real CIFAR-10 (subset or full), torchvision ResNet-18 with the CIFAR stem",
    num_outputs=10,
)
