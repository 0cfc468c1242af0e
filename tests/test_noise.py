"""Dominance beyond the measurement noise: a noisy latency or a 1-byte size gap decides nothing."""

from __future__ import annotations

import numpy as np

from petra_hw.pipeline import Pipeline, Step
from petra_hw.search.noise import noisy_fronts
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.selection import pareto_front
from petra_hw.search.types import Candidate, Evaluation


def _ev(ratio: float, q: float, lat: float, size: float, iqr: float) -> Evaluation:
    c = Candidate(Pipeline.make([Step.make("Pr", ratio=ratio)]))
    return Evaluation(
        c,
        objectives={"quality_val": q, "latency_ms": lat, "size_bytes": size},
        quality={"val": q},
        measurement={"latency": {"p50_ms": lat, "iqr_ms": iqr}},
    )


ORIGINAL = Evaluation(
    Candidate(Pipeline.make()),
    objectives={"quality_val": 0.9, "latency_ms": 1.0, "size_bytes": 1000.0},
    quality={"val": 0.9},
)
OBJECTIVES = Objectives(ObjectiveConfig(), ORIGINAL)


def test_a_gap_inside_the_noise_band_decides_nothing() -> None:
    fast, slow = _ev(0.1, 0.9, 0.50, 500.0, 0.10), _ev(0.2, 0.9, 0.52, 500.0, 0.10)
    assert {e.candidate.id for e in pareto_front([ORIGINAL, fast, slow], OBJECTIVES)} == {
        fast.candidate.id,
        slow.candidate.id,
    }
    # the same gap with tight measurements: the faster one dominates
    fast, slow = _ev(0.1, 0.9, 0.50, 500.0, 0.001), _ev(0.2, 0.9, 0.52, 500.0, 0.001)
    assert pareto_front([ORIGINAL, fast, slow], OBJECTIVES) == [fast]


def test_a_one_byte_size_gap_is_a_tie() -> None:
    a, b = _ev(0.1, 0.9, 0.5, 500.0, 0.0), _ev(0.2, 0.9, 0.5, 501.0, 0.0)
    assert len(pareto_front([ORIGINAL, a, b], OBJECTIVES)) == 2
    c = _ev(0.3, 0.9, 0.5, 400.0, 0.0)  # 20% smaller is a real difference
    assert pareto_front([ORIGINAL, a, b, c], OBJECTIVES) == [c]


def test_zero_bands_are_plain_pareto_sorting() -> None:
    rng = np.random.default_rng(0)
    F = rng.random((30, 3))
    fronts = noisy_fronts(F, np.zeros_like(F))
    for front in fronts:  # no row of a front dominates another of the same front
        for i in front:
            for j in front:
                assert not (np.all(F[i] <= F[j]) and np.any(F[i] < F[j]))
    assert sorted(np.concatenate(fronts).tolist()) == list(range(30))
    from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

    expected = [sorted(f.tolist()) for f in NonDominatedSorting().do(F)]
    assert [sorted(f.tolist()) for f in fronts] == expected
