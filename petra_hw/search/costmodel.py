"""A learned cost model: batch-1 latency and throughput of a candidate from its untrained graph.

Fitted online on the run's own measurements (``add``): each measurement is the features of the
candidate's structure (``petra_hw.search.features``) and the latency / throughput its artifact
measured.  The predictor is a small bootstrap ensemble of LightGBM regressors on log targets with
linear leaves (``linear_tree``), so it extrapolates along log-MACs from a handful of points; the
members' spread is the uncertainty that ``petra_hw.search.guide`` turns into an expected
hypervolume improvement.  Everything is seeded and single-threaded: the same measurements in the
same order give the same model, which is how a resumed run rebuilds it from its journal.

Accuracy is measured *prequentially*: once the model is ready, each new measurement is predicted
before it joins the training set, so every reported figure (Spearman rank correlation, mean
relative error) is on held-out measurements.  Below ``min_train`` measurements the model is not
ready (cold start) and the guide falls back to plain mutation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass

import lightgbm as lgb
import numpy as np
from scipy.stats import spearmanr

log = logging.getLogger(__name__)

TARGETS = ("latency_ms", "throughput_ips")
MIN_TRAIN = 6
MEMBERS = 5
_PARAMS = {
    "n_estimators": 40,
    "learning_rate": 0.15,
    "num_leaves": 4,
    "min_child_samples": 2,
    "min_data_in_bin": 1,
    "linear_tree": True,
    "linear_lambda": 1.0,
    "deterministic": True,
    "n_jobs": 1,
    "verbose": -1,
}


@dataclass(frozen=True)
class Measurement:
    """One training row: a candidate's features and what its artifact measured."""

    id: str
    features: tuple[tuple[str, float], ...]
    targets: tuple[float, ...]  # in TARGETS order


@dataclass(frozen=True)
class Prediction:
    """Per target, the members' predictions (rows: members, columns: candidates)."""

    samples: dict[str, np.ndarray]

    def mean(self, target: str) -> np.ndarray:
        return self.samples[target].mean(axis=0)

    def std(self, target: str) -> np.ndarray:
        return self.samples[target].std(axis=0)


class CostModel:
    """Online LightGBM ensemble predicting ``TARGETS`` from structure features."""

    def __init__(self, min_train: int = MIN_TRAIN, members: int = MEMBERS, seed: int = 0):
        self.min_train = max(2, int(min_train))
        self.members = max(1, int(members))
        self.seed = int(seed)
        self.rows: list[Measurement] = []
        self.heldout: dict[str, list[tuple[float, float]]] = {t: [] for t in TARGETS}
        self._columns: list[str] = []
        self._models: dict[str, list[lgb.LGBMRegressor]] = {}
        self._fitted_on = -1

    @property
    def ready(self) -> bool:
        return len(self.rows) >= self.min_train

    def add(self, m: Measurement) -> None:
        """A new measurement: predicted first (held out) when the model is ready, then learned."""
        if any(r.id == m.id for r in self.rows):
            return
        if not all(math.isfinite(v) and v > 0 for v in m.targets):
            return
        if self.ready:
            pred = self.predict([m.features])
            for t, actual in zip(TARGETS, m.targets, strict=True):
                self.heldout[t].append((float(pred.mean(t)[0]), actual))
        self.rows.append(m)

    def _matrix(self, features: list[tuple[tuple[str, float], ...]]) -> np.ndarray:
        X = np.zeros((len(features), len(self._columns)))
        index = {c: j for j, c in enumerate(self._columns)}
        for i, f in enumerate(features):
            for name, value in f:
                j = index.get(name)
                if j is not None:
                    X[i, j] = value
        return X

    def _fit(self) -> None:
        if self._fitted_on == len(self.rows):
            return
        self._columns = sorted({name for r in self.rows for name, _ in r.features})
        X = self._matrix([r.features for r in self.rows])
        Y = np.log(np.array([r.targets for r in self.rows]))
        rng = np.random.default_rng(self.seed)
        n = len(self.rows)
        picks = [np.arange(n)] + [rng.integers(n, size=n) for _ in range(self.members - 1)]
        self._models = {
            t: [
                lgb.LGBMRegressor(**_PARAMS, random_state=self.seed + i).fit(X[idx], Y[idx, k])
                for i, idx in enumerate(picks)
            ]
            for k, t in enumerate(TARGETS)
        }
        self._fitted_on = n

    def predict(self, features: list[tuple[tuple[str, float], ...]]) -> Prediction:
        """Each member's prediction in the targets' units (needs ``ready``)."""
        if not self.ready:
            raise RuntimeError(f"the cost model needs {self.min_train} measurements to predict")
        self._fit()
        X = self._matrix(features)
        return Prediction(
            {t: np.exp(np.stack([m.predict(X) for m in self._models[t]])) for t in TARGETS}
        )

    def training_digest(self) -> str:
        """A hash of the training set (ids and targets, in order): equal after a resume."""
        data = [[r.id, list(r.targets)] for r in self.rows]
        return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:16]

    def accuracy(self) -> dict[str, float | int | None]:
        """Spearman rank correlation and mean relative error per target, on held-out rows."""
        out: dict[str, float | int | None] = {}
        for t in TARGETS:
            pairs = self.heldout[t]
            out[f"heldout_{t}"] = len(pairs)
            pred = np.array([p for p, _ in pairs])
            actual = np.array([a for _, a in pairs])
            rho = None
            if len(pairs) >= 3 and np.ptp(pred) > 0 and np.ptp(actual) > 0:
                rho = float(spearmanr(pred, actual).statistic)
            out[f"spearman_{t}"] = rho
            out[f"mre_{t}"] = float(np.mean(np.abs(pred - actual) / actual)) if pairs else None
        return out

    def summary(self) -> dict[str, object]:
        return {
            "ready": self.ready,
            "n_train": len(self.rows),
            "min_train": self.min_train,
            "training_digest": self.training_digest(),
            **self.accuracy(),
        }
