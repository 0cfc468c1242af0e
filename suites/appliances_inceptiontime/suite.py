"""appliances-inceptiontime: daily appliance energy from the UCI Appliances Energy log, InceptionTime.

The Monash TSER "AppliancesEnergy" task (Tan et al. 2021; the paper's Table 5) built from the real
sensor log: one series per complete day, 144 ten-minute steps x 24 channels, target = that day's
total appliance energy in kWh (sum of the ``Appliances`` Wh column / 1000).  The 24 channels are the
archive's: temperature and humidity of the nine rooms (T1..T9, RH_1..RH_9) and the six weather
readings of the nearest station (T_out, Press_mm_hg, RH_out, Windspeed, Visibility, Tdewpoint).
``Appliances`` is the target, ``lights`` is another sub-meter of the same house (it would leak part
of the target's occupancy signal and is not in the archive), ``rv1``/``rv2`` are random by design.

Split by date: the days are cut into 7-day blocks from the first complete day, and whole blocks are
dealt in date order round the cycle train, train, val, train, calib, train, test (4:1:1:1), starting
at a position set by the seed.  No day and no week is in two splits, and every split spans the
season: with a random draw of 15 blocks one split can hold only the warm May weeks, which the train
weeks never show.  Channels are standardized with the train days' statistics; so is the target
(``Splits.target_scale``), and RMSE is reported in kWh.

The Monash files themselves are used when a data root holds ``AppliancesEnergy_TRAIN.ts`` and
``AppliancesEnergy_TEST.ts`` (directly or in ``AppliancesEnergy/``): TEST is the test split, TRAIN
is split at random (seeded) into train / calib / val.
"""

from __future__ import annotations

import csv
import logging
from datetime import date, datetime
from pathlib import Path

import numpy as np
import torch

from petra_hw.errors import UserError
from petra_hw.suite import (
    RMSE,
    DataContext,
    Split,
    Splits,
    Suite,
    TrainConfig,
    data_roots,
    stratified_split,
)
from suites._inceptiontime import InceptionTime
from suites._tsfile import read_ts

log = logging.getLogger(__name__)

CHANNELS = (  # the log's column order: T1, RH_1, ..., T9, RH_9, then the weather station
    *(name for i in range(1, 10) for name in (f"T{i}", f"RH_{i}")),
    "T_out",
    "Press_mm_hg",
    "RH_out",
    "Windspeed",
    "Visibility",
    "Tdewpoint",
)
STEPS_PER_DAY = 144  # ten-minute readings
BLOCK_DAYS = 7
BLOCK_CYCLE = (0, 0, 2, 0, 1, 0, 3)  # split index (train, calib, val, test) of successive blocks
TS_TRAIN_FRACTIONS = (0.7, 0.12, 0.18)  # train, calib, val (of the Monash TRAIN cases)
CSV_PATH = "appliances_energy/energydata_complete.csv"
TS_DIRS = ("AppliancesEnergy", ".")
HINT = (
    "Provide the UCI log (appliances_energy/energydata_complete.csv) or the Monash "
    "AppliancesEnergy_TRAIN.ts/_TEST.ts files via --data-dir or $PETRA_DATA_DIR."
)
_TIME_FORMATS = ("%d/%m/%Y %H:%M", "%Y-%m-%d %H:%M:%S")


def _parse_time(text: str) -> datetime:
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt)
        except ValueError:
            continue
    raise UserError(f"unrecognised time stamp {text!r} in the Appliances Energy log")


