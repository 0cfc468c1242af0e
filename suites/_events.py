"""Event sequences for the CoLES suite: the real CDNOW purchase log and a synthetic card log.

Both become one float32 tensor per split, shape (clients, seq_len, fields), so the model is a plain
single-input network that exports to ONNX: field 0 is the mask (1 for an event, 0 for padding;
events are left-aligned, padding follows), then the categorical fields as float indices, then the
numeric fields (standardized with the train clients' events).  Splits are by client, stratified by
the downstream label: no client is in two splits.

CDNOW (Fader & Hardie; shipped in the ``Lifetimes`` package): 69,659 purchases by the 23,570
customers of CDNOW's first-quarter-1997 cohort, 1997-01 to 1998-06.  The history is every purchase
up to the cutoff (30 Sep 1997, nine months); the label is whether the customer buys again in the
next 182 days (1 Oct 1997 - 31 Mar 1998), 25.8 % positive.  Per purchase: weekday and number of CDs
(1..10+) as categories, log dollar value, log days since the previous purchase and log days before
the cutoff as numbers.  The last ``seq_len`` purchases are kept (32 covers 99 % of customers).
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from petra_hw.errors import UserError
from petra_hw.suite import Split, Splits, stratified_split

CLIENT_FRACTIONS = (0.6, 0.1, 0.15, 0.15)  # train, calib, val, test (of the clients)


@dataclass(frozen=True)
class EventSchema:
    """Field names: categorical ones with their number of categories, then numeric ones."""

    categorical: tuple[tuple[str, int], ...]
    numeric: tuple[str, ...]

    @property
    def cardinalities(self) -> tuple[int, ...]:
        return tuple(n for _, n in self.categorical)

    @property
    def num_fields(self) -> int:
        return 1 + len(self.categorical) + len(self.numeric)


@dataclass(frozen=True)
class EventSequences:
    """Per-client padded event fields, the downstream label and the client id."""

    schema: EventSchema
    cats: np.ndarray  # (clients, seq_len, categorical) int64
    nums: np.ndarray  # (clients, seq_len, numeric) float32
    lengths: np.ndarray  # (clients,) events kept per client, >= 1
    labels: np.ndarray  # (clients,) int64
    client_ids: np.ndarray  # (clients,)


def pack(
    client: np.ndarray,
    order_key: np.ndarray,
    cats: np.ndarray,
    nums: np.ndarray,
    seq_len: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Group events by client in ``order_key`` order, keep each client's last ``seq_len``.

    Returns (client ids, cats (n, seq_len, c), nums (n, seq_len, k), lengths).
    """
    order = np.lexsort((order_key, client))
    client, cats, nums = client[order], cats[order], nums[order]
    ids, start, count = np.unique(client, return_index=True, return_counts=True)
    group = np.repeat(np.arange(len(ids)), count)
    pos = np.arange(len(client)) - start[group] - np.maximum(count - seq_len, 0)[group]
    keep = pos >= 0
    out_cats = np.zeros((len(ids), seq_len, cats.shape[1]), dtype=np.int64)
    out_nums = np.zeros((len(ids), seq_len, nums.shape[1]), dtype=np.float32)
    out_cats[group[keep], pos[keep]] = cats[keep]
    out_nums[group[keep], pos[keep]] = nums[keep]
    return ids, out_cats, out_nums, np.minimum(count, seq_len)


# -- CDNOW --------------------------------------------------------------------------------------
CDNOW_SCHEMA = EventSchema(
    categorical=(("weekday", 7), ("cds", 10)),
    numeric=("log_dollars", "log_days_since_previous", "log_days_to_cutoff"),
)
CDNOW_CUTOFF = "1997-09-30"
CDNOW_HORIZON_DAYS = 182


def cdnow_path() -> Path:
    """``CDNOW_master.txt`` inside the installed Lifetimes package (found, not imported: its
    ``datasets`` module needs ``pkg_resources``, gone from new setuptools)."""
    spec = importlib.util.find_spec("lifetimes")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the CDNOW log ships in the 'Lifetimes' package: pip install Lifetimes")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "CDNOW_master.txt"
    if not path.exists():
        raise UserError(f"CDNOW log not found at {path}; reinstall the 'Lifetimes' package")
    return path


