"""Backends as part of the search: one training, one evaluation per backend that runs the
candidate's precision, each variant failing (or timing out) on its own; and the first generation's
four single-structure pipelines."""

from __future__ import annotations

import dataclasses
import re
import sqlite3
from pathlib import Path

import pytest
import torch

from petra_hw.pipeline import Pipeline
from petra_hw.profiles import load_profile
from petra_hw.search.evaluator import EvalContext, evaluate_candidate
from petra_hw.search.executors import LocalExecutor
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.space import SearchSpace
from petra_hw.search.store import JOURNAL_NAME, SCHEMA_VERSION, Store
from petra_hw.search.strategy import get_strategy
from petra_hw.search.types import Candidate, Evaluation
from petra_hw.search.variants import variant_candidates, variant_timeout_s

FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()


@pytest.fixture(scope="module")
def context(digits, tmp_path_factory) -> EvalContext:
    root = tmp_path_factory.mktemp("run")
    (root / "fast.toml").write_text(FAST_PROFILE)
    torch.save(digits.model.state_dict(), root / "baseline.pt")
    return EvalContext("digits", str(root / "fast.toml"), root, root / "baseline.pt")


def test_one_training_yields_one_evaluation_per_supporting_backend(context) -> None:
    profile = load_profile(context.profile)
    # no prefix cache: a variant can only have its parent's model from the worker's memory
    ctx = dataclasses.replace(context, prefix_reuse=False)
    trained = evaluate_candidate(Candidate(Pipeline.parse("Tr(epochs=2) - PTQ"), 1), ctx)
    assert trained.ok, trained.error
    assert trained.backend == "onnxruntime" and trained.variant == ""
    variants = variant_candidates([trained], profile)
    # int8: ONNX Runtime trained and compiled it, OpenVINO is the one other backend (torch has
    # no int8, and is no search variant anyway)
    assert [(v.variant, v.parent, v.fidelity) for v in variants] == [
        ("openvino", trained.candidate.id, 1.0)
    ]
    (ev,) = [evaluate_candidate(v, ctx) for v in variants]
    assert ev.ok, ev.error
    assert ev.backend == "openvino" and ev.variant.startswith("openvino/int8")
    assert ev.candidate.id == f"{trained.candidate.pipeline.hash}.openvino"
    assert Path(ev.artifact).name == ev.candidate.id
    # the same trained model: no step ran again, the two INT8 artifacts agree on quality
    assert ev.timings_s["apply_s"] < 0.2 * trained.timings_s["apply_s"]
    assert abs(ev.quality["val"] - trained.quality["val"]) < 0.05
    # an FP32 candidate gets its OpenVINO FP32 variant; the Original, a failure, a reduced
    # rung and a pinned backend get none
    fp32 = dataclasses.replace(trained, candidate=Candidate(Pipeline.parse("Tr(epochs=2)"), 1))
    assert [v.variant for v in variant_candidates([fp32], profile)] == ["openvino"]
    none = [
        dataclasses.replace(trained, candidate=Candidate(Pipeline.make())),
        dataclasses.replace(trained, error="boom", error_kind="step"),
        dataclasses.replace(
            trained,
            candidate=dataclasses.replace(trained.candidate, fidelity=0.34),
            fidelity=0.34,
        ),
    ]
    assert variant_candidates(none, profile) == []
    assert variant_candidates([trained], profile, pinned="onnxruntime") == []


def test_a_variant_with_no_trained_model_is_recorded_never_retrained(context) -> None:
    ctx = dataclasses.replace(context, prefix_reuse=False)
    orphan = Candidate(
        Pipeline.parse("Tr(epochs=3) - PTQ"), 1, "unknown", "variant", variant="openvino"
    )
    ev = evaluate_candidate(orphan, ctx)
    assert ev.error_kind == "compile" and "never trained again" in ev.error
    assert ev.variant == "openvino/int8-static"


def test_failing_and_timed_out_variants_leave_the_other_evaluations(context) -> None:
    assert variant_timeout_s(600) == 120 and variant_timeout_s(180) == 90
    assert variant_timeout_s(20) == 30
    profile = load_profile(context.profile)
    ptq = Candidate(Pipeline.parse("PTQ"), 1)
    for fault, kind in (("export@openvino", "compile"), ("timeout@openvino", "timeout")):
        ctx = dataclasses.replace(context, fault=fault)
        with LocalExecutor(ctx, workers=1, timeout_s=60) as executor:
            (trained,) = executor.submit([ptq])
            assert trained.ok, trained.error  # the fault strikes the OpenVINO variant only
            (variant,) = executor.submit(variant_candidates([trained], profile))
            assert variant.error_kind == kind and not variant.ok, variant.error
            if kind == "timeout":  # its own limit: half of 60 s, not the candidate's 60 s
                assert "after 30 s" in variant.error
                assert variant.timings_s["total_s"] < 55
            # the worker goes on: the candidate is evaluated again, as data
            (again,) = executor.submit([Candidate(Pipeline.parse("PTQ(calibration=entropy)"))])
            assert again.ok, again.error


