"""apply: steps on a copy of the baseline, the prefix cache, and the LR-Reg-Pr-Tr acceptance test."""

from __future__ import annotations

import copy
import os
import time

import pytest
import torch
import torch_pruning as tp

from petra_hw.apply import PrefixCache, apply, shared_prefix
from petra_hw.baseline import Baseline, score
from petra_hw.onnx_export import is_fake_quantized
from petra_hw.pipeline import Pipeline, Step
from petra_hw.steps.base import ALL_SETTINGS, StepContext, UndeclaredSetting, settings_read
from petra_hw.suite import Splits
from petra_hw.training import TrainingError


@pytest.fixture(scope="module")
def small(digits) -> Baseline:
    """The digits baseline with short train/calib splits, so training steps take a second."""
    s = digits.splits
    splits = Splits(
        s.train.take(96),
        s.calib.take(48),
        s.val,
        s.test,
    )
    return Baseline(digits.suite, copy.deepcopy(digits.model), splits, 0, digits.metrics, True)


def outputs(model, baseline: Baseline) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(baseline.splits.val.inputs(64))


def test_second_apply_starts_from_the_shared_prefix(small, tmp_path):
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    before = small.state_hash
    first = apply(Pipeline.parse("Tr(epochs=1) - Pr(ratio=0.2)"), small, cache=cache)
    assert first.cache_hit == 0 and cache.misses == 1
    p2 = Pipeline.parse("Tr(epochs=1) - Pr(ratio=0.2) - LR(threshold=0.8)")
    second = apply(p2, small, cache=cache)
    assert second.cache_hit == 2 and cache.hits == 1
    assert second.step_seconds[:2] == (0.0, 0.0) and second.seconds_saved > 0
    assert cache.seconds_saved == pytest.approx(second.seconds_saved)
    fresh = apply(p2, small)  # no cache: the same model, step by step
    assert torch.equal(outputs(second.model, small), outputs(fresh.model, small))
    assert small.state_hash == before  # the baseline is never touched


def test_a_settings_change_keeps_the_prefix_that_reads_no_setting(small, tmp_path):
    """``LR - Pr(l1)`` reads no optimizer, lr or loss: a child that changes them reuses it and
    retrains only ``Tr``; the result equals a run without the cache."""
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    apply(Pipeline.parse("LR(threshold=0.8) - Pr(ratio=0.2) - Tr(epochs=1)"), small, cache=cache)
    child = Pipeline.parse(
        "LR(threshold=0.8) - Pr(ratio=0.2) - Tr(epochs=1) ; optimizer=sgd, lr=0.01, "
        "loss=label_smoothing"
    )
    got = apply(child, small, cache=cache)
    assert got.cache_hit == 2 and got.step_seconds[:2] == (0.0, 0.0) and got.step_seconds[2] > 0
    fresh = apply(child, small)
    assert torch.equal(outputs(got.model, small), outputs(fresh.model, small))


def test_a_prefix_that_reads_a_setting_is_keyed_by_it(small, tmp_path):
    """Gradient pruning reads the loss but not the optimizer; training reads all three."""
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    apply(Pipeline.parse("Pr(criterion=taylor, ratio=0.2) - LR"), small, cache=cache)
    sgd = apply(
        Pipeline.parse("Pr(criterion=taylor, ratio=0.2) - LR ; optimizer=sgd"), small, cache=cache
    )
    assert sgd.cache_hit == 2
    smooth = Pipeline.parse("Pr(criterion=taylor, ratio=0.2) - LR ; loss=label_smoothing")
    assert apply(smooth, small, cache=cache).cache_hit == 0
    apply(Pipeline.parse("Tr(epochs=1) - LR"), small, cache=cache)
    assert apply(Pipeline.parse("Tr(epochs=1) - LR ; lr=0.01"), small, cache=cache).cache_hit == 0


def test_steps_declare_the_settings_they_read(small):
    assert settings_read(Step.make("LR")) == frozenset()
    assert settings_read(Step.make("PTQ")) == frozenset()
    assert settings_read(Step.make("Pr", criterion="l2")) == frozenset()
    assert settings_read(Step.make("Pr", criterion="taylor")) == {"loss"}
    assert settings_read(Step.make("Pr", criterion="taylor", structured=False)) == frozenset()
    assert settings_read(Step.make("Pr", criterion="bn_scale")) == ALL_SETTINGS
    for kind in ("Tr", "Reg", "QAT"):
        assert settings_read(Step.make(kind)) == ALL_SETTINGS
    ctx = StepContext(small.suite, small.splits, Pipeline.parse("LR"), reads=frozenset({"loss"}))
    assert ctx.loss == "default"
    with pytest.raises(UndeclaredSetting, match="'lr'"):
        _ = ctx.lr


def test_corrupt_entry_is_ignored_and_removed(small, tmp_path, caplog):
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    p = Pipeline.parse("LR(rule=ratio, threshold=0.5) - Pr(ratio=0.3)")
    good = apply(p, small, cache=cache)
    entries = sorted(tmp_path.glob("*.pt"))
    assert len(entries) == 2
    for e in entries:
        e.write_bytes(e.read_bytes()[:100])  # a torn write by some other tool
    again = apply(p, small, cache=cache)
    assert again.cache_hit == 0 and cache.hits == 0 and cache.misses == 2
    assert "unreadable cache entry" in caplog.text
    assert torch.equal(outputs(again.model, small), outputs(good.model, small))
    assert len(list(tmp_path.glob("*.pt"))) == 2  # rewritten, readable
    assert not list(tmp_path.glob("*.tmp"))


