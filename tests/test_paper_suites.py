"""The paper's suites beyond CIFAR: Appliances Energy (InceptionTime), CDNOW / synthetic card
transactions (CoLES + LightGBM) and Imagenette (ResNet-18).

Real data where it ships (the UCI log in ../shared/data, CDNOW inside Lifetimes), a generated image
folder for Imagenette; tiny model widths so nothing trains a full baseline here.
"""

from __future__ import annotations

import dataclasses
import math
from datetime import date
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from PIL import Image
from torch import nn

from petra_hw.artifact import InputSpec
from petra_hw.errors import UserError
from petra_hw.onnx_export import export_onnx
from petra_hw.pipeline import Pipeline, Step
from petra_hw.steps import get_step
from petra_hw.steps.base import StepContext
from petra_hw.steps.lowrank import is_lowrank_pair
from petra_hw.suite import DataContext, Splits, Suite, load_suite
from petra_hw.training import compute_loss, make_loss
from suites._coles import contrastive_loss, sample_slices
from suites._events import cdnow_path, cdnow_sequences, synthetic_transactions, to_splits
from suites._tsfile import read_ts
from suites.appliances_inceptiontime.suite import (
    CHANNELS,
    CSV_PATH,
    build_inceptiontime,
    read_days,
)
from suites.imagenette_resnet18.suite import build_resnet18
from suites.imagenette_resnet18.suite import make_suite as make_imagenette
from suites.transactions_coles.suite import make_suite as make_transactions

SPLITS = ("train", "calib", "val", "test")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Plumbing tests: one intra-op thread, since MKL's SVD and OpenMP kernels slow down ~10x
    when two threads compete for two shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _ids(splits: Splits) -> list[np.ndarray]:
    return [splits.by_name(n).ids for n in SPLITS]


def _assert_disjoint(groups: list[np.ndarray]) -> None:
    for i, a in enumerate(groups):
        for b in groups[i + 1 :]:
            assert not set(a.tolist()) & set(b.tolist())


def _onnx_matches(model: nn.Module, x: torch.Tensor, path: Path, atol: float = 1e-4) -> None:
    model.eval()
    export_onnx(model, InputSpec("input", (None, *x.shape[1:])), path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"input": x.numpy()})
    with torch.no_grad():
        want = model(x).numpy()
    np.testing.assert_allclose(got, want, atol=atol, rtol=1e-3)


def _ctx(suite: Suite, splits: Splits | None, text: str) -> StepContext:
    return StepContext(suite=suite, splits=splits, pipeline=Pipeline.parse(text), seed=0)


def _apply(kind: str, model: nn.Module, suite: Suite, splits: Splits | None, **params):
    return get_step(kind)(model, Step.make(kind, **params), _ctx(suite, splits, kind))


def _params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- Appliances Energy ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def appliances_csv() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / CSV_PATH
    if not path.exists():
        pytest.skip("shared data not beside the checkout")
    return path


def test_appliances_days_are_complete_and_sum_the_target(appliances_csv) -> None:
    days, x, y = read_days(appliances_csv)
    # the log runs 2016-02-14 00:00 .. 2016-05-27 18:00: 103 complete days
    assert (days[0], days[-1], len(days)) == (date(2016, 2, 14), date(2016, 5, 26), 103)
    assert x.shape == (103, 24, 144) and len(CHANNELS) == 24
    assert not {"Appliances", "lights", "rv1", "rv2"} & set(CHANNELS)
    lines = appliances_csv.read_text().splitlines()
    header = lines[0].split(",")
    first_day = [line.split(",") for line in lines[1:145]]
    wh = sum(float(r[header.index("Appliances")]) for r in first_day)
    assert y[0] == pytest.approx(wh / 1000)
    assert x[0, CHANNELS.index("T_out"), 0] == pytest.approx(
        float(first_day[0][header.index("T_out")])
    )


