"""Dominance beyond the measurement noise: a noisy latency or a 1-byte size gap decides nothing."""

from __future__ import annotations

import numpy as np

from petra_hw.pipeline import Pipeline, Step
from petra_hw.search.noise import distinct, noisy_fronts, twins
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.selection import front_ranks, pareto_front, survive
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


# a twin pair (b is a within both bands: 1% slower under a 2% half-IQR, one byte larger), two
# front points that trade quality for speed, and two distinct dominated points (e only just
# outside a's latency band)
A = _ev(0.1, 0.90, 0.500, 500.0, 0.02)
B_TWIN = _ev(0.2, 0.90, 0.505, 501.0, 0.02)
C = _ev(0.3, 0.89, 0.450, 500.0, 0.02)
D = _ev(0.4, 0.88, 0.400, 450.0, 0.02)
E = _ev(0.5, 0.90, 0.530, 500.0, 0.02)
G = _ev(0.6, 0.85, 0.600, 600.0, 0.02)


def test_twins_within_both_bands_hold_one_survivor_slot() -> None:
    pool = [B_TWIN, A, C, D, E, G]  # the worse twin first: the better one still represents them
    m = OBJECTIVES.matrix(pool)
    assert twins(m.F, m.B)[0, 1] and not twins(m.F, m.B)[1, 4]  # e is outside a's band
    assert distinct(m.F, m.B, np.arange(6)).tolist() == [True, False, True, True, True, True]
    ref = OBJECTIVES.reference_point(m.names)
    s = survive(m, 4, ref, np.random.default_rng(0))
    # b and a are both non-dominated, yet b gives its slot to e, dominated but distinct
    assert {pool[i].candidate.id for i in s.survivors} == {e.candidate.id for e in (A, C, D, E)}
    assert front_ranks(m, noisy_twins=True)[0] > front_ranks(m, noisy_twins=True)[5]
    # a random survivor is drawn among distinct rows only (b never, g sometimes)
    drawn = set()
    for seed in range(20):
        s = survive(m, 4, ref, np.random.default_rng(seed), n_random=1)
        assert 0 not in s.survivors and len(set(s.survivors)) == 4
        drawn.update(s.diverse)
    assert drawn == {4, 5}
    # with too few distinct rows a twin fills the place instead of leaving it empty
    assert sorted(
        survive(OBJECTIVES.matrix([A, B_TWIN]), 2, ref, np.random.default_rng(0)).survivors
    ) == [0, 1]


def test_front_reporting_keeps_twins_within_the_noise() -> None:
    """Only survival collapses noise twins: the reported front holds both, as before."""
    front = pareto_front([ORIGINAL, B_TWIN, A, C, D, E, G], OBJECTIVES)
    assert {e.candidate.id for e in front} == {x.candidate.id for x in (A, B_TWIN, C, D)}
    m = OBJECTIVES.matrix([B_TWIN, A, C, D, E, G])
    assert front_ranks(m).tolist() == [0, 0, 0, 0, 1, 2]
