"""LR's rank rules as the search sees them: per-rule threshold ranges, and a rule mutation that
keeps the rank instead of the number."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from petra_hw.pipeline import Step, parse_pipeline
from petra_hw.rank_rules import (
    RULES,
    equivalent_threshold,
    representative_spectrum,
    select_rank,
    threshold_for_rank,
)
from petra_hw.search.mutation import Mutator, OperatorBandit, carry_meaning
from petra_hw.search.space import SearchSpace
from petra_hw.steps import lowrank

SPECTRUM = representative_spectrum()


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("rank", [1, 7, 64, 200, 256])
def test_threshold_for_rank_keeps_that_rank(rule: str, rank: int) -> None:
    t = threshold_for_rank(SPECTRUM, rule, rank)
    assert select_rank(SPECTRUM, rule, t) == rank
    # the torch step reads the same definition
    assert lowrank.select_rank(torch.from_numpy(SPECTRUM), rule, t) == rank


@pytest.mark.parametrize("old", RULES)
@pytest.mark.parametrize("new", RULES)
@pytest.mark.parametrize("threshold", [0.1, 0.5, 0.95])
def test_equivalent_threshold_keeps_the_rank(old: str, new: str, threshold: float) -> None:
    mapped = equivalent_threshold(old, threshold, new)
    assert select_rank(SPECTRUM, new, mapped) == select_rank(SPECTRUM, old, threshold)


def test_rules_read_the_threshold_in_opposite_senses() -> None:
    # the reason a rule change cannot keep the number: energy 0.9 keeps most of the rank,
    # sv_proportion 0.9 keeps almost none
    assert (
        select_rank(SPECTRUM, "energy", 0.9)
        > 100
        > 2
        >= select_rank(SPECTRUM, "sv_proportion", 0.9)
    )
    assert equivalent_threshold("energy", 0.9, "sv_proportion") < 0.2


def test_each_rule_has_its_own_range_and_spec_round_trips() -> None:
    space = SearchSpace.default()
    energy = space.param_range("LR", "threshold", Step.make("LR", rule="energy"))
    svp = space.param_range("LR", "threshold", Step.make("LR", rule="sv_proportion"))
    assert (energy.low, energy.high) == (0.5, 0.99)
    assert svp.high < 0.5 and svp.log
    assert space.contains(parse_pipeline("LR(rule=sv_proportion, threshold=0.2)"))
    assert not space.contains(parse_pipeline("LR(rule=sv_proportion, threshold=0.95)"))
    assert not space.contains(parse_pipeline("LR(rule=ratio, threshold=0.99)"))
    assert not space.contains(parse_pipeline("LR(rule=energy, threshold=0.2)"))
    # the default ranges keep the same band of ranks under every rule (about 5% to 94%)
    bands = {}
    for rule in RULES:
        r = space.param_range("LR", "threshold", {"rule": rule})
        ranks = sorted(select_rank(SPECTRUM, rule, t) for t in (r.low, r.high))
        bands[rule] = ranks
    lows, highs = [b[0] for b in bands.values()], [b[1] for b in bands.values()]
    assert max(lows) <= min(lows) + 1 and max(highs) <= min(highs) + 5, bands
    assert SearchSpace.from_spec(json.loads(json.dumps(space.to_spec()))) == space
    # a random LR step draws its threshold from its rule's range
    rng = np.random.default_rng(0)
    for _ in range(200):
        step = space.random_step(rng, "LR")
        assert space.param_range("LR", "threshold", step).contains(step["threshold"])
    # a user narrows one rule, or replaces them all with a plain range
    one = SearchSpace.from_spec({"params": {"LR.threshold|rule=ratio": [0.2, 0.3]}})
    assert one.contains(parse_pipeline("LR(rule=ratio, threshold=0.25)"))
    assert not one.contains(parse_pipeline("LR(rule=ratio, threshold=0.5)"))
    assert one.contains(parse_pipeline("LR(rule=energy, threshold=0.9)"))
    plain = SearchSpace.from_spec({"params": {"LR.threshold": [0.6, 0.7]}})
    assert plain.contains(parse_pipeline("LR(rule=sv_proportion, threshold=0.65)"))
    assert SearchSpace.from_spec(json.loads(json.dumps(plain.to_spec()))) == plain


def test_rule_mutation_keeps_the_rank() -> None:
    space = SearchSpace.from_spec(
        {"kinds": ["LR"], "max_len": 1, "params": {"LR.threshold": {"low": 0.01, "high": 1.0}}}
    )
    old = Step.make("LR", rule="energy", threshold=0.9)
    new = carry_meaning(old, old.replace(rule="sv_proportion"))
    assert new["threshold"] != old["threshold"]
    assert select_rank(SPECTRUM, "sv_proportion", new["threshold"]) == pytest.approx(
        select_rank(SPECTRUM, "energy", 0.9), rel=0.02
    )
    # through the mutator, on the default per-rule ranges: every rule change keeps the rank
    # (up to 3-digit rounding) unless the mapped threshold had to be clipped into the new range
    space = SearchSpace.from_spec({"kinds": ["LR"], "max_len": 1})
    mutator = Mutator(space, OperatorBandit(("tweak",), p_min=0.0))
    rng = np.random.default_rng(0)
    changed = 0
    for _ in range(300):
        parent = space.random_pipeline(rng)
        child, _ = mutator.mutate(parent, rng)
        a, b = parent.steps[0], child.steps[0]
        if a["rule"] == b["rule"]:
            continue
        changed += 1
        r_old = select_rank(SPECTRUM, str(a["rule"]), float(a["threshold"]))
        r_new = select_rank(SPECTRUM, str(b["rule"]), float(b["threshold"]))
        bound = space.param_range("LR", "threshold", b)
        if bound.low < b["threshold"] < bound.high:
            assert abs(r_new - r_old) <= max(2, 0.02 * r_old), (a, b, r_old, r_new)
    assert changed > 50
