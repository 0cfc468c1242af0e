"""Streaming splits: a split read from a torch Dataset gives what the same data as tensors gives.

The digits baseline is judged, calibrated (ORT static INT8 and NNCF's QAT initialisation) and
trained once on its tensor splits and once on the same rows behind a plain map-style Dataset
(no ``targets`` attribute, so every reader goes through the loader); every figure must be equal,
bit for bit.  A Dataset-backed ``Suite.from_torch`` suite tunes with loader worker processes, and
no library code reads a split's tensors directly.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path

import pytest
import torch
from api_suite import make_streamed_suite
from torch.utils.data import Dataset

import petra_hw
from petra_hw.assess import compile_model, judge
from petra_hw.baseline import predict, predict_split
from petra_hw.pipeline import Pipeline
from petra_hw.steps.base import StepContext
from petra_hw.steps.qat import _quantize
from petra_hw.suite import SPLIT_NAMES, Split, Splits
from petra_hw.training import evaluate_loss, make_loss, train

ROOT = Path(__file__).resolve().parents[1]
FAST = str(Path(__file__).parent / "data" / "cpu-fast.toml")


class Rows(Dataset):
    """Rows of two tensors, one sample at a time, as a user's dataset serves them."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


def streamed(splits: Splits, num_workers: int = 0) -> Splits:
    """The same splits, each behind a Dataset read through the loader."""

    def one(split: Split) -> Split:
        rows = Rows(split.inputs(), split.targets())
        return Split.from_dataset(rows, split.ids, num_workers=num_workers)

    return Splits(*(one(getattr(splits, n)) for n in SPLIT_NAMES), splits.target_scale)


@pytest.fixture(scope="module")
def both(digits) -> tuple[Splits, Splits]:
    small = Splits(
        digits.splits.train.take(256), digits.splits.calib.take(96), digits.splits.val,
        digits.splits.test,
    )  # fmt: skip
    return small, streamed(small)


def test_a_streamed_split_reads_the_same_rows(both) -> None:
    tensors, data = both
    assert data.train.streaming and not tensors.train.streaming
    for name in SPLIT_NAMES:
        a, b = tensors.by_name(name), data.by_name(name)
        assert len(a) == len(b)
        assert torch.equal(a.targets(), b.targets())
        assert torch.equal(a.inputs(10), b.inputs(10))
    order = torch.randperm(len(tensors.train), generator=torch.Generator().manual_seed(3))
    for (xa, ya), (xb, yb) in zip(
        tensors.train.batches(64, order), data.train.batches(64, order), strict=True
    ):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    sub = [5, 1, 9]
    assert torch.equal(tensors.train.subset(sub).inputs(), data.train.subset(sub).inputs())
    assert list(data.train.subset(sub).ids) == list(tensors.train.ids[sub])


def test_metrics_and_calibration_ranges_are_equal(digits, both, cpu_profile, tmp_path) -> None:
    tensors, data = both
    model = digits.model
    for name in ("val", "test"):
        eager = digits.suite.score(lambda x: predict(model, x), tensors, name)
        assert digits.suite.score(lambda x: predict(model, x), data, name) == eager
    reference = {n: predict_split(model, tensors.by_name(n)) for n in ("val", "test")}
    results = []
    for tag, splits in (("tensors", tensors), ("dataset", data)):
        art = compile_model(
            model, digits.suite, splits, cpu_profile, "onnxruntime", "int8", tmp_path / tag
        )
        results.append((art, judge(art, digits.suite, splits, cpu_profile, reference)))
    (a, ja), (b, jb) = results
    # same calibration ranges: the quantized model files (scales, zero points) are identical
    assert a.all_files == b.all_files
    assert ja.quality == jb.quality and ja.parity == jb.parity


def test_nncf_calibration_and_training_are_equal(digits, both) -> None:
    tensors, data = both
    ctx = {
        tag: StepContext(digits.suite, splits, Pipeline.parse("QAT"))
        for tag, splits in (("tensors", tensors), ("dataset", data))
    }
    qa = _quantize(copy.deepcopy(digits.model), ctx["tensors"]).state_dict()
    qb = _quantize(copy.deepcopy(digits.model), ctx["dataset"]).state_dict()
    assert qa.keys() == qb.keys()
    assert all(torch.equal(qa[k], qb[k]) for k in qa)  # NNCF's ranges, bit for bit
    trained = []
    for splits in (tensors, data):
        model = copy.deepcopy(digits.model)
        train(model, splits.train, epochs=2, lr=1e-3, monitor=splits.calib, seed=1)
        trained.append(model.state_dict())
    assert all(torch.equal(trained[0][k], trained[1][k]) for k in trained[0])
    loss = make_loss("default", "cross_entropy")
    assert evaluate_loss(digits.model, tensors.val, loss) == evaluate_loss(
        digits.model, data.val, loss
    )


def test_loader_worker_processes_read_the_same_batches(both) -> None:
    tensors, _ = both
    two = streamed(Splits(tensors.calib, tensors.calib, tensors.calib, tensors.calib), 2)
    assert two.calib.num_workers == 2
    got = torch.cat([x for x, _ in two.calib.batches(32)])
    assert torch.equal(got, tensors.calib.inputs())


def test_a_dataset_backed_python_suite_tunes_with_loader_workers(tmp_path) -> None:
    suite = make_streamed_suite()
    assert suite.num_workers == 1
    splits = suite.read_splits(petra_hw.suite.DataContext(None, 0))
    assert all(splits.by_name(n).streaming for n in SPLIT_NAMES)
    assert splits.train.num_workers == 1
    run = petra_hw.tune(suite, device=FAST, out=tmp_path, evaluations=2, references=False)
    assert any(e.ok and e.candidate.pipeline.steps for e in run.evaluations), [
        (e.error_kind, e.error) for e in run.evaluations
    ]
    assert run.original.quality["val"] > 0.8


def test_no_library_code_reads_split_tensors() -> None:
    """Every reader goes through the Split API, so a streamed split works everywhere."""
    pattern = re.compile(r"\.(x|y)\b(?!\s*=)")
    offenders = []
    for folder in ("petra_hw", "backends", "suites"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            for no, line in enumerate(path.read_text().splitlines(), 1):
                code = line.split("#", 1)[0]
                if pattern.search(code):
                    offenders.append(f"{path.relative_to(ROOT)}:{no}: {line.strip()}")
    assert not offenders, offenders


def test_prediction_batches_are_bounded_in_bytes(digits) -> None:
    """Small inputs keep 256 a batch (and their results); 224 px images get fewer."""
    assert digits.splits.val.eval_batch_size() == 256
    images = Split.from_dataset(Rows(torch.zeros(40, 3, 224, 224), torch.zeros(40)))
    assert images.eval_batch_size() == 16 * 1024**2 // (3 * 224 * 224 * 4) == 27
    sizes = [len(x) for x, _ in images.batches(images.eval_batch_size())]
    assert sizes == [27, 13]
