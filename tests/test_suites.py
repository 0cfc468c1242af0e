from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from petra_hw.errors import UserError
from petra_hw.suite import DataContext, load_suite, stratified_split

REPO = Path(__file__).resolve().parents[1]


def _ids(splits) -> list[np.ndarray]:
    return [splits.by_name(n).ids for n in ("train", "calib", "val", "test")]


@pytest.mark.parametrize("name", ["digits", "digits-wide", "cifar10-resnet20"])
def test_splits_are_disjoint_and_deterministic(name: str) -> None:
    suite = load_suite(name)
    a = suite.load_splits(DataContext(None, 0))
    b = suite.load_splits(DataContext(None, 0))
    c = suite.load_splits(DataContext(None, 1))
    ids = _ids(a)
    for i, x in enumerate(ids):
        for y in ids[i + 1 :]:
            assert not set(x) & set(y)
    for x, y in zip(ids, _ids(b)):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(ids[:3], _ids(c)[:3]))
    assert all(len(s) > 0 for s in (a.train, a.calib, a.val, a.test))
    assert tuple(a.train.inputs().shape[1:]) == suite.input_shape


def test_stratified_split_keeps_class_balance() -> None:
    y = np.repeat(np.arange(5), 100)
    parts = stratified_split(y, (0.6, 0.2, 0.2), seed=3)
    assert sum(len(p) for p in parts) == len(y)
    for p in parts:
        counts = np.bincount(y[p], minlength=5)
        assert counts.max() - counts.min() <= 1


def test_missing_data_says_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETRA_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="CIFAR-10 not found under .*nowhere.*--data-dir"):
        load_suite("cifar10-resnet20").load_splits(DataContext(tmp_path / "empty", 0))


def test_data_dir_flag_wins(tmp_path, monkeypatch) -> None:
    src = REPO.parent / "shared" / "data" / "cifar10_subset"
    if not src.exists():
        pytest.skip("shared data not beside the checkout")
    (tmp_path / "cifar10_subset").mkdir()
    os.symlink(src / "cifar10_subset.npz", tmp_path / "cifar10_subset" / "cifar10_subset.npz")
    monkeypatch.chdir(tmp_path)
    splits = load_suite("cifar10-resnet18").load_splits(DataContext(tmp_path, 0))
    assert len(splits.test) == 761


def test_user_suite_by_path_and_bad_files(tmp_path) -> None:
    good = tmp_path / "mine.py"
    good.write_text(
        (REPO / "suites" / "digits" / "suite.py")
        .read_text()
        .replace('name="digits"', 'name="mine"')
    )
    assert load_suite(str(good)).name == "mine"
    bad = tmp_path / "bad.py"
    bad.write_text("raise RuntimeError('boom')\n")
    with pytest.raises(UserError, match="cannot load suite file .*boom"):
        load_suite(str(bad))
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(UserError, match="defines no SUITE"):
        load_suite(str(empty))
    with pytest.raises(UserError, match="unknown suite 'nope'"):
        load_suite("nope")


def test_baseline_is_trained_once_and_cached(digits) -> None:
    from petra_hw.baseline import get_baseline, score

    again = get_baseline(digits.suite, 0)
    assert again.cached and again.state_hash == digits.state_hash
    assert digits.metrics["test"] >= 0.9
    assert score(digits.suite, again.model, again.splits.test) == pytest.approx(
        digits.metrics["test"]
    )


def test_cifar_augmentation_crops_and_flips_reproducibly() -> None:
    import torch

    from suites._cifar import augment

    x = torch.arange(2 * 3 * 32 * 32, dtype=torch.float32).reshape(2, 3, 32, 32)
    a = augment(x, torch.Generator().manual_seed(0))
    b = augment(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)  # seeded like the training order
    many = [augment(x, torch.Generator().manual_seed(s)) for s in range(1, 9)]
    assert any(not torch.equal(m, x) for m in many)  # it does move the image
    # every output pixel is an input pixel or padding (zero): a crop, not a resample
    values = set(x.flatten().tolist()) | {0.0}
    assert all(set(m.flatten().tolist()) <= values for m in many)