def read_days(path: Path) -> tuple[list[date], np.ndarray, np.ndarray]:
    """Complete days of the log: (days, x (days, 24, 144) float32, y (days,) kWh)."""
    by_day: dict[date, list[tuple[datetime, list[float], float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            t = _parse_time(row["date"])
            values = [float(row[c]) for c in CHANNELS]
            by_day.setdefault(t.date(), []).append((t, values, float(row["Appliances"])))
    days, xs, ys = [], [], []
    for day in sorted(by_day):
        rows = sorted(by_day[day])
        minutes = [r[0].hour * 60 + r[0].minute for r in rows]
        if minutes != list(range(0, 24 * 60, 10)):
            continue  # an incomplete day (the log starts or ends mid-day)
        days.append(day)
        xs.append(np.asarray([r[1] for r in rows], dtype=np.float32).T)
        ys.append(sum(r[2] for r in rows) / 1000.0)
    if not days:
        raise UserError(f"{path}: no complete day of {STEPS_PER_DAY} ten-minute readings")
    return days, np.stack(xs), np.asarray(ys)


def block_split(days: list[date], seed: int) -> list[np.ndarray]:
    """Indices of the days in train / calib / val / test: whole 7-day blocks round the cycle."""
    blocks = np.asarray([(d - days[0]).days // BLOCK_DAYS for d in days])
    split = np.asarray(BLOCK_CYCLE)[(blocks + seed) % len(BLOCK_CYCLE)]
    return [np.flatnonzero(split == i) for i in range(4)]


def standardized_splits(
    x: np.ndarray, y: np.ndarray, ids: np.ndarray, parts: list[np.ndarray]
) -> Splits:
    """Splits with channels and target standardized by the train part's statistics."""
    train, x = parts[0], x.astype(np.float64)  # float32 sums drift for ~750 mm Hg readings
    mean = np.nanmean(x[train], axis=(0, 2), keepdims=True)
    std = np.nanstd(x[train], axis=(0, 2), keepdims=True) + 1e-6
    xs = np.nan_to_num((x - mean) / std).astype(np.float32)  # a missing value becomes the mean
    y_mean, y_std = float(y[train].mean()), float(y[train].std() + 1e-12)
    ys = ((y - y_mean) / y_std).astype(np.float32)

    def split(idx: np.ndarray) -> Split:
        return Split(torch.from_numpy(xs[idx]), torch.from_numpy(ys[idx]), ids[idx])

    return Splits(*(split(p) for p in parts), target_scale=(y_mean, y_std))


def _from_ts(train_path: Path, test_path: Path, seed: int) -> Splits:
    x_tr, y_tr = read_ts(train_path)
    x_te, y_te = read_ts(test_path)
    for path, x in ((train_path, x_tr), (test_path, x_te)):
        if x.shape[1:] != (len(CHANNELS), STEPS_PER_DAY):
            raise UserError(
                f"{path}: series of shape {x.shape[1:]}, expected {len(CHANNELS)} channels x "
                f"{STEPS_PER_DAY} steps"
            )
    parts = stratified_split(y_tr, TS_TRAIN_FRACTIONS, seed)
    test = np.arange(len(y_tr), len(y_tr) + len(y_te))
    ids = np.arange(len(y_tr) + len(y_te))
    return standardized_splits(np.concatenate([x_tr, x_te]), np.r_[y_tr, y_te], ids, [*parts, test])


def _from_csv(path: Path, seed: int) -> Splits:
    days, x, y = read_days(path)
    ids = np.asarray([d.toordinal() for d in days])
    return standardized_splits(x, y, ids, block_split(days, seed))


def load_appliances(ctx: DataContext) -> Splits:
    """The first data root holding the Monash .ts pair or the UCI log wins."""
    seen = []
    for root in data_roots(ctx.data_dir):
        for folder in TS_DIRS:
            train = root / folder / "AppliancesEnergy_TRAIN.ts"
            test = train.with_name("AppliancesEnergy_TEST.ts")
            if train.exists() and test.exists():
                log.info("AppliancesEnergy from the Monash files in %s", train.parent)
                return _from_ts(train, test, ctx.seed)
        if (root / CSV_PATH).exists():
            return _from_csv(root / CSV_PATH, ctx.seed)
        seen.append(str(root.resolve()))
    raise UserError(
        f"Appliances Energy data not found under {'; '.join(dict.fromkeys(seen))}. {HINT}"
    )


def build_inceptiontime(**kwargs: int) -> InceptionTime:
    """InceptionTime for the 24 channels with one regression output (kwargs: depth, filters...)."""
    return InceptionTime(len(CHANNELS), 1, **kwargs)


SUITE = Suite(
    name="appliances-inceptiontime",
    task="regression",
    build_model=build_inceptiontime,
    load_splits=load_appliances,
    metric=RMSE,
    input_shape=(len(CHANNELS), STEPS_PER_DAY),
    train=TrainConfig(epochs=150, batch_size=16, optimizer="adam", lr=1e-3),
    description="UCI Appliances Energy, one series per day (24 x 144), daily kWh; InceptionTime",
    num_outputs=1,
)
