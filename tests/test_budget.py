"""The time budget as a hard bound: candidates that would overrun are not started, running ones
are stopped at the deadline and recorded as ``budget`` (not a failure of the candidate)."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import pytest
import torch

from petra_hw.pipeline import Pipeline
from petra_hw.search.budget import BUDGET, NOT_STARTED, BudgetGate, expected_seconds
from petra_hw.search.evaluator import EvalContext
from petra_hw.search.executors import LocalExecutor
from petra_hw.search.store import JOURNAL_NAME, Store
from petra_hw.search.types import Candidate, Evaluation

FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()


def _timed(text: str, total: float, apply_s: float, fidelity: float = 1.0) -> Evaluation:
    c = Candidate(Pipeline.parse(text), fidelity=fidelity)
    return Evaluation(c, timings_s={"total_s": total, "apply_s": apply_s}, fidelity=fidelity)


def test_expected_time_comes_from_the_parent_then_similar_then_all() -> None:
    parent = _timed("Pr - Tr", 30.0, 24.0)
    journal = {
        e.candidate.id: e
        for e in (parent, _timed("LR - Tr", 10.0, 8.0), _timed("LR - Tr(epochs=3)", 20.0, 18.0))
    }
    child = Candidate(Pipeline.parse("Pr(ratio=0.5) - Tr"), 1, parent.candidate.id, "param")
    assert expected_seconds(child, journal) == 30.0
    # at a third of the epochs only the training share shrinks
    assert expected_seconds(dataclasses.replace(child, fidelity=0.25), journal) == 6.0 + 6.0
    similar = Candidate(Pipeline.parse("LR(threshold=0.8) - Tr"), 1, None, "random")
    assert expected_seconds(similar, journal) == 15.0  # median of the two LR - Tr
    other = Candidate(Pipeline.parse("PTQ"), 1, None, "random")
    assert expected_seconds(other, journal) == 20.0  # median of all
    assert expected_seconds(other, {}) is None


def test_the_gate_refuses_what_would_overrun() -> None:
    now = time.monotonic()
    gate = BudgetGate(now + 10.0, lambda c: 12.0 if "Tr" in str(c.pipeline) else 5.0)
    assert gate.refusal(Candidate(Pipeline.parse("PTQ")), now) is None
    assert "12 s" in gate.refusal(Candidate(Pipeline.parse("Tr")), now)
    assert gate.refusal(Candidate(Pipeline.parse("PTQ")), now + 11.0) == "the time budget is spent"


@pytest.fixture(scope="module")
def context(digits, tmp_path_factory) -> EvalContext:
    root = tmp_path_factory.mktemp("run")
    (root / "fast.toml").write_text(FAST_PROFILE)
    torch.save(digits.model.state_dict(), root / "baseline.pt")
    return EvalContext("digits", str(root / "fast.toml"), root, root / "baseline.pt")


def test_a_running_candidate_is_stopped_at_the_deadline(context) -> None:
    hang = Candidate(Pipeline.parse("Tr(epochs=1)"))
    later = Candidate(Pipeline.parse("PTQ"))
    with LocalExecutor(dataclasses.replace(context, fault="timeout"), timeout_s=600) as ex:
        start = time.monotonic()
        ex.budget = BudgetGate(start + 6.0, lambda c: None)
        evs = {e.candidate.id: e for e in ex.submit([hang, later])}
        took = time.monotonic() - start
    assert took < 6.0 + 5.0  # the worker is killed at the deadline, not at its 600 s timeout
    assert evs[hang.id].error_kind == BUDGET and "stopped at the time budget" in evs[hang.id].error
    assert evs[later.id].error_kind == BUDGET and evs[later.id].error.startswith(NOT_STARTED)


def test_a_tune_ends_within_its_budget_and_a_stopped_candidate_is_retried(
    digits, context, tmp_path, monkeypatch
) -> None:
    from petra_hw.search.tune import TuneSettings, tune

    monkeypatch.setenv("PETRA_HW_FAULT", "timeout")  # every candidate hangs
    budget = 30.0
    settings = TuneSettings(
        suite="digits",
        device=context.profile,
        budget_s=budget,
        population=2,
        references=False,
        fidelity_rungs=(),
    )
    result = tune(settings, tmp_path)
    stats = result.stats
    spent = stats["elapsed_s"] - stats["references_s"] - stats["original_s"]
    assert spent <= 1.1 * budget
    assert result.stop_reason.startswith("time budget spent")
    assert result.stats["budget_stops"]["stopped"] >= 1
    assert all(e.error_kind != BUDGET for e in result.evaluations)  # no candidate failure
    with Store(result.run_dir / JOURNAL_NAME) as store:
        stopped = [e for e in store.evaluations(result.run_id) if e.error_kind == BUDGET]
        assert stopped
        again = dataclasses.replace(stopped[0], error=None, error_kind=None)
        assert store.add_evaluation(result.run_id, again)  # a resume's retry replaces it


def test_the_budget_does_not_charge_the_original(digits, tmp_path, monkeypatch) -> None:
    """An Original whose evaluation takes longer than the whole budget still leaves the budget to
    the candidates: its time is set apart (``original_s``), like the references'."""
    from petra_hw.search.tune import TuneSettings, tune

    slow = FAST_PROFILE.replace("min_time_s = 0.05", "min_time_s = 3.0")  # >= 9 s to time it
    slow = slow.replace("max_time_s = 1.0", "max_time_s = 6.0")
    (tmp_path / "slow.toml").write_text(slow)
    monkeypatch.setenv("PETRA_HW_FAULT", "timeout")  # every candidate hangs until stopped
    budget = 5.0
    settings = TuneSettings(
        suite="digits",
        device=str(tmp_path / "slow.toml"),
        budget_s=budget,
        population=2,
        references=False,
        fidelity_rungs=(),
        remeasure=False,
    )
    result = tune(settings, tmp_path / "runs")
    stats = result.stats
    assert stats["original_s"] > budget
    assert stats["budget_stops"].get("stopped", 0) >= 1  # started, then stopped at the bound
    assert stats["elapsed_s"] - stats["references_s"] - stats["original_s"] <= budget + 5.0
