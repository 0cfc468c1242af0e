"""Evaluator and executors on the digits suite with real torch, ONNX Runtime and Ray.

Faults are injected through ``EvalContext.fault`` (what ``PETRA_HW_FAULT`` sets): no mocks.
A profile with short measurements keeps each evaluation to a few seconds on 2 cores.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from pathlib import Path

import pytest
import torch

from petra_hw.pipeline import Pipeline
from petra_hw.search.evaluator import (
    CutRule,
    EvalContext,
    applied_pipeline,
    computing,
    evaluate_candidate,
    fault_from_env,
    measuring,
)
from petra_hw.search.executors import LocalExecutor, RayExecutor
from petra_hw.search.types import Candidate

FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()


def candidate(text: str) -> Candidate:
    return Candidate(Pipeline.parse(text))


@pytest.fixture(scope="module")
def context(digits, tmp_path_factory) -> EvalContext:
    root = tmp_path_factory.mktemp("run")
    (root / "fast.toml").write_text(FAST_PROFILE)
    torch.save(digits.model.state_dict(), root / "baseline.pt")
    return EvalContext("digits", str(root / "fast.toml"), root, root / "baseline.pt")


@pytest.mark.parametrize(
    ("text", "change", "kind"),
    [
        ("Tr(epochs=1)", {"fault": "step"}, "step"),
        ("LR", {"fault": "export"}, "compile"),
        ("Tr(epochs=1)", {"fault": "nan"}, "nan"),
        ("Tr(epochs=1)", {"cut": CutRule(factor=0.0, chance_fraction=0.0)}, "cut"),
        ("PDQ", {"backend": "torch"}, "compile"),  # no backend compiles int8 when pinned to torch
    ],
)
def test_failures_are_evaluations(context, text, change, kind) -> None:
    ev = evaluate_candidate(candidate(text), dataclasses.replace(context, **change))
    assert ev.error_kind == kind, ev.error
    assert ev.error and not ev.ok and not ev.feasible and not ev.objectives


def test_prefix_reuse_follows_the_run_folder_and_can_be_turned_off(context, tmp_path) -> None:
    """Children reuse a prefix only within their own run folder (a Ray worker may serve several
    runs), and ``prefix_reuse=False`` recomputes every step (the benchmark's reference arm)."""
    parent, child = candidate("LR - Tr(epochs=1)"), candidate("LR - Tr(epochs=1) - PTQ")
    runs = [dataclasses.replace(context, run_dir=tmp_path / name) for name in ("a", "b")]
    assert evaluate_candidate(parent, runs[0]).ok
    assert evaluate_candidate(child, runs[0]).cache_hit_steps == 2
    assert evaluate_candidate(child, runs[1]).cache_hit_steps == 0  # run b has no cache yet
    assert (tmp_path / "b" / "prefix-cache").is_dir()
    off = dataclasses.replace(context, run_dir=tmp_path / "c", prefix_reuse=False)
    for c in (parent, child):
        ev = evaluate_candidate(c, off)
        assert ev.ok and ev.cache_hit_steps == 0
    assert not (tmp_path / "c" / "prefix-cache").exists()


def test_fault_env_is_validated(monkeypatch) -> None:
    from petra_hw.errors import UserError

    monkeypatch.setenv("PETRA_HW_FAULT", "export@Pr")
    assert fault_from_env() == "export@Pr"
    monkeypatch.setenv("PETRA_HW_FAULT", "explode")
    with pytest.raises(UserError):
        fault_from_env()


def test_untrained_mode_trains_first(context) -> None:
    from petra_hw.suite import load_suite

    suite = load_suite("digits")
    p = Pipeline.parse("LR - PTQ ; lr=0.01")
    assert applied_pipeline(context, suite, p) == p
    untrained = applied_pipeline(dataclasses.replace(context, mode="untrained"), suite, p)
    assert str(untrained) == f"Tr(epochs={suite.train.epochs}) - LR - PTQ ; lr=0.01"


def test_local_executor_survives_crash_and_timeout(context) -> None:
    with LocalExecutor(dataclasses.replace(context, fault="segfault"), timeout_s=300) as ex:
        evs = {e.candidate.id: e for e in ex.submit([candidate("Original"), candidate("LR")])}
        original, crashed = evs[candidate("Original").id], evs[candidate("LR").id]
        assert original.ok and original.objectives["latency_ms"] > 0, original.error
        assert crashed.error_kind == "crash" and "SIGSEGV" in crashed.error

        ex.context, ex.timeout_s = dataclasses.replace(context, fault="timeout"), 5.0
        [slow] = ex.submit([candidate("Pr")])
        assert slow.error_kind == "timeout"

        ex.context, ex.timeout_s = context, 300.0  # the replaced worker evaluates normally
        [ok] = ex.submit([candidate("LR")])
        assert ok.ok and ok.backend == "onnxruntime", ok.error


def test_measurement_waits_for_compute_and_blocks_new_compute() -> None:
    holding = threading.Event()

    def hold(lock) -> None:
        with lock():
            holding.set()
            time.sleep(0.5)

    for first, second in ((computing, measuring), (measuring, computing)):
        holding.clear()
        t = threading.Thread(target=hold, args=(first,))
        t.start()
        holding.wait()
        start = time.monotonic()
        with second():
            waited = time.monotonic() - start
        t.join()
        assert waited >= 0.3, (first.__name__, second.__name__, waited)


def test_ray_executor_runs_evaluations(context) -> None:
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        ex = RayExecutor(context, timeout_s=300)
        evs = list(ex.submit([candidate("Original"), candidate("LR")]))
        # the task times its candidate on the node: own compute only, as the local executor does
        ex.context, ex.timeout_s = dataclasses.replace(context, fault="timeout"), 5.0
        [slow] = ex.submit([candidate("Pr")])
        ex.close()
    finally:
        ray.shutdown()
    assert len(evs) == 2
    assert all(e.ok and e.objectives["latency_ms"] > 0 for e in evs), [e.error for e in evs]
    assert all(Path(e.artifact).is_dir() for e in evs)
    assert slow.error_kind == "timeout" and "own compute" in slow.error
