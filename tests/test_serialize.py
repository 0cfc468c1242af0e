"""Safe model files: structure spec + state dict, rebuilt on the suite's fresh model."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from petra_hw.pipeline import Pipeline
from petra_hw.serialize import SerializeError, load_model, module_spec, save_model
from petra_hw.steps import get_step
from petra_hw.steps.base import StepContext
from petra_hw.suite import Split, Splits, load_suite


def _context(suite_name: str) -> StepContext:
    """LR and Pr(l1) read no data; the splits are random tensors of the suite's input shape."""
    suite = load_suite(suite_name)
    x, y = torch.randn(8, *suite.input_shape), torch.arange(8) % 10
    split = Split(x, y)
    return StepContext(suite, Splits(split, split, split, split), Pipeline.parse("LR - Pr"))


def _transformed(suite_name: str) -> tuple[nn.Module, StepContext]:
    """The suite's model after a real LR step and a real structured Pr step."""
    torch.manual_seed(0)
    ctx = _context(suite_name)
    model = ctx.suite.build_model().eval()
    with torch.no_grad():  # non-trivial BN statistics, so the round trip must carry buffers
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    lr, pr = ctx.pipeline.steps
    model = get_step("LR")(model, lr.replace(rule="ratio", threshold=0.5), ctx)
    model = get_step("Pr")(model, pr.replace(ratio=0.4), ctx)
    return model.eval(), ctx


@pytest.mark.parametrize("suite_name", ["digits", "cifar10-resnet20"])
def test_round_trip_of_lowrank_and_pruned_model_is_exact(suite_name, tmp_path):
    model, ctx = _transformed(suite_name)
    fresh = ctx.suite.build_model()
    assert any(type(m) is nn.Sequential and len(m) == 2 for m in model.modules())  # an LR pair
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in fresh.parameters())
    size = save_model(model, tmp_path / "m.pt", {"note": "x"})
    assert size == (tmp_path / "m.pt").stat().st_size
    loaded, meta = load_model(tmp_path / "m.pt", ctx.suite.build_model)
    assert meta == {"note": "x"}
    assert module_spec(loaded) == module_spec(model)
    x = torch.randn(4, *ctx.suite.input_shape)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert not list(tmp_path.glob("*.tmp"))


def test_hand_edits_round_trip(tmp_path):
    """Edits of the kinds steps make, built by hand: BN folded away, a conv widened with bias."""
    suite = load_suite("digits")
    model = suite.build_model().eval()
    model.features[1] = nn.Identity()
    model.features[0] = nn.Conv2d(1, 32, 3, padding=1, bias=True)
    model.classifier = nn.Sequential(nn.Linear(64, 10))
    save_model(model, tmp_path / "m.pt")
    loaded, _ = load_model(tmp_path / "m.pt", suite.build_model)
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_file_is_plain_data_loaded_without_pickle(tmp_path):
    model, ctx = _transformed("digits")
    save_model(model, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    assert set(blob) == {"format", "spec", "meta", "state"}
    assert isinstance(json.loads(blob["spec"]), list)
    torch.save({"model": model}, tmp_path / "pickled.pt")  # a pickled module must be refused
    with pytest.raises(Exception, match="weights_only|Unsupported global"):
        load_model(tmp_path / "pickled.pt", ctx.suite.build_model)


def test_types_outside_the_whitelist_are_refused(tmp_path):
    suite = load_suite("digits")
    model = suite.build_model()
    save_model(model, tmp_path / "m.pt")
    blob = torch.load(tmp_path / "m.pt", weights_only=True)
    spec = json.loads(blob["spec"])
    relu = next(e for e in spec if e.get("type") == "ReLU")
    relu["type"], relu["kwargs"] = "Module", {}
    blob["spec"] = json.dumps(spec)
    torch.save(blob, tmp_path / "bad.pt")
    with pytest.raises(SerializeError, match="whitelist"):
        load_model(tmp_path / "bad.pt", suite.build_model)


def test_file_of_another_suite_is_refused(tmp_path):
    digits = load_suite("digits")
    save_model(digits.build_model(), tmp_path / "m.pt")
    with pytest.raises(SerializeError):
        load_model(tmp_path / "m.pt", load_suite("cifar10-resnet20").build_model)
