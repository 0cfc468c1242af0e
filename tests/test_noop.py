"""Steps that change nothing are detected when applied (``steps.effects``): the search records the
candidate as ``no-op`` with the reason and neither compiles nor times it; a step that leaves some
layers alone says how many and why.  Real torch models on the digits suite."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch
from torch import nn

from petra_hw.apply import PrefixCache, apply
from petra_hw.baseline import Baseline
from petra_hw.pipeline import Pipeline
from petra_hw.search.evaluator import NO_OP, EvalContext, evaluate_candidate
from petra_hw.search.types import Candidate
from petra_hw.steps.effects import NoOpStep


class PartlyNormalized(nn.Module):
    """Digits-shaped; only the first conv has a BatchNorm (``bn=False``: none at all)."""

    def __init__(self, bn: bool = True) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=not bn)
        self.bn = nn.BatchNorm2d(16) if bn else nn.Identity()
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv2(torch.relu(self.bn(self.conv1(x)))))
        return self.head(x.mean(dim=(2, 3)))


def _baseline(digits, model: nn.Module) -> Baseline:
    torch.manual_seed(0)
    return Baseline(digits.suite, model.eval(), digits.splits, 0, {}, cached=True)


def test_bn_scale_without_batchnorm_is_a_no_op(digits) -> None:
    base = _baseline(digits, PartlyNormalized(bn=False))
    with pytest.raises(NoOpStep, match="bn_scale.*BatchNorm"):
        apply(Pipeline.parse("Pr(criterion=bn_scale, ratio=0.5)"), base, stop_on_noop=True)
    # outside the search the step still runs and only reports it
    applied = apply(Pipeline.parse("Pr(criterion=bn_scale, ratio=0.5)"), base)
    assert applied.notes and "no-op" in applied.notes[0]


def test_partial_pruning_names_the_skipped_layers(digits) -> None:
    base = _baseline(digits, PartlyNormalized(bn=True))
    applied = apply(Pipeline.parse("Pr(criterion=bn_scale, ratio=0.5)"), base, stop_on_noop=True)
    assert applied.model.conv1.out_channels == 8 and applied.model.conv2.out_channels == 16
    assert applied.notes == [
        "Pr(criterion=bn_scale, ratio=0.5): skipped: 1 layers (no output channel removed)"
    ]
    # magnitude pruning reaches both convs: nothing to note
    assert apply(Pipeline.parse("Pr(ratio=0.5)"), base).notes == []


def test_lr_that_decomposes_nothing_is_a_no_op(digits) -> None:
    with pytest.raises(NoOpStep, match="decomposed 0 of 5 layers"):
        apply(Pipeline.parse("LR(threshold=0.99) - Tr"), digits, stop_on_noop=True)
    applied = apply(Pipeline.parse("LR"), digits, stop_on_noop=True)
    assert applied.notes and "skipped: 3 layers (not cheaper" in applied.notes[0]


def test_cached_prefixes_keep_their_effects(digits, tmp_path) -> None:
    cache = PrefixCache(tmp_path / "cache", 1 << 30)
    first = apply(Pipeline.parse("LR"), digits, cache=cache)
    again = apply(Pipeline.parse("LR - PTQ"), digits, cache=cache, stop_on_noop=True)
    assert again.cache_hit == 1 and again.notes == first.notes != []
    # a no-op prefix cached outside the search still stops the search when restored
    apply(Pipeline.parse("LR(threshold=0.99)"), digits, cache=cache)
    with pytest.raises(NoOpStep):
        apply(Pipeline.parse("LR(threshold=0.99) - PTQ"), digits, cache=cache, stop_on_noop=True)


@pytest.fixture(scope="module")
def context(digits, tmp_path_factory) -> EvalContext:
    root = tmp_path_factory.mktemp("run")
    fast = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()
    (root / "fast.toml").write_text(fast)
    torch.save(digits.model.state_dict(), root / "baseline.pt")
    return EvalContext("digits", str(root / "fast.toml"), root, root / "baseline.pt")


def test_search_records_no_op_without_compiling(context) -> None:
    cand = Candidate(Pipeline.parse("LR(threshold=0.99) - PTQ"))
    ev = evaluate_candidate(cand, context)
    assert ev.error_kind == NO_OP and "decomposed 0 of 5 layers" in ev.error, ev.error
    assert not ev.ok and not ev.feasible and not ev.objectives and ev.artifact is None
    assert "compile_s" not in ev.timings_s
    assert not (context.run_dir / "candidates" / cand.id).exists()


def test_evaluation_records_skipped_layers(context) -> None:
    ev = evaluate_candidate(Candidate(Pipeline.parse("LR")), dataclasses.replace(context))
    assert ev.ok, ev.error
    (note,) = ev.step_notes  # how many depends on the profile's channel multiple (8 here)
    assert re.fullmatch(
        r"LR: skipped: [1-4] layers \(not cheaper at the rank energy=0.95 selects\)", note
    )
