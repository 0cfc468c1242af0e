"""CoLES (Babaev et al., SIGMOD 2022): contrastive learning of event-sequence embeddings.

The encoder embeds each event's categorical fields, concatenates the numeric ones, projects them
(Linear + ReLU), runs a GRU and keeps the state at the client's last real event; a linear map and
L2 normalisation give the client's embedding.  Its input is one float32 tensor (batch, seq_len,
fields) laid out as ``suites._events`` builds it (mask, categorical indices as floats, numbers):
categories are cast to long inside, and the padding needs no packing because events are
left-aligned and the state is gathered at ``length - 1``.  So the model exports to ONNX as is
(ONNX ``GRU`` op) and runs on every backend.

Training objective (``CoLESLoss``): each client's history yields ``views`` random contiguous
sub-sequences (CoLES's "random slices"); sub-sequences of one client are positives, of different
clients negatives, scored by the margin contrastive loss with hard-negative mining that CoLES uses.
Quality (``downstream_quality``): LightGBM fitted on the train clients' embeddings (early-stopped on
calib) predicts the downstream label; ROC-AUC on the judged split.  Embeddings come from the
predictor it is given, i.e. from the deployed artifact when ``judge`` calls it.

pytorch-lifestream is not used: it would downgrade numpy to 1.26 and pull spaCy and transformers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from petra_hw.suite import Metric, PredictFn, Splits

log = logging.getLogger(__name__)


class CoLESEncoder(nn.Module):
    """(batch, seq_len, 1 + categorical + numeric) -> (batch, output_dim), unit-norm rows."""

    def __init__(
        self,
        cardinalities: Sequence[int],
        num_numeric: int,
        *,
        embedding_dim: int = 16,
        hidden: int = 64,
        output_dim: int = 64,
    ) -> None:
        super().__init__()
        self.embeddings = nn.ModuleList(nn.Embedding(n, embedding_dim) for n in cardinalities)
        self.project = nn.Linear(len(cardinalities) * embedding_dim + num_numeric, hidden)
        self.rnn = nn.GRU(hidden, hidden, batch_first=True)
        self.head = nn.Linear(hidden, output_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        first_numeric = 1 + len(self.embeddings)
        fields = [emb(x[..., 1 + i].long()) for i, emb in enumerate(self.embeddings)]
        events = torch.relu(self.project(torch.cat([*fields, x[..., first_numeric:]], dim=-1)))
        states, _ = self.rnn(events)
        last = (x[..., 0].sum(dim=1).long() - 1).clamp_min(0)
        state = states.gather(1, last.view(-1, 1, 1).expand(-1, 1, states.shape[-1])).squeeze(1)
        return F.normalize(self.head(state), dim=-1)


def sample_slices(
    x: torch.Tensor, views: int, min_fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``views`` random contiguous sub-sequences of each row, left-aligned, re-padded.

    Row ``i`` of the input gives rows ``i * views .. i * views + views - 1``.  A slice keeps at
    least ``min_fraction`` of the history (and at least one event).  The time axis is cut to the
    longest slice: padding after it would not change the encoder's output, only cost time.
    """
    batch, seq_len, fields = x.shape
    lengths = x[..., 0].sum(dim=1).long().clamp_min(1).repeat_interleave(views)
    shortest = (lengths.float() * min_fraction).ceil().long().clamp(1)
    u = torch.rand(2, batch * views, generator=generator)
    size = shortest + (u[0] * (lengths - shortest + 1)).long().clamp_max(lengths - shortest)
    start = (u[1] * (lengths - size + 1)).long().clamp_max(lengths - size)
    steps = torch.arange(seq_len)
    index = (start[:, None] + steps[None]).clamp_max(seq_len - 1)
    rows = x.repeat_interleave(views, dim=0).gather(1, index[..., None].expand(-1, -1, fields))
    rows = rows * (steps[None] < size[:, None])[..., None]
    return rows[:, : int(size.max())]


def contrastive_loss(
    z: torch.Tensor, groups: torch.Tensor, margin: float, negatives: int
) -> torch.Tensor:
    """Margin contrastive loss: d^2 over positive pairs, relu(margin - d)^2 over each row's
    ``negatives`` closest rows of other groups (hard-negative mining).

    Squared distances come from inner products, and only negatives take a square root (of a
    clamped value), so identical embeddings -- e.g. the slices of a one-event history -- have
    finite gradients.
    """
    sq = z.pow(2).sum(dim=1)
    d2 = (sq[:, None] + sq[None, :] - 2 * z @ z.T).clamp_min(0)
    same = groups[:, None] == groups[None, :]
    off_diagonal = ~torch.eye(len(z), dtype=torch.bool)
    terms = [d2[same & off_diagonal]]
    k = min(negatives, int((~same[0]).sum()))
    if k > 0:
        hardest = d2.masked_fill(same, float("inf")).topk(k, dim=1, largest=False).values
        terms.append(F.relu(margin - hardest.clamp_min(1e-12).sqrt()).pow(2).flatten())
    return torch.cat(terms).mean()


@dataclass(frozen=True)
class CoLESLoss:
    """The suite's training objective (``Suite.loss_fn``); the label ``y`` is not used.

    In eval mode (the early-stopping monitor) slices come from a fixed generator, so monitor
    losses of different epochs are comparable.
    """

    views: int = 4
    min_fraction: float = 0.3
    margin: float = 0.5
    negatives: int = 5

    def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        generator = None if model.training else torch.Generator().manual_seed(0)
        slices = sample_slices(x, self.views, self.min_fraction, generator)
        groups = torch.arange(len(x)).repeat_interleave(self.views)
        return contrastive_loss(model(slices), groups, self.margin, self.negatives)


def _roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(labels, scores))


ROC_AUC = Metric("roc_auc", True, _roc_auc)


def downstream_quality(predict: PredictFn, splits: Splits, name: str) -> float:
    """ROC-AUC on split ``name`` of LightGBM fitted on the train embeddings from ``predict``."""
    import lightgbm as lgb

    model = lgb.LGBMClassifier(
        n_estimators=500,
        learning_rate=0.05,
        num_leaves=31,
        min_child_samples=20,
        subsample=0.8,
        subsample_freq=1,
        colsample_bytree=0.8,
        random_state=0,
        deterministic=True,
        force_row_wise=True,
        n_jobs=torch.get_num_threads(),
        verbose=-1,
    )
    calib = splits.calib
    model.fit(
        splits.train.outputs(predict),
        splits.train.targets().numpy(),
        eval_X=(calib.outputs(predict),),
        eval_y=(calib.targets().numpy(),),
        eval_metric="auc",
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    judged = splits.by_name(name)
    scores = model.predict_proba(judged.outputs(predict))[:, 1]
    log.debug("LightGBM: %d trees (early-stopped on calib)", model.best_iteration_)
    return ROC_AUC(scores, judged.targets().numpy())
