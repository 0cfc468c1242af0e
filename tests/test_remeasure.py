"""The Original re-timed beside the front, interleaved in one process, on real artifacts."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from petra_hw.pipeline import Pipeline
from petra_hw.profiles import load_profile
from petra_hw.search.evaluator import EvalContext, evaluate_candidate
from petra_hw.search.remeasure import remeasure
from petra_hw.search.types import Candidate

FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()


@pytest.fixture(scope="module")
def evaluated(digits, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    (root / "fast.toml").write_text(FAST_PROFILE)
    torch.save(digits.model.state_dict(), root / "baseline.pt")
    ctx = EvalContext("digits", str(root / "fast.toml"), root, root / "baseline.pt")
    original = evaluate_candidate(Candidate(Pipeline.make()), ctx)
    ptq = evaluate_candidate(Candidate(Pipeline.parse("PTQ")), ctx)
    assert original.ok and ptq.ok
    return (
        original,
        ptq,
        load_profile(str(root / "fast.toml")),
        digits.splits.calib.inputs(16).numpy(),
    )


def test_each_generation_times_the_front_against_the_original(evaluated) -> None:
    original, ptq, profile, inputs = evaluated
    record = remeasure(original, [original, ptq], profile, inputs, final=False)
    assert record["rounds"] == 3 and record["original_latency_ms"] > 0
    assert record["original_drift"] > 0
    assert set(record["front"]) == {ptq.candidate.id}  # the Original is the base, not a member
    row = record["front"][ptq.candidate.id]
    assert row["latency_ratio"] == pytest.approx(row["latency_ms"] / record["original_latency_ms"])
    assert "throughput_ips" not in row  # batch 1 only between generations


def test_the_final_front_is_timed_at_batch_one_and_the_largest_batch(evaluated) -> None:
    original, ptq, profile, inputs = evaluated
    record = remeasure(original, [ptq], profile, inputs, final=True)
    row = record["front"][ptq.candidate.id]
    assert record["rounds"] == 5 and row["throughput_ips"] > 0 and row["throughput_ratio"] > 0
    gone = remeasure(original.__class__(original.candidate), [ptq], profile, inputs, final=True)
    assert "error" in gone  # no artifact of the Original here: recorded, not raised
