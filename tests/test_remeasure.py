"""The Original re-timed beside the front (and, at the end, the references), interleaved in one
process, on real artifacts."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from petra_hw.pipeline import Pipeline
from petra_hw.profiles import load_profile
from petra_hw.references import CONTROL, reference_candidates
from petra_hw.search.evaluator import EvalContext, evaluate_candidate
from petra_hw.search.remeasure import remeasure
from petra_hw.search.types import Candidate
from petra_hw.value import JOURNALED, REMEASURED, final_figures

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


@pytest.fixture(scope="module")
def references(evaluated):
    """ORT's x86 recipe (a peer) and the training control, built as a tune builds them."""
    original, *_ = evaluated
    root = next(p for p in Path(original.artifact).parents if (p / "fast.toml").is_file())
    ctx = EvalContext("digits", str(root / "fast.toml"), root, root / "baseline.pt")
    wanted = [c for c in reference_candidates(False, 1) if c.reference in ("ort-x86", CONTROL)]
    refs = [evaluate_candidate(c, ctx) for c in wanted]
    assert all(r.ok for r in refs), [r.error for r in refs]
    return refs


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


def test_the_final_re_measure_times_the_peers_and_the_control(
    evaluated, references, tmp_path
) -> None:
    original, ptq, profile, inputs = evaluated
    samples = tmp_path / "samples.json"
    record = remeasure(
        original, [original, ptq], profile, inputs, final=True, references=references,
        samples_path=samples,
    )  # fmt: skip
    assert "failed" not in record and record["original_id"] == original.candidate.id
    assert record["batch_sizes"] == [1, 8] and record["original_throughput_ips"] > 0
    assert set(record["references"]) == {r.candidate.id for r in references}
    for r in references:
        row = record["references"][r.candidate.id]
        assert row["reference"] == r.candidate.reference
        assert row["latency_ms"] > 0 and row["throughput_ips"] > 0 and row["iqr_ms"] >= 0
    raw = json.loads(samples.read_text())  # every raw sample, per artifact and batch size
    ids = {original.candidate.id, ptq.candidate.id, *(r.candidate.id for r in references)}
    assert record["samples_path"] == str(samples) and set(raw["artifacts"]) == ids
    for timed in raw["artifacts"].values():
        assert len(timed["samples_ms"]["1"]) >= 5 and len(timed["samples_ms"]["8"]) >= 5
        assert len(timed["round_p50_ms"]["1"]) == raw["rounds"] == 5
    figures = final_figures(record, [original, ptq], references)
    assert figures.source == REMEASURED
    assert (
        figures.values[ptq.candidate.id]["latency_ms"]
        == record["front"][ptq.candidate.id]["latency_ms"]
    )
    peer = references[0].candidate.id
    assert figures.values[peer]["throughput_ips"] == record["references"][peer]["throughput_ips"]


def test_an_artifact_that_fails_to_load_is_named_and_the_figures_fall_back(
    evaluated, references, tmp_path
) -> None:
    original, ptq, profile, inputs = evaluated
    peer, control = references
    broken = tmp_path / "broken"
    shutil.copytree(peer.artifact, broken)
    for model in broken.glob("*.onnx"):
        model.write_bytes(b"not a model")  # its sha256 no longer matches the manifest
    peer = dataclasses.replace(peer, artifact=str(broken))
    record = remeasure(original, [ptq], profile, inputs, final=True, references=[peer, control])
    assert set(record["failed"]) == {peer.candidate.id}  # named with its reason ...
    assert ptq.candidate.id in record["front"] and control.candidate.id in record["references"]
    figures = final_figures(record, [original, ptq], [peer, control])  # ... and never mixed in
    assert figures.source == JOURNALED and figures.values == {}
    assert f"lacks ref: ort-x86 ({record['failed'][peer.candidate.id]})" in figures.note
