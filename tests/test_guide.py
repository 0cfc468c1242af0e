"""Cheap objectives, screening and the learned cost model (issue 20, items 2 and 3)."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from petra_hw.pipeline import Pipeline, parse_pipeline
from petra_hw.search.costmodel import CostModel, Measurement
from petra_hw.search.features import StructureProbe, graph_features
from petra_hw.search.guide import Guide
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.screening import screen_reason
from petra_hw.search.selection import pareto_front
from petra_hw.search.types import Candidate, Evaluation
from suites.digits.suite import DigitsCNN

FAST_PROFILE = Path(__file__).parent / "data" / "cpu-fast.toml"


@pytest.fixture(scope="module")
def probe(digits, cpu_profile) -> StructureProbe:
    return StructureProbe(digits, cpu_profile)


def _ev(text: str, quality: float, latency: float, size: float, **kw) -> Evaluation:
    """A planted measurement (quality on val, latency in ms, size in bytes)."""
    return Evaluation(
        Candidate(parse_pipeline(text) if text else Pipeline.make(), 1, kw.pop("parent", None)),
        objectives={
            "quality_val": quality,
            "latency_ms": latency,
            "throughput_ips": 1000.0 / latency,
            "size_bytes": size,
        },
        quality={"val": quality, "test": quality},
        **kw,
    )


# -- features --------------------------------------------------------------------------------
def test_features_are_deterministic_for_a_pipeline(digits, cpu_profile, probe) -> None:
    text = "LR(rule=ratio, threshold=0.5) - Tr - Pr(ratio=0.5) - PTQ"
    fresh = StructureProbe(digits, cpu_profile)  # nothing cached: computed again from scratch
    a, b = probe.structure(parse_pipeline(text)), fresh.structure(parse_pipeline(text))
    assert a is not None and a == b and a.features == b.features
    assert a.precision == "int8-static" and a.exact  # LR sees the starting weights: exact
    original = probe.structure(Pipeline.make())
    assert a.macs < original.macs and a.size_bytes < original.size_bytes
    assert dict(a.features)["precision:int8-static"] == 1.0
    # training before a weight-dependent step: the untrained structure is not the real one
    assert not probe.structure(parse_pipeline("Tr - LR")).exact
    assert probe.structure(parse_pipeline("Tr - Pr(ratio=0.5)")).exact  # uniform: by count


def test_structural_steps_change_the_counted_macs() -> None:
    small, wide = DigitsCNN(width=8), DigitsCNN(width=32)
    x = torch.zeros(1, 1, 8, 8)
    fs, fw = graph_features(small, x, "fp32"), graph_features(wide, x, "int8")
    assert 0 < fs["macs"] < fw["macs"] and fs["channels:conv_out"] == 8 + 16 + 16
    assert fs["macs"] == fs["macs:aten.convolution"] + fs["macs:aten.addmm"]
    params = sum(p.numel() for p in small.parameters())
    assert fs["params"] == params and fs["size_bytes"] >= 4 * params  # fp32: 4 bytes each


# -- screening -------------------------------------------------------------------------------
def test_screening_never_drops_a_candidate_that_would_be_non_dominated(probe) -> None:
    """Planted: a small but poor point must not screen a larger child that would be accurate;
    the same structure at the run's best quality must."""
    original = _ev("", 0.95, 1.0, 400_000)
    objectives = Objectives(ObjectiveConfig(), original)
    small, child = "Pr(ratio=0.6) - PTQ", "Pr(ratio=0.2) - PTQ"
    s_small, s_child = (
        probe.structure(parse_pipeline(small)),
        probe.structure(parse_pipeline(child)),
    )
    assert s_small.macs < s_child.macs and s_small.size_bytes < s_child.size_bytes

    poor = _ev(small, 0.60, 0.3, 30_000)  # smaller, faster, 37% worse
    points = [(original, probe.structure(Pipeline.make())), (poor, s_small)]
    # what the child would measure: non-dominated (more accurate than the small point)
    would_be = _ev(child, 0.94, 0.5, 60_000)
    assert would_be in pareto_front([original, poor, would_be], objectives)
    assert screen_reason(s_child, points, objectives) is None

    good = _ev(small, 0.95, 0.3, 30_000)  # as accurate as the best point of the run
    points.append((good, s_small))
    reason = screen_reason(s_child, points, objectives)
    assert reason is not None and small in reason
    dominated = replace(would_be, quality={"val": 0.95}, objectives={**would_be.objectives})
    assert dominated not in pareto_front([original, good, dominated], objectives)

    # a child at another precision, or with an inexact structure, is never screened
    fp32 = probe.structure(parse_pipeline("Pr(ratio=0.2)"))
    assert screen_reason(fp32, points, objectives) is None
    inexact = probe.structure(parse_pipeline("Reg - Pr(ratio=0.2, scope=global) - PTQ"))
    assert not inexact.exact and screen_reason(inexact, points, objectives) is None
    # a point better than the Original moves the ceiling: `good` no longer screens
    better = _ev("Tr", 0.97, 1.0, 400_000)
    points.append((better, probe.structure(parse_pipeline("Tr"))))
    assert screen_reason(s_child, points, objectives) is None