def test_a_run_journals_its_variants_labelled(digits, tmp_path) -> None:
    from petra_hw.report.build import build_run
    from petra_hw.search.tune import TuneSettings, tune

    (tmp_path / "fast.toml").write_text(FAST_PROFILE)
    settings = TuneSettings(
        suite="digits",
        device=str(tmp_path / "fast.toml"),
        evaluations=1,
        population=2,
        references=False,
        remeasure=False,
        space={"kinds": ["Pr", "Tr", "PTQ"], "max_len": 3},
        fidelity_rungs=(0.34,),
    )
    result = tune(settings, tmp_path)
    conn = sqlite3.connect(result.run_dir / JOURNAL_NAME)
    rows = conn.execute(
        "SELECT candidate_id, pipeline, fidelity, variant FROM evaluations"
    ).fetchall()
    conn.close()
    labelled = {cid: (pipeline, variant) for cid, pipeline, _, variant in rows if variant}
    assert [(p, v.split("+")[0]) for p, v in labelled.values()] == [
        ("PTQ", "openvino/int8-static")
    ], rows
    assert all(fid == 1.0 for _, _, fid, variant in rows if variant)
    # the variant is on the run's evaluations (a point of its own) and reported with its label
    assert any(e.candidate.variant == "openvino" for e in result.evaluations)
    report = build_run(result.run_dir)
    (row,) = [e for e in report["evaluations"] if e["id"] in labelled]
    assert (row["backend"], row["precision"].split("+")[0]) == ("openvino", "int8-static")
    assert result.stats["evaluations"] == 3  # the Original, PTQ and its one variant


def test_an_older_journal_gets_the_variant_column(tmp_path) -> None:
    path = tmp_path / JOURNAL_NAME
    original = Evaluation(Candidate(Pipeline.make()), objectives={"quality_val": 0.9})
    with Store(path) as store:
        store.create_run("r", suite="s", profile="p", strategy="x", seed=0, settings={},
                         fingerprint={})  # fmt: skip
        store.add_evaluation("r", original)
    conn = sqlite3.connect(path)  # back to schema 3: no variant column
    conn.execute("ALTER TABLE evaluations DROP COLUMN variant")
    conn.execute("PRAGMA user_version=3")
    conn.commit()
    conn.close()
    variant = Evaluation(
        Candidate(Pipeline.parse("PTQ"), 1, "abc", "variant", variant="openvino"),
        backend="openvino",
        precision="int8",
    )
    with Store(path) as store:
        assert store.add_evaluation("r", variant)
        assert [e.candidate.variant for e in store.evaluations("r")] == [None, "openvino"]
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 4
    assert conn.execute("SELECT variant FROM evaluations ORDER BY seq").fetchall() == [
        ("",),
        ("openvino/int8",),
    ]
    conn.close()


def _objectives() -> Objectives:
    original = Evaluation(
        Candidate(Pipeline.make()),
        objectives={"quality_val": 0.9, "latency_ms": 1.0, "size_bytes": 100.0},
        quality={"val": 0.9},
    )
    return Objectives(ObjectiveConfig(), original)


def _structure(c: Candidate) -> str:
    """The pipeline's kinds as the paper prints them, hyperparameters left out."""
    return re.sub(r"\([^)]*\)", "", str(c.pipeline))


def test_the_first_generation_is_the_four_structures() -> None:
    s = get_strategy("evolution", SearchSpace.default(), 0, objectives=_objectives(),
                     population_size=4)  # fmt: skip
    first = [_structure(c) for c in s.ask(4)]
    assert first == ["PTQ", "Pr - Tr - PTQ", "LR - Tr - PTQ", "QAT"]
    # a space fitted to a model where LR cannot apply: that seed is left out, not forced in
    fitted = SearchSpace.from_spec({"kinds": ["Tr", "Pr", "QAT", "PTQ"], "max_len": 3})
    s = get_strategy("evolution", fitted, 0, objectives=_objectives(), population_size=4)
    seeds = [c for c in s.ask(4) if c.operator == "seed"]
    assert [_structure(c) for c in seeds] == ["PTQ", "Pr - Tr - PTQ", "QAT"]
