"""Multi-fidelity search: promotion by front entry, reduced rungs kept off fronts and reports, and
a resume that takes its fidelity state from the journal."""

from __future__ import annotations

import dataclasses
import sqlite3
from pathlib import Path

import pytest

from petra_hw.pipeline import Pipeline, Step
from petra_hw.search.fidelity import SuccessiveHalving, enters_front, promoted
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.selection import pareto_front
from petra_hw.search.store import JOURNAL_NAME, SCHEMA_VERSION, Store
from petra_hw.search.types import Candidate, Evaluation

FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()


def _ev(c: Candidate, q: float, lat: float, size: float, **kw) -> Evaluation:
    objectives = {"quality_val": q, "latency_ms": lat, "size_bytes": size, "throughput_ips": 1.0}
    return Evaluation(c, objectives=objectives, quality={"val": q}, fidelity=c.fidelity, **kw)


def _tr(epochs: int) -> Candidate:
    return Candidate(Pipeline.make([Step.make("Tr", epochs=epochs)]), 1, None, "random")


ORIGINAL = _ev(Candidate(Pipeline.make()), 0.90, 1.0, 100.0)
OBJECTIVES = Objectives(ObjectiveConfig(), ORIGINAL)
FRONT = [ORIGINAL, _ev(_tr(1), 0.88, 0.5, 50.0)]


def test_promotion_keeps_exactly_the_low_points_that_enter_the_front() -> None:
    low = {
        "dominated": _ev(dataclasses.replace(_tr(2), fidelity=0.34), 0.80, 0.6, 60.0),
        "faster": _ev(dataclasses.replace(_tr(3), fidelity=0.34), 0.80, 0.3, 60.0),
        "twin": _ev(dataclasses.replace(_tr(4), fidelity=0.34), 0.88, 0.5, 50.0),
        "failed": dataclasses.replace(
            _ev(dataclasses.replace(_tr(5), fidelity=0.34), 0.95, 0.1, 10.0), error="cut"
        ),
        "better": _ev(dataclasses.replace(_tr(6), fidelity=0.34), 0.89, 0.5, 50.0),
    }
    kept = promoted(list(low.values()), FRONT, OBJECTIVES)
    assert {k for k, e in low.items() if e in kept} == {"faster", "better"}
    # each low point is judged alone against the front, as if it were full fidelity
    for name, e in low.items():
        assert enters_front(e, FRONT, OBJECTIVES) == (name in {"faster", "better"})


def test_successive_halving_evaluates_in_full_only_the_promoted() -> None:
    batch = [_tr(2), _tr(3), Candidate(Pipeline.make([Step.make("PTQ")]), 1, None, "seed")]
    planted = {  # candidate id -> what its evaluation measures
        batch[0].pipeline.hash + "@0.34": (0.80, 0.6, 60.0),  # dominated by FRONT[1]
        batch[1].pipeline.hash + "@0.34": (0.80, 0.3, 60.0),  # enters the front
        batch[1].id: (0.87, 0.3, 60.0),
        batch[2].id: (0.89, 0.7, 30.0),  # trains nothing: full at once
    }
    calls: list[list[str]] = []

    def evaluate(todo: list[Candidate]) -> list[Evaluation]:
        calls.append([c.id for c in todo])
        return [_ev(c, *planted[c.id]) for c in todo]

    trains = lambda c: any(s.spec.trains for s in c.pipeline.steps)  # noqa: E731
    out = SuccessiveHalving((0.34,), OBJECTIVES, trains).run(batch, FRONT, evaluate)
    assert calls == [
        [batch[2].id, batch[0].id + "@0.34", batch[1].id + "@0.34"],
        [batch[1].id],  # only the promoted one gets full epochs
    ]
    assert [e.candidate.id for e in out] == [c.id for c in batch]  # one per candidate, in order
    assert [e.fidelity for e in out] == [0.34, 1.0, 1.0]
    # the stopped candidate's low point never reaches the front, though it is the fastest of all
    fast_low = dataclasses.replace(out[0], objectives={**out[0].objectives, "latency_ms": 0.01})
    assert fast_low not in pareto_front([*FRONT, *out[1:], fast_low], OBJECTIVES)


def test_an_older_journal_is_migrated(tmp_path) -> None:
    path = tmp_path / JOURNAL_NAME
    with Store(path) as store:
        store.create_run("r", suite="s", profile="p", strategy="x", seed=0, settings={},
                         fingerprint={})  # fmt: skip
        store.add_evaluation("r", ORIGINAL)
    conn = sqlite3.connect(path)  # back to schema 2: no fidelity (nor variant) column
    conn.execute("ALTER TABLE evaluations DROP COLUMN fidelity")
    conn.execute("ALTER TABLE evaluations DROP COLUMN variant")
    conn.execute("PRAGMA user_version=2")
    conn.commit()
    conn.close()
    with Store(path) as store:
        low = _ev(dataclasses.replace(_tr(2), fidelity=0.5), 0.8, 0.5, 50.0)
        assert store.add_evaluation("r", low)
        assert [e.fidelity for e in store.evaluations("r")] == [1.0, 0.5]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    assert sorted(conn.execute("SELECT fidelity FROM evaluations").fetchall()) == [(0.5,), (1.0,)]
    conn.close()