def test_roles_are_part_of_the_key(small, tmp_path):
    """``PDQ - Pr`` defers PDQ to the backend; inside ``PDQ - Pr - FP16`` it rounds weights."""
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    deferred = apply(Pipeline.parse("PDQ - Pr"), small, cache=cache)
    assert deferred.roles == ("deferred", "run")
    rounded = apply(Pipeline.parse("PDQ - Pr - FP16"), small, cache=cache)
    assert rounded.cache_hit == 0 and rounded.roles == ("run", "run", "deferred")
    assert not torch.equal(outputs(deferred.model, small), outputs(rounded.model, small))


def test_canonical_form_runs_and_equivalent_pipelines_share_entries(small, tmp_path):
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    a = apply(Pipeline.parse("LR - PTQ - PDQ - Pr"), small, cache=cache)
    assert a.pipeline == Pipeline.parse("LR - PDQ - Pr")
    assert a.requested == Pipeline.parse("LR - PTQ - PDQ - Pr")
    b = apply(Pipeline.parse("LR - PDQ - Pr"), small, cache=cache)
    assert b.cache_hit == 3


def test_qat_last_keeps_fake_quantizers_and_is_not_cached(small, tmp_path):
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    a = apply(Pipeline.parse("Pr(ratio=0.2) - QAT"), small, cache=cache)
    assert a.roles == ("run", "fake_quant") and is_fake_quantized(a.model)
    assert len(list(tmp_path.glob("*.pt"))) == 1  # only the Pr prefix
    b = apply(Pipeline.parse("Pr(ratio=0.2) - QAT - LR"), small, cache=cache)
    assert b.cache_hit == 1 and not is_fake_quantized(b.model)


@pytest.mark.parametrize(
    ("child", "expected"),
    [
        ("Pr(ratio=0.2) - Tr(epochs=1) - LR", 2),  # keeps the trained prefix
        ("Pr(ratio=0.2) - Tr(epochs=1)", 2),
        ("Pr(ratio=0.2) - Tr(epochs=1) - LR ; optimizer=sgd", 1),  # Pr(l1) reads no setting
        ("Pr(ratio=0.3) - Tr(epochs=1) - PDQ", 0),
        ("Pr(ratio=0.2) - PDQ - Tr(epochs=1)", 1),  # PDQ rounds here: the parent deferred it
        ("Pr(ratio=0.2) - Tr(epochs=1) - PDQ - LR", 2),
    ],
)
def test_shared_prefix_predicts_what_the_cache_restores(small, tmp_path, child, expected):
    parent = Pipeline.parse("Pr(ratio=0.2) - Tr(epochs=1) - PDQ")
    cache = PrefixCache(tmp_path, max_bytes=50_000_000)
    apply(parent, small, cache=cache)
    assert shared_prefix(parent, Pipeline.parse(child)) == expected
    assert apply(Pipeline.parse(child), small, cache=cache).cache_hit == expected


def test_step_errors_propagate(small):
    broken = copy.deepcopy(small)
    with torch.no_grad():
        broken.model.classifier[2].bias.fill_(float("nan"))
    with pytest.raises(TrainingError):
        apply(Pipeline.parse("Tr(epochs=1)"), broken)


def test_lru_eviction_by_size(small, tmp_path):
    model = small.model
    probe = PrefixCache(tmp_path / "probe", max_bytes=10**9)
    probe.put("x", model, 1.0, "probe")
    size = (tmp_path / "probe" / "x.pt").stat().st_size
    cache = PrefixCache(tmp_path / "lru", max_bytes=int(2.5 * size))
    cache.put("a", model, 1.0, "a")
    cache.put("b", model, 1.0, "b")
    past = time.time() - 100
    os.utime(cache.path("a"), (past, past))
    os.utime(cache.path("b"), (past + 1, past + 1))
    assert cache.lookup(["a"], small.suite.build_model) is not None  # a is now the most recent
    stale = cache.root / ".c.pt.1.2.tmp"
    stale.write_bytes(b"partial")
    os.utime(stale, (past - 10_000, past - 10_000))
    cache.put("c", model, 1.0, "c")
    assert sorted(p.name for p in cache.root.iterdir()) == ["a.pt", "c.pt"]
    assert cache.stats()["entries"] == 2


def test_lowrank_regularize_prune_finetune_shrinks_digits_and_keeps_accuracy(digits):
    """The issue's acceptance test on the real digits baseline and splits."""
    pipeline = Pipeline.parse("LR - Reg(epochs=1) - Pr(ratio=0.3) - Tr(epochs=2)")
    applied = apply(pipeline, digits)
    example = digits.suite.example_input(1)
    macs0, params0 = tp.utils.count_ops_and_params(digits.model, example)
    macs1, params1 = tp.utils.count_ops_and_params(applied.model, example)
    assert macs1 < macs0 and params1 < params0
    test_acc = score(digits.suite, applied.model, digits.splits.test)
    assert test_acc >= digits.metrics["test"] - 0.05


def test_qat_fine_tunes_at_a_small_share_of_the_learning_rate(digits):
    """QAT trains a fake-quantized model at 1% of the pipeline's rate: at the full rate the
    BatchNorm-folded ResNets collapsed (ResNet-20 0.686 -> 0.401).  Digits at ``lr=0.1`` shows the
    same: QAT keeps the baseline's accuracy only because it trains at 0.001."""
    before = score(digits.suite, digits.model, digits.splits.val)
    qat = apply(Pipeline.parse("QAT ; lr=0.1"), digits).model
    assert is_fake_quantized(qat)
    assert score(digits.suite, qat.eval(), digits.splits.val) >= before - 0.05