# -- cost model ------------------------------------------------------------------------------
def _synthetic(width: int, precision: str) -> Measurement:
    """Real graph features of a DigitsCNN; a latency that grows with MACs, INT8 faster."""
    f = graph_features(DigitsCNN(width=width), torch.zeros(1, 1, 8, 8), precision)
    f[f"precision:{precision}"] = 1.0
    latency = 0.01 + f["macs"] * 1e-8 * (0.5 if precision == "int8" else 1.0)
    return Measurement(f"{precision}-{width}", tuple(sorted(f.items())), (latency, 32 / latency))


def test_cost_model_cold_start_then_ranks_held_out_measurements() -> None:
    rng = np.random.default_rng(0)
    rows = [
        _synthetic(int(w), p)
        for w in rng.permutation(np.arange(4, 44, 2))
        for p in ("fp32", "int8")
    ]
    model, twin = CostModel(min_train=6), CostModel(min_train=6)
    for i, row in enumerate(rows):
        assert model.ready == (i >= 6)
        if not model.ready:
            with pytest.raises(RuntimeError):
                model.predict([row.features])
        model.add(row)
        twin.add(row)
    acc = model.accuracy()
    assert acc["heldout_latency_ms"] == len(rows) - 6  # each predicted before it was learned
    assert acc["spearman_latency_ms"] > 0.8 and acc["spearman_throughput_ips"] > 0.8
    assert acc["mre_latency_ms"] < 0.5
    # the same measurements in the same order give the same model
    assert model.training_digest() == twin.training_digest()
    p, q = model.predict([rows[0].features]), twin.predict([rows[0].features])
    assert np.array_equal(p.samples["latency_ms"], q.samples["latency_ms"])
    assert p.std("latency_ms")[0] >= 0.0


def test_guide_prefers_the_predicted_better_child_and_falls_back_when_cold(probe) -> None:
    original = _ev("", 0.95, 1.0, 400_000)
    objectives = Objectives(ObjectiveConfig(), original)
    texts = [f"Pr(ratio={r})" for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)]
    measured = [original]
    for t in texts:  # planted measurements: latency follows the real MACs
        s = probe.structure(parse_pipeline(t))
        measured.append(_ev(t, 0.9, s.macs / probe.structure(Pipeline.make()).macs, s.size_bytes))
    guide = Guide(probe, objectives, mutants=4, cost_model=CostModel(min_train=6))
    guide.observe(measured[:3])
    assert guide.draws == 1  # cold start: plain mutation
    drafts = [
        Candidate(parse_pipeline(t), 2, measured[1].candidate.id)
        for t in ("Pr(ratio=0.15)", "Pr(ratio=0.7)")
    ]
    assert guide.choose(drafts, [original]) is drafts[0]
    guide.observe(measured)
    assert guide.draws == 4 and guide.cost_model.ready
    scores = guide.scores(drafts, [original, *measured[1:3]])
    assert scores[1] > scores[0]
    assert guide.choose(drafts, [original, *measured[1:3]]) is drafts[1]
    assert math.isfinite(scores[1][0])


# -- the tune loop ---------------------------------------------------------------------------
def test_resume_restores_the_cost_model_training_set(digits, tmp_path) -> None:
    from petra_hw.report import write_report
    from petra_hw.search.store import JOURNAL_NAME, Store
    from petra_hw.search.tune import TuneSettings, resume, tune

    settings = TuneSettings(
        suite="digits",
        device=str(FAST_PROFILE),
        evaluations=3,
        population=2,
        references=False,
        variants=False,  # variants are points, never training rows of the cost model
    )
    first = tune(settings, tmp_path)
    cm = first.stats["cost_model"]
    # every journaled measurement, reduced rungs included (their timing is real); backend
    # variants are points, not training rows: their features would be their parent's
    with Store(first.run_dir / JOURNAL_NAME) as store:
        rows = store.evaluations(first.run_id)
    learnable = [e for e in rows if e.ok and not e.candidate.variant]
    assert any(not e.full_fidelity for e in learnable)  # the live run learned its low rung too
    assert cm["enabled"] and cm["n_train"] == len(learnable)
    assert first.stats["screening"]["enabled"]
    again = resume(first.run_id, tmp_path)  # finished: the journal is all it has
    assert again.stats["cost_model"]["training_digest"] == cm["training_digest"]
    assert again.stats["cost_model"]["n_train"] == cm["n_train"]
    with Store(first.run_dir / JOURNAL_NAME) as store:
        assert len(store.screened(first.run_id)) == first.stats["screening"]["screened"]
    md = Path(write_report(first.run_dir)["markdown"]).read_text()
    assert "cost model" in md and "screened" in md


def test_the_ablation_switches_turn_both_off(digits, tmp_path) -> None:
    from petra_hw.cli import main
    from petra_hw.search.store import JOURNAL_NAME, Store

    argv = ["tune", "--suite", "digits", "--device", str(FAST_PROFILE), "--evaluations", "1"]
    argv += ["--population", "1"]
    argv += ["--no-references", "--no-screening", "--no-cost-model", "--mutants", "3"]
    assert main([*argv, "--out", str(tmp_path)]) == 0
    [journal] = tmp_path.glob(f"*/{JOURNAL_NAME}")
    with Store(journal) as store:
        [run] = store.runs()
    assert run.settings["screening"] is False and run.settings["cost_model"] is False
    assert run.settings["mutants"] == 3
    assert run.stats["screening"] == {"enabled": False}
    assert run.stats["cost_model"] == {"enabled": False}
