"""InceptionTime (Ismail Fawaz et al., 2020) for multivariate time series, in plain torch layers.

Each Inception module runs a 1x1 bottleneck, then three convolutions of decreasing kernel size
(``kernel_size``, /2, /4, made odd so padding is symmetric) and a max-pool + 1x1 branch side by
side, concatenated, batch-normalised and rectified.  A residual shortcut (1x1 conv + BN) joins every
third module.  Global average pooling over time feeds a linear head.  Only Conv1d, BatchNorm1d,
MaxPool1d and Linear are used, so LR, Pr, INT8 and every backend handle the model.
"""

from __future__ import annotations

import torch
from torch import nn


def _odd(k: int) -> int:
    return k if k % 2 else k - 1


class InceptionModule(nn.Module):
    def __init__(self, in_channels: int, filters: int, kernel_size: int, bottleneck: int) -> None:
        super().__init__()
        use_bottleneck = in_channels > 1 and bottleneck > 0
        inner = bottleneck if use_bottleneck else in_channels
        self.bottleneck = (
            nn.Conv1d(in_channels, bottleneck, 1, bias=False) if use_bottleneck else nn.Identity()
        )
        kernels = [_odd(max(kernel_size // 2**i, 3)) for i in range(3)]
        self.convs = nn.ModuleList(
            nn.Conv1d(inner, filters, k, padding=k // 2, bias=False) for k in kernels
        )
        self.pool = nn.MaxPool1d(3, stride=1, padding=1)
        self.pool_conv = nn.Conv1d(in_channels, filters, 1, bias=False)
        self.bn = nn.BatchNorm1d(4 * filters)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.bottleneck(x)
        branches = [conv(z) for conv in self.convs] + [self.pool_conv(self.pool(x))]
        return self.act(self.bn(torch.cat(branches, dim=1)))


class Shortcut(nn.Module):
    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv1d(in_channels, out_channels, 1, bias=False)
        self.bn = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class InceptionTime(nn.Module):
    """Input (batch, channels, time) -> output (batch, num_outputs)."""

    def __init__(
        self,
        in_channels: int,
        num_outputs: int,
        *,
        depth: int = 6,
        filters: int = 32,
        kernel_size: int = 40,
        bottleneck: int = 32,
        residual_every: int = 3,
    ) -> None:
        super().__init__()
        width = 4 * filters
        self.blocks = nn.ModuleList(
            InceptionModule(in_channels if i == 0 else width, filters, kernel_size, bottleneck)
            for i in range(depth)
        )
        self.residual_every = residual_every
        self.shortcuts = nn.ModuleList(
            Shortcut(in_channels if i == 0 else width, width)
            for i in range(depth // residual_every)
        )
        self.act = nn.ReLU()
        self.head = nn.Linear(width, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x
        for i, module in enumerate(self.blocks):
            x = module(x)
            if (i + 1) % self.residual_every == 0:
                x = self.act(x + self.shortcuts[i // self.residual_every](residual))
                residual = x
        return self.head(x.mean(dim=2))