def test_appliances_splits_whole_weeks_train_statistics(appliances_csv) -> None:
    suite = load_suite("appliances-inceptiontime")
    a = suite.load_splits(DataContext(appliances_csv.parents[1], 0))
    b = suite.load_splits(DataContext(appliances_csv.parents[1], 1))
    ids = _ids(a)
    _assert_disjoint(ids)
    first = min(int(i.min()) for i in ids)  # ids are day ordinals
    _assert_disjoint([(i - first) // 7 for i in ids])
    assert sum(len(i) for i in ids) == 103 and all(len(i) >= 7 for i in ids)
    assert all(i.max() - i.min() >= 42 for i in ids)  # every split spans the season
    assert any(not np.array_equal(x, y) for x, y in zip(ids, _ids(b)))
    assert tuple(a.train.inputs().shape[1:]) == suite.input_shape
    # standardized with train statistics only
    np.testing.assert_allclose(a.train.inputs().mean(dim=(0, 2)).numpy(), 0, atol=1e-4)
    assert float(a.train.targets().mean()) == pytest.approx(0, abs=1e-5)
    mean, std = a.target_scale
    assert 10 < mean < 20 and 2 < std < 8  # kWh per day


def test_appliances_rmse_is_in_kwh(appliances_csv) -> None:
    suite = load_suite("appliances-inceptiontime")
    splits = suite.load_splits(DataContext(appliances_csv.parents[1], 0))
    mean, std = splits.target_scale
    y_kwh = splits.test.targets().numpy() * std + mean
    assert suite.score(lambda x: np.zeros((len(x), 1)), splits, "test") == pytest.approx(
        float(np.sqrt(np.mean((y_kwh - mean) ** 2))), rel=1e-5
    )


def _write_ts(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    rows = [
        ":".join(",".join(f"{v:g}" for v in ch) for ch in case) + f":{t:g}" for case, t in zip(x, y)
    ]
    head = "@problemName AppliancesEnergy\n@timeStamps false\n@univariate false\n"
    head += "@targetLabel true\n@data\n"
    path.write_text(head + "\n".join(rows) + "\n")


def test_appliances_reads_monash_ts_files(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(0)
    folder = tmp_path / "AppliancesEnergy"
    folder.mkdir()
    x = rng.normal(size=(26, 24, 144)).round(2)
    y = rng.uniform(5, 25, 26).round(2)
    _write_ts(folder / "AppliancesEnergy_TRAIN.ts", x[:20], y[:20])
    _write_ts(folder / "AppliancesEnergy_TEST.ts", x[20:], y[20:])
    got_x, got_y = read_ts(folder / "AppliancesEnergy_TRAIN.ts")
    np.testing.assert_allclose(got_x, x[:20], atol=1e-6)
    np.testing.assert_allclose(got_y, y[:20])
    monkeypatch.chdir(tmp_path)  # no ../shared/data from here
    splits = load_suite("appliances-inceptiontime").load_splits(DataContext(tmp_path, 0))
    assert len(splits.test) == 6 and sum(len(splits.by_name(n)) for n in SPLITS[:3]) == 20
    _assert_disjoint(_ids(splits))
    bad = tmp_path / "bad.ts"
    bad.write_text("@targetLabel true\n@data\n1,2:3:4\n1,2,3:3,4,5:6\n")
    with pytest.raises(UserError, match="unequal length"):
        read_ts(bad)


def test_appliances_missing_data_says_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETRA_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="not found under .*nowhere.*--data-dir"):
        load_suite("appliances-inceptiontime").load_splits(DataContext(tmp_path / "empty", 0))


def test_inceptiontime_onnx_lr_and_pr(tmp_path) -> None:
    suite = load_suite("appliances-inceptiontime")
    torch.manual_seed(0)
    model = build_inceptiontime(depth=3, filters=8, bottleneck=8).eval()
    x = torch.randn(3, *suite.input_shape)
    _onnx_matches(model, x, tmp_path / "inception.onnx")
    before = _params(model)
    model = _apply("LR", model, suite, None, rule="energy", threshold=0.6)
    assert any(is_lowrank_pair(m) for m in model.modules())
    model = _apply("Pr", model, suite, None, criterion="l1", ratio=0.5)
    assert _params(model) < before / 2 and model(x).shape == (3, 1)


# -- CoLES on transactions ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cdnow():
    return cdnow_sequences()


def test_cdnow_sequences_and_label(cdnow) -> None:
    assert len(cdnow.client_ids) == 23_570  # every customer bought before the cutoff
    assert cdnow.labels.mean() == pytest.approx(0.2581, abs=1e-4)
    assert cdnow.lengths.min() == 1 and cdnow.lengths.max() == 32
    # customer 2 (rows 2-3 of the log): two purchases on Sunday 1997-01-12, 1 and 5 CDs
    rows = cdnow_path().read_text().splitlines()[2:4]
    assert [r.split()[:3] for r in rows] == [["00002", "19970112", "1"], ["00002", "19970112", "5"]]
    i = int(np.flatnonzero(cdnow.client_ids == 2)[0])
    assert cdnow.lengths[i] == 2
    np.testing.assert_array_equal(cdnow.cats[i, :2], [[6, 0], [6, 4]])
    np.testing.assert_allclose(cdnow.nums[i, :2, 0], np.log1p([12.0, 77.0]), rtol=1e-6)
    assert cdnow.nums[i, 0, 2] == pytest.approx(
        math.log1p((date(1997, 9, 30) - date(1997, 1, 12)).days)
    )
    assert not cdnow.cats[i, 2:].any() and not cdnow.nums[i, 2:].any()


def test_transaction_splits_are_by_client(cdnow) -> None:
    a, b = to_splits(cdnow, 0), to_splits(cdnow, 1)
    ids = _ids(a)
    _assert_disjoint(ids)
    assert sum(len(i) for i in ids) == len(cdnow.client_ids)
    assert any(not np.array_equal(x, y) for x, y in zip(ids, _ids(b)))
    x = a.train.inputs()
    assert x.dtype == torch.float32 and tuple(x.shape[1:]) == (32, 6)
    mask = x[..., 0]
    lengths = mask.sum(1)
    assert torch.equal(mask, (torch.arange(32)[None] < lengths[:, None]).float())
    assert not x[mask == 0].any()  # padding is all zeros
    assert torch.equal(x[..., 1:3], x[..., 1:3].round())  # categories are exact float indices
    rates = [float(a.by_name(n).targets().float().mean()) for n in SPLITS]
    assert max(rates) - min(rates) < 0.01  # stratified by label


def test_synthetic_transactions_generator() -> None:
    a, b = synthetic_transactions(500, 16, seed=3), synthetic_transactions(500, 16, seed=3)
    np.testing.assert_array_equal(a.cats, b.cats)
    assert a.cats.shape == (500, 16, 3) and a.nums.shape == (500, 16, 2)
    assert a.cats[..., 0].max() < 100 and a.cats[..., 1].max() < 4 and a.cats[..., 2].max() < 7
    assert 4 <= a.lengths.min() and a.lengths.max() <= 16
    assert 0.35 < a.labels.mean() < 0.65
    assert np.isfinite(a.nums).all()


def test_slices_are_contiguous_subsequences() -> None:
    x = torch.zeros(3, 10, 2)
    for row, n in enumerate((10, 4, 1)):
        x[row, :n, 0] = 1
        x[row, :n, 1] = torch.arange(1, n + 1) + 100 * row
    views = sample_slices(x, 5, 0.3, torch.Generator().manual_seed(0))
    assert views.shape[0] == 15
    for i, v in enumerate(views):
        n = int(v[:, 0].sum())
        source = int(x[i // 5, :, 0].sum())
        assert math.ceil(0.3 * source) <= n <= source
        values = v[:n, 1]
        assert torch.equal(values - values[0], torch.arange(n).float())  # consecutive events
        assert int(values[0]) // 100 == i // 5 and not v[n:].any()


def test_contrastive_loss_has_finite_gradients_on_identical_views() -> None:
    z = torch.nn.functional.normalize(torch.randn(2, 4), dim=1).repeat_interleave(3, 0)
    z.requires_grad_(True)
    loss = contrastive_loss(z, torch.arange(2).repeat_interleave(3), margin=0.5, negatives=5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(z.grad).all()


@pytest.fixture(scope="module")
def tiny_transactions():
    suite = make_transactions("synthetic", n_clients=400, seq_len=12, hidden=8, output_dim=8)
    return suite, suite.load_splits(DataContext(None, 0))


def test_coles_encoder_exports_and_ignores_padding(tiny_transactions, tmp_path) -> None:
    suite, splits = tiny_transactions
    torch.manual_seed(0)
    model = suite.build_model().eval()
    x = splits.val.inputs(6).clone()
    _onnx_matches(model, x, tmp_path / "coles.onnx")
    noisy = x.clone()
    pad = noisy[..., 0] == 0
    noisy[..., 1:][pad] = 3.0  # garbage after the last event must not matter
    with torch.no_grad():
        torch.testing.assert_close(model(noisy), model(x))


def test_coles_trains_with_its_own_loss_and_compresses(tiny_transactions) -> None:
    suite, splits = tiny_transactions
    with pytest.raises(ValueError, match="own objective"):
        make_loss("mse", suite.default_loss)
    with pytest.raises(TypeError, match="batch_loss"):
        compute_loss(make_loss("default", suite.default_loss), torch.zeros(2, 8), torch.zeros(2))
    torch.manual_seed(0)
    model = suite.build_model()
    gru = [p.detach().clone() for p in model.rnn.parameters()]
    model = _apply("Tr", model, suite, splits, epochs=1)  # the CoLES loss through the one loop
    assert any(not torch.equal(a, b) for a, b in zip(gru, model.rnn.parameters()))
    model = _apply("LR", model, suite, splits, rule="energy", threshold=0.5)
    pairs = [n for n, m in model.named_modules() if is_lowrank_pair(m)]
    assert "embeddings.0" in pairs and "project" in pairs  # mcc embedding, input projection
    assert isinstance(model.rnn, nn.GRU)  # GRU weights are not plain layers: LR leaves them
    model = _apply("Pr", model, suite, splits, ratio=0.5, structured=False)
    zeros = [float((m.weight == 0).float().mean()) for m in model.modules() if type(m) is nn.Linear]
    assert max(zeros) >= 0.45
    assert model(splits.val.inputs(4)).shape == (4, 8)


def test_coles_quality_through_onnxruntime_artifact(
    tiny_transactions, cpu_profile, tmp_path
) -> None:
    from petra_hw.assess import compile_model, judge
    from petra_hw.baseline import predict
    from petra_hw.profiles import MeasureSettings

    suite, splits = tiny_transactions
    torch.manual_seed(0)
    model = suite.build_model().eval()
    quick = MeasureSettings(
        warmup_iters=1, min_iters=3, min_time_s=0.0, max_time_s=1.0, repeats_if_noisy=0
    )
    profile = dataclasses.replace(cpu_profile, measurement=quick)
    artifact = compile_model(model, suite, splits, profile, "onnxruntime", "fp32", tmp_path)
    reference = {"val": predict(model, splits.val.inputs())}
    result = judge(artifact, suite, splits, profile, reference, ("val",), fresh_process=False)
    auc = result.quality["val"]
    assert 0.0 <= auc <= 1.0
    assert auc == pytest.approx(suite.score(lambda x: predict(model, x), splits, "val"), abs=0.02)
    assert result.parity["max_abs_diff"] < 1e-4 and "top1_agreement" not in result.parity


# -- Imagenette ------------------------------------------------------------------------------------
def _image_folder(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, n in per_class.items():
        for c in range(10):
            folder = root / "imagenette2-160" / split / f"n0{c:07d}"
            folder.mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(40, 60)), int(rng.integers(40, 60)))
                pixels = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"img{i}.JPEG")


def test_imagenette_reads_an_image_folder(tmp_path, monkeypatch) -> None:
    _image_folder(tmp_path, {"train": 5, "val": 2})
    monkeypatch.chdir(tmp_path)
    suite = make_imagenette(image_size=32)
    splits = suite.load_splits(DataContext(tmp_path, 0))
    assert tuple(splits.train.inputs().shape[1:]) == suite.input_shape == (3, 32, 32)
    assert len(splits.test) == 20 and sum(len(splits.by_name(n)) for n in SPLITS[:3]) == 50
    _assert_disjoint(_ids(splits))
    assert set(splits.test.targets().tolist()) == set(range(10))
    assert abs(float(splits.train.inputs().mean())) < 0.5  # ImageNet-normalised


def test_imagenette_missing_data_says_where_it_looked(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETRA_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(UserError, match="imagenette2-160.*imagenette.*nowhere"):
        load_suite("imagenette-resnet18").load_splits(DataContext(tmp_path / "empty", 0))


def test_resnet18_onnx_lr_and_pr(tmp_path) -> None:
    suite = make_imagenette(image_size=32)
    torch.manual_seed(0)
    model = build_resnet18().eval()
    x = torch.randn(2, *suite.input_shape)
    _onnx_matches(model, x, tmp_path / "resnet18.onnx", atol=1e-3)
    before = _params(model)
    model = _apply("LR", model, suite, None, rule="energy", threshold=0.5)
    assert any(is_lowrank_pair(m) for m in model.modules())
    model = _apply("Pr", model, suite, None, criterion="l1", ratio=0.3)
    assert _params(model) < before and model(x).shape == (2, 10)