@pytest.fixture(scope="module")
def fast_profile(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("profile") / "fast.toml"
    path.write_text(FAST_PROFILE)
    return str(path)


def _rows(journal: Path) -> dict[str, tuple[float, float]]:
    conn = sqlite3.connect(journal)
    try:
        rows = conn.execute("SELECT candidate_id, fidelity, created FROM evaluations").fetchall()
    finally:
        conn.close()
    return {cid: (fid, created) for cid, fid, created in rows}


def test_a_run_keeps_low_fidelity_off_its_front_and_report_and_resumes_it(
    digits, fast_profile, tmp_path
) -> None:
    from petra_hw.report.build import build_run
    from petra_hw.search.tune import TuneSettings, resume, tune

    settings = TuneSettings(
        suite="digits",
        device=fast_profile,
        evaluations=3,
        population=3,
        references=False,
        variants=False,  # promotion and its resume are the point here, not backend variants
        space={"kinds": ["Tr", "PTQ"], "max_len": 2},
        fidelity_rungs=(0.34,),
    )
    result = tune(settings, tmp_path)
    journal = result.run_dir / JOURNAL_NAME
    rows = _rows(journal)
    low = {cid: v for cid, v in rows.items() if v[0] < 1}
    assert low and all("@0.34" in cid for cid in low)
    assert all(e.full_fidelity for e in [*result.front, *result.evaluations])
    report = build_run(result.run_dir)
    assert not any("@" in cid for cid in report["front"])
    assert not any("@" in e["id"] for e in report["evaluations"])

    # promotion = front entry against the front before the batch (the Original alone here)
    with Store(journal) as store:
        evs = store.evaluations(result.run_id)
    original = next(e for e in evs if not e.candidate.pipeline.steps)
    objectives = Objectives(OBJECTIVES.config, original)
    full = {e.candidate.id for e in evs if e.full_fidelity}
    for e in evs:
        if not e.full_fidelity:
            assert (e.candidate.pipeline.hash in full) == enters_front(e, [original], objectives)
    final = result.stats["remeasured_final"]  # the front re-timed with the Original, interleaved
    assert set(final["front"]) == {
        e.candidate.id for e in result.front if e.candidate.pipeline.steps
    }
    stats = result.stats["fidelity"]
    assert stats["low_fidelity"] == len(low)
    assert stats["promoted"] + stats["stopped_low"] == len(low)

    # interrupt it after the low rung: drop the full rows of the batch and the post-tell snapshot
    conn = sqlite3.connect(journal)
    conn.execute(
        "DELETE FROM evaluations WHERE fidelity = 1 AND candidate_id != ?",
        (original.candidate.id,),
    )
    conn.execute("DELETE FROM strategy_states WHERE generation >= 1")
    conn.commit()
    conn.close()
    resumed = resume(result.run_id, tmp_path)
    after = _rows(journal)
    assert {k: after[k] for k in low} == low  # the low rung is reused, not run again
    assert {k for k, v in after.items() if v[0] < 1} == set(low)
    assert set(after) == set(rows)  # the same promotions, hence the same full evaluations
    assert resumed.stats["sessions"][-1]["evaluated"] == len(rows) - len(low) - 1


def test_the_early_cut_waits_for_one_epoch_of_batches_at_a_reduced_rung() -> None:
    """At fidelity 0.34 epoch 1 saw a third of the batches: the cut is judged at epoch 3."""
    from types import SimpleNamespace

    from petra_hw.search.evaluator import CandidateCut, CutRule, _cut_callback

    env = SimpleNamespace(base_losses={"default": (0.1, 2.3)})  # start, chance: threshold 1.15
    pipeline = Pipeline.make([Step.make("Tr", epochs=3)])
    full = _cut_callback(env, CutRule(), pipeline)
    with pytest.raises(CandidateCut, match="after epoch 1"):
        full(1, 1.5)
    low = _cut_callback(env, CutRule(), pipeline, fidelity=0.34)
    low(1, 1.5)  # a third of an epoch after pruning: too early to judge
    low(2, 1.5)
    with pytest.raises(CandidateCut, match="after epoch 3 .*fidelity 0.34"):
        low(3, 1.5)
    low(3, 1.0)  # recovered below the threshold: kept
