"""A run's progress over wall-clock time (``petra_hw.search.timeline``) on a planted journal:
rows written through the real ``Store``, their journal times then set to a known schedule."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from petra_hw.pipeline import Pipeline, Step
from petra_hw.search.objectives import Objectives
from petra_hw.search.selection import hypervolume
from petra_hw.search.store import JOURNAL_NAME, Store
from petra_hw.search.timeline import _final_peer, run_timeline
from petra_hw.search.tune import TuneSettings
from petra_hw.search.types import Candidate, Evaluation

T0 = 1_700_000_000.0
RUN = "digits-cpu-planted"
PTQ = Pipeline.make([Step.make("PTQ")])
PR = Pipeline.make([Step.make("Pr", ratio=0.5), Step.make("PTQ")])
LR = Pipeline.make([Step.make("LR")])


def _ev(cand: Candidate, latency: float, test: float, **kw) -> Evaluation:
    return Evaluation(
        cand,
        objectives={"latency_ms": latency, "size_bytes": 1000.0 * latency},
        quality={"val": test, "test": test},
        fidelity=cand.fidelity,
        **kw,
    )


def _ref(name: str, latency: float, test: float) -> Evaluation:
    return _ev(Candidate(Pipeline.make(), 0, None, "reference", name), latency, test)


ORIGINAL = _ev(Candidate(Pipeline.make(), 0, None, "original"), 1.0, 0.90)
A = _ev(Candidate(PTQ, 1, None, "seed"), 0.5, 0.89)  # 2x the Original, not 1.5x the peer
LOW = _ev(Candidate(LR, 1, None, "seed", fidelity=0.34), 0.1, 0.90)  # a reduced rung
STOPPED = _ev(Candidate(LR, 1, None, "seed"), 0.1, 0.90, error="stopped", error_kind="budget")
D = _ev(Candidate(PR, 2, PTQ.hash, "mutation"), 0.35, 0.895)  # beats 0.6 / 1.5 within 1 point
VARIANT = _ev(Candidate(PR, 2, PR.hash, "variant", variant="openvino"), 0.38, 0.895)
# (row, journal time relative to the run's creation)
ROWS = [(ORIGINAL, 5.0), (A, 50.0), (LOW, 60.0), (STOPPED, 70.0), (D, 220.0), (VARIANT, 230.0)]
REFS = [
    (_ref("ort-x86", 0.6, 0.895), 10.0),  # the best peer within 1 point
    (_ref("nncf-default", 0.3, 0.80), 15.0),  # faster, but loses 10 points
    (_ref("original+tr", 0.05, 0.95), 20.0),  # the training control is no peer
]
REFERENCES_S = 15.0
ORIGINAL_S = 4.0  # the Original's evaluation (journaled at 5 s): set apart like the references
SESSION_2 = 200.0  # a resumed session: the pause since the last row (70 s) is not search time
# The final interleaved re-measurement: D's 1.7x over ort-x86 (journaled, minutes apart) shrinks
# to 1.1x when both are timed round-robin; A is now the fastest member within a point
FINAL = {
    "rounds": 5,
    "front": {
        A.candidate.id: {"latency_ms": 0.45},
        D.candidate.id: {"latency_ms": 0.50},
        VARIANT.candidate.id: {"latency_ms": 0.52},
    },
    "references": {
        REFS[0][0].candidate.id: {"reference": "ort-x86", "latency_ms": 0.55},
        REFS[1][0].candidate.id: {"reference": "nncf-default", "latency_ms": 0.20},
        REFS[2][0].candidate.id: {"reference": "original+tr", "latency_ms": 0.05},
    },
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("runs") / RUN
    with Store(folder / JOURNAL_NAME) as store:
        settings = TuneSettings(suite="digits", device="cpu").to_json()
        store.create_run(
            RUN, suite="digits", profile="cpu", strategy="evolution", seed=0,
            settings=settings, fingerprint={},
        )  # fmt: skip
        for ev, _ in ROWS:
            assert store.add_evaluation(RUN, ev)
        for ev, _ in REFS:
            assert store.add_reference(RUN, ev)
        store.add_screened(RUN, Candidate(LR, 2, PTQ.hash, "mutation"), "dominated")
        store.update_stats(
            RUN,
            elapsed_s=260.0 + REFERENCES_S + ORIGINAL_S,
            references_s=REFERENCES_S,
            original_s=ORIGINAL_S,
            sessions=[{"started": T0, "evaluated": 3}, {"started": T0 + SESSION_2, "evaluated": 2}],
            remeasured_final=FINAL,
        )
    conn = sqlite3.connect(folder / JOURNAL_NAME)
    with conn:
        conn.execute("UPDATE runs SET created=?", (T0,))
        for ev, t in ROWS:
            conn.execute(
                "UPDATE evaluations SET created=? WHERE candidate_id=?", (T0 + t, ev.candidate.id)
            )
        for ev, t in REFS:
            conn.execute(
                "UPDATE reference_evaluations SET created=? WHERE name=?",
                (T0 + t, ev.candidate.reference),
            )
    conn.close()
    return folder


def test_hypervolume_over_the_budget_clock(run_dir: Path) -> None:
    tl = run_timeline(run_dir)
    # reduced rungs, budget stops and the Original are no points; a variant is one
    assert [p.candidate for p in tl.hypervolume] == [
        A.candidate.id,
        D.candidate.id,
        VARIANT.candidate.id,
    ]
    # 50 s less the Original's 4 s and the references' 15 s; after the resume also less the
    # 130 s pause (200 - 70)
    assert [p.seconds for p in tl.hypervolume] == pytest.approx([31.0, 71.0, 81.0])
    config = TuneSettings(suite="digits").objective_config(True, energy=True)
    objectives = Objectives(config, ORIGINAL)
    assert tl.hypervolume[0].hypervolume == pytest.approx(hypervolume([A], objectives))
    assert tl.final_hypervolume == pytest.approx(hypervolume([A, D, VARIANT], objectives))
    assert 0 < tl.hypervolume[0].hypervolume < tl.hypervolume[1].hypervolume
    assert tl.full_evaluations == 2 and tl.screened == 1
    assert tl.search_s == pytest.approx(260.0)
    assert tl.to_json()["full_evaluations_per_hour"] == pytest.approx(2 * 3600 / 260.0)


def test_time_to_beat_the_best_peer(run_dir: Path) -> None:
    beat = run_timeline(run_dir).beat_peer
    assert beat is not None
    # nncf-default is faster but loses 10 points; the control is no peer
    assert (beat.peer, beat.peer_latency_ms, beat.peer_within_points) == ("ort-x86", 0.6, True)
    assert (beat.candidate, beat.seconds) == (D.candidate.id, pytest.approx(71.0))
    never = run_timeline(run_dir, speedup=3.0).beat_peer
    assert never is not None and never.seconds is None and never.candidate is None
    # a stricter quality rule: D (0.5 points lost) no longer counts
    strict = run_timeline(run_dir, points=0.001).beat_peer
    assert strict is not None and strict.seconds is None
    # the closest any candidate came, on journaled figures: D's 0.6 / 0.35
    assert beat.best_speedup == pytest.approx(0.6 / 0.35)


def test_the_final_ratio_uses_the_interleaved_figures(run_dir: Path) -> None:
    final = run_timeline(run_dir).final_peer
    # the same rules (nncf-default loses 10 points, the control is no peer), re-measured figures
    assert (final.peer, final.peer_latency_ms) == ("ort-x86", 0.55)
    assert (final.candidate, final.latency_ms) == (A.candidate.id, 0.45)
    assert final.speedup == pytest.approx(0.55 / 0.45)
    assert run_timeline(run_dir).to_json()["final_peer"]["speedup"] == final.speedup
    strict = run_timeline(run_dir, points=0.001).final_peer  # no member keeps the rule
    assert strict.speedup is None and "within 0.001 points" in strict.note


def test_no_final_ratio_without_the_re_measurement() -> None:
    for record in (None, {"skipped": "the run was made with --no-remeasure"}, {"error": "boom"}):
        final = _final_peer(record, [A, D], [r for r, _ in REFS], ORIGINAL, True, 0.01)
        assert final.speedup is None and final.peer is None
        assert final.note.startswith("no final interleaved re-measurement")
