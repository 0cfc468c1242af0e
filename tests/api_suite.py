"""A suite made in Python as a training script makes one: a model trained here, torch datasets.

Used by tests/test_python_api.py; worker processes make it again from ``make_suite`` (the
reference ``<this file>:make_suite``), never from a pickle.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

import petra_hw


class TinyNet(nn.Module):
    """A two-layer perceptron over the 8x8 digits images."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def digits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    """scikit-learn's digits as (train, val, test) datasets of (1x8x8 image, class)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32)[:, None] / 16.0
    y = torch.tensor(d.target, dtype=torch.int64)
    return (
        TensorDataset(x[:1100], y[:1100]),
        TensorDataset(x[1100:1450], y[1100:1450]),
        TensorDataset(x[1450:], y[1450:]),
    )


def trained(train: TensorDataset, epochs: int = 3) -> TinyNet:
    torch.manual_seed(0)
    model = TinyNet()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        for x, y in DataLoader(train, batch_size=64, shuffle=True):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def make_suite() -> petra_hw.Suite:
    train, val, test = digits()
    return petra_hw.Suite.from_torch(
        trained(train),
        train=DataLoader(train, batch_size=64, shuffle=True),
        val=val,
        test=test,
        metric="accuracy",
        name="api-digits",
    )


class Images(Dataset):
    """The digits as a user's dataset serves them: one sample at a time, no ``targets`` list."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x, y = self.data[i]
        return x, int(y)


def make_streamed_suite() -> petra_hw.Suite:
    """The same suite over plain map-style datasets, read by one loader worker process."""
    train, val, test = digits()
    return petra_hw.Suite.from_torch(
        trained(train),
        train=Images(train),
        val=Images(val),
        test=Images(test),
        metric="accuracy",
        name="api-digits-streamed",
        num_workers=1,
    )