def read_cdnow() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(customer id, purchase day as datetime64[D], number of CDs, dollar value) per purchase."""
    raw = np.loadtxt(cdnow_path(), skiprows=1, dtype=np.float64)  # id, yyyymmdd, CDs, dollars
    ymd = raw[:, 1].astype(np.int64)
    days = np.array(
        [f"{d // 10000:04d}-{d // 100 % 100:02d}-{d % 100:02d}" for d in ymd], dtype="datetime64[D]"
    )
    return raw[:, 0].astype(np.int64), days, raw[:, 2].astype(np.int64), raw[:, 3]


def cdnow_sequences(
    seq_len: int = 32, cutoff: str = CDNOW_CUTOFF, horizon_days: int = CDNOW_HORIZON_DAYS
) -> EventSequences:
    """Purchase histories up to ``cutoff``; label: any purchase in the next ``horizon_days``."""
    client, day, cds, dollars = read_cdnow()
    cut = np.datetime64(cutoff, "D")
    buyers = np.unique(client[(day > cut) & (day <= cut + horizon_days)])
    past = day <= cut
    client, day, cds, dollars = client[past], day[past], cds[past], dollars[past]
    order = np.lexsort((day, client))
    previous = np.empty_like(day)
    previous[order] = np.r_[day[order][:1], day[order][:-1]]
    first = np.zeros(len(day), dtype=bool)
    first[order] = np.r_[True, client[order][1:] != client[order][:-1]]
    gap = np.where(first, 0, (day - previous).astype(np.int64))
    number = day.astype(np.int64)
    cats = np.stack([(number + 3) % 7, np.clip(cds, 1, 10) - 1], axis=1)  # 1970-01-01: Thursday
    nums = np.stack(
        [np.log1p(dollars), np.log1p(gap), np.log1p((cut - day).astype(np.int64))], axis=1
    ).astype(np.float32)
    ids, cats, nums, lengths = pack(client, number, cats, nums, seq_len)
    labels = np.isin(ids, buyers).astype(np.int64)
    return EventSequences(CDNOW_SCHEMA, cats, nums, lengths, labels, ids)


# -- synthetic card transactions -------------------------------------------------------------------
SYNTHETIC_SCHEMA = EventSchema(
    categorical=(("mcc", 100), ("type", 4), ("weekday", 7)),
    numeric=("log_amount", "log_days_since_previous"),
)
_PERSONAS = 4


def synthetic_transactions(n_clients: int, seq_len: int = 32, seed: int = 0) -> EventSequences:
    """Card transactions with MCC-like categories, for scale tests (any number of clients).

    Each client follows one of four personas (merchant-category preferences, transaction types,
    spending level, activity rate) plus three favourite merchant categories of its own; the label
    is whether the persona is 1 or 3, with 10 % of labels flipped.
    """
    rng = np.random.default_rng(seed)
    n_mcc, n_type = SYNTHETIC_SCHEMA.cardinalities[:2]
    mcc_pref = rng.dirichlet(np.full(n_mcc, 0.3), size=_PERSONAS)
    type_pref = rng.dirichlet(np.full(n_type, 1.0), size=_PERSONAS)
    spend = rng.normal(3.5, 0.6, size=_PERSONAS)
    rate = rng.uniform(0.3, 3.0, size=_PERSONAS)  # transactions per day
    mcc_level = rng.normal(0.0, 0.8, size=n_mcc)
    persona = rng.integers(0, _PERSONAS, n_clients)
    favourites = rng.integers(0, n_mcc, (n_clients, 3))
    lengths = rng.integers(min(4, seq_len), seq_len + 1, n_clients)
    client = np.repeat(np.arange(n_clients), lengths)
    p = persona[client]
    cdf = np.cumsum(mcc_pref, axis=1)[p]
    from_persona = np.minimum((cdf < rng.random(len(client))[:, None]).sum(1), n_mcc - 1)
    own = favourites[client, rng.integers(0, 3, len(client))]
    mcc = np.where(rng.random(len(client)) < 0.5, from_persona, own)
    tcdf = np.cumsum(type_pref, axis=1)[p]
    kind = np.minimum((tcdf < rng.random(len(client))[:, None]).sum(1), n_type - 1)
    gap = rng.exponential(1.0 / rate[p])  # days since the client's previous transaction
    first = np.cumsum(lengths) - lengths
    elapsed = np.cumsum(gap)
    elapsed -= np.repeat(elapsed[first] - gap[first], lengths)  # restart at each client
    day = rng.integers(0, 7, n_clients)[client] + np.floor(elapsed).astype(np.int64)
    amount = rng.lognormal(spend[p] + mcc_level[mcc], 0.5)
    cats = np.stack([mcc, kind, day % 7], axis=1)
    nums = np.stack([np.log1p(amount), np.log1p(gap)], axis=1).astype(np.float32)
    ids, cats, nums, lengths = pack(client, np.arange(len(client)), cats, nums, seq_len)
    labels = np.isin(persona, (1, 3)) ^ (rng.random(n_clients) < 0.1)
    return EventSequences(SYNTHETIC_SCHEMA, cats, nums, lengths, labels.astype(np.int64), ids)


# -- tensors and splits ------------------------------------------------------------------------------
def to_splits(events: EventSequences, seed: int) -> Splits:
    """Client-disjoint, label-stratified splits; numeric fields standardized on train events."""
    parts = stratified_split(events.labels, CLIENT_FRACTIONS, seed)
    seq_len = events.cats.shape[1]
    mask = np.arange(seq_len)[None, :] < events.lengths[:, None]
    train_events = events.nums[parts[0]][mask[parts[0]]]
    mean, std = train_events.mean(axis=0), train_events.std(axis=0) + 1e-6
    nums = np.where(mask[..., None], (events.nums - mean) / std, 0.0)
    x = np.concatenate([mask[..., None], events.cats, nums], axis=2).astype(np.float32)
    x[~mask] = 0.0

    def split(idx: np.ndarray) -> Split:
        return Split(
            torch.from_numpy(x[idx]), torch.from_numpy(events.labels[idx]), events.client_ids[idx]
        )

    return Splits(*(split(p) for p in parts))
