"""digits-transformer: scikit-learn's 8x8 digits read row by row by a small Transformer encoder.

The bundled non-CNN suite: each image is a sequence of 8 tokens (its rows, 8 pixels each), embedded
by a Linear layer, given a learned position, run through two ``nn.TransformerEncoderLayer``s
(4 heads, model width 32, feed-forward 64, post-norm, batch first: the layout torch's fused
inference fast path takes) and mean-pooled into a classifier.  It exercises what CNN suites do not:
LR and Pr on attention blocks (``petra_hw.steps.attention``), ONNX export of attention and INT8
MatMul in ONNX Runtime and OpenVINO.  Data and splits are the ``digits`` suite's own.
"""

from __future__ import annotations

import torch
from torch import nn

from petra_hw.suite import ACCURACY, Suite, TrainConfig
from suites.digits.suite import load_digits_splits

ROWS = COLS = 8


class DigitsTransformer(nn.Module):
    """Rows as tokens: (B, 1, 8, 8) -> (B, 8, 8) -> embed -> encoder -> mean -> classes."""

    def __init__(
        self,
        d_model: int = 32,
        nhead: int = 4,
        dim_feedforward: int = 64,
        num_layers: int = 2,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        self.embed = nn.Linear(COLS, d_model)
        self.position = nn.Parameter(torch.zeros(1, ROWS, d_model))
        layer = nn.TransformerEncoderLayer(
            d_model, nhead, dim_feedforward, dropout=0.0, batch_first=True
        )
        # no nested tensors: inputs are never padded, and torch warns about them otherwise
        self.encoder = nn.TransformerEncoder(layer, num_layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_classes)
        nn.init.normal_(self.position, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x.reshape(x.shape[0], ROWS, COLS)) + self.position
        return self.head(self.encoder(tokens).mean(dim=1))


SUITE = Suite(
    name="digits-transformer",
    task="classification",
    build_model=DigitsTransformer,
    load_splits=load_digits_splits,
    metric=ACCURACY,
    input_shape=(1, ROWS, COLS),
    train=TrainConfig(epochs=30, batch_size=64, optimizer="adam", lr=2e-3),
    description=(
        "scikit-learn digits (1797 real 8x8 images) read row by row by a 2-layer Transformer "
        "encoder; ships inside scikit-learn"
    ),
    num_outputs=10,
)