def test_baseline_key_follows_the_training_recipe() -> None:
    import dataclasses

    from petra_hw.suite import load_suite

    suite = load_suite("cifar10-resnet20")
    short = dataclasses.replace(suite, train=dataclasses.replace(suite.train, epochs=4))
    assert suite.train.augment is not None and suite.train.early_stop_patience() is None
    assert short.code_version() != suite.code_version()


def test_baseline_training_reports_each_epoch(tmp_path, monkeypatch) -> None:
    """A first run trains for up to an hour: the caller must see it is alive, epoch by epoch."""
    from petra_hw.baseline import get_baseline
    from petra_hw.suite import load_suite

    monkeypatch.setenv("PETRA_HW_CACHE", str(tmp_path))
    seen: list[tuple[int, int, float, float]] = []
    fresh = get_baseline(load_suite("digits"), 0, on_epoch=lambda *a: seen.append(a))
    assert not fresh.cached
    assert [e for e, *_ in seen] == list(range(1, fresh.metrics["epochs_run"] + 1))
    assert all(total == load_suite("digits").train.epochs for _, total, _, _ in seen)
    assert [s for *_, s in seen] == sorted(s for *_, s in seen)


def test_whole_schedule_training_keeps_the_final_weights() -> None:
    """patience=None (a suite's patience=0) never stops early and never rolls back to the best
    calib-loss epoch: the schedule's low-rate tail is kept even when calib loss rose."""
    import copy

    import torch
    from torch import nn

    from petra_hw.suite import Split
    from petra_hw.training import train

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 6, generator=g)
    y = torch.randint(0, 3, (96,), generator=g)
    # a monitor whose labels disagree with train: its loss rises while training fits train
    monitor = Split(x[:32], (y[:32] + 1) % 3)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 3))
    early = copy.deepcopy(model)
    whole = train(model, Split(x, y), epochs=12, lr=1e-2, monitor=monitor, patience=None)
    assert whole.epochs_run == 12 and not whole.stopped_early
    assert whole.monitor_history[-1] > min(whole.monitor_history)  # would have rolled back
    stopped = train(early, Split(x, y), epochs=12, lr=1e-2, monitor=monitor, patience=2)
    assert stopped.stopped_early and stopped.epochs_run < 12


def test_finishing_epochs_train_on_clean_inputs_after_the_schedule(tmp_path, monkeypatch) -> None:
    """finish_epochs run after the schedule, without the augmentation, and count in progress."""
    import dataclasses

    from petra_hw.baseline import get_baseline
    from petra_hw.suite import load_suite

    monkeypatch.setenv("PETRA_HW_CACHE", str(tmp_path))
    digits = load_suite("digits")
    calls: list[int] = []

    def counting_augment(x, gen):
        calls.append(len(x))
        return x

    train = dataclasses.replace(digits.train, epochs=2, augment=counting_augment, finish_epochs=2)
    suite = dataclasses.replace(digits, train=train)
    assert (
        suite.code_version()
        != dataclasses.replace(
            suite, train=dataclasses.replace(train, finish_epochs=0)
        ).code_version()
    )
    seen: list[tuple[int, int]] = []
    fresh = get_baseline(suite, 0, on_epoch=lambda e, n, *_: seen.append((e, n)))
    augmented_batches = len(calls)
    assert fresh.metrics["epochs_run"] == len(seen) > 2
    assert [e for e, _ in seen] == list(range(1, len(seen) + 1)) and {n for _, n in seen} == {4}
    # only the two scheduled epochs augmented: as many batches as two passes over train
    batches_per_epoch = -(-len(fresh.splits.train) // train.batch_size)
    assert augmented_batches <= 2 * batches_per_epoch
