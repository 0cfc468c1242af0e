"""transactions-coles: CoLES event-sequence embeddings, judged by LightGBM ROC-AUC downstream.

Data: the real CDNOW purchase log (``Lifetimes`` package), label = does the customer buy again in
the 182 days after the 30 Sep 1997 cutoff (see ``suites._events``); or, with
``make_suite(source="synthetic", n_clients=...)`` in a suite file of your own, synthetic card
transactions with MCC-like categories at any scale.  Splits by client.

The model is the CoLES encoder (``suites._coles``); it trains with the CoLES contrastive loss
(``Suite.loss_fn``: baseline, Tr, Reg and QAT all use it), and quality is LightGBM on its
embeddings (``Suite.evaluate``), measured through the deployed artifact.  LR factorizes the
embeddings, the input projection and the output map; the GRU's weights are not plain layers, so
LR leaves them.  Pr works in its unstructured mode; structured Pr needs torch-pruning to trace the
GRU, which 1.6.1 cannot (no GRU pruner).
"""

from __future__ import annotations

from functools import partial
from typing import Literal

from petra_hw.suite import DataContext, Splits, Suite, TrainConfig
from suites._coles import ROC_AUC, CoLESEncoder, CoLESLoss, downstream_quality
from suites._events import (
    CDNOW_SCHEMA,
    SYNTHETIC_SCHEMA,
    cdnow_sequences,
    synthetic_transactions,
    to_splits,
)

Source = Literal["cdnow", "synthetic"]


def make_suite(
    source: Source = "cdnow",
    *,
    n_clients: int = 20_000,
    seq_len: int = 32,
    embedding_dim: int = 16,
    hidden: int = 64,
    output_dim: int = 64,
    train: TrainConfig | None = None,
) -> Suite:
    """The suite on CDNOW or on ``n_clients`` synthetic clients, with the encoder's widths."""
    schema = CDNOW_SCHEMA if source == "cdnow" else SYNTHETIC_SCHEMA

    def load(ctx: DataContext) -> Splits:
        if source == "cdnow":
            return to_splits(cdnow_sequences(seq_len), ctx.seed)
        return to_splits(synthetic_transactions(n_clients, seq_len), ctx.seed)

    name = "transactions-coles" if source == "cdnow" else f"transactions-coles-synthetic{n_clients}"
    return Suite(
        name=name,
        task="embedding",
        build_model=partial(
            CoLESEncoder,
            schema.cardinalities,
            len(schema.numeric),
            embedding_dim=embedding_dim,
            hidden=hidden,
            output_dim=output_dim,
        ),
        load_splits=load,
        metric=ROC_AUC,
        input_shape=(seq_len, schema.num_fields),
        train=train or TrainConfig(epochs=10, batch_size=64, optimizer="adam", lr=1e-3),
        description=(
            "CDNOW purchase log (repeat purchase in 182 days), CoLES GRU encoder + LightGBM"
            if source == "cdnow"
            else f"{n_clients} synthetic card-transaction clients, CoLES GRU encoder + LightGBM"
        ),
        num_outputs=output_dim,
        loss_fn=CoLESLoss(),
        evaluate=downstream_quality,
    )


SUITE = make_suite()
