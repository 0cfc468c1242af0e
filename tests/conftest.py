"""Shared test set-up: one baseline cache per test session, so each suite trains once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests that start Ray themselves (as a caller's own cluster) get what petra-hw sets when it
# starts Ray: no driver metrics, whose exporter outlives ray.shutdown() in Ray 2.60
# (petra_hw.search.executors.RayExecutor).
os.environ.setdefault("RAY_enable_metrics_collection", "0")


@pytest.fixture(scope="session", autouse=True)
def _baseline_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    if "PETRA_HW_CACHE" not in os.environ:
        os.environ["PETRA_HW_CACHE"] = str(tmp_path_factory.mktemp("petra-cache"))


@pytest.fixture(scope="session")
def digits():
    """The digits suite's baseline (trained once per session, ~10 s on 2 cores)."""
    from petra_hw.baseline import get_baseline
    from petra_hw.suite import load_suite

    return get_baseline(load_suite("digits"), 0)


@pytest.fixture(scope="session")
def cpu_profile():
    from petra_hw.profiles import load_profile

    return load_profile("cpu")


@pytest.fixture(scope="session")
def tiny_run(digits, tmp_path_factory):
    """A finished run on digits (the Original and 3 candidates, population 2, references on),
    shared by the report and export tests: tuning it twice cost ~20 s of the default run."""
    from petra_hw.search.tune import TuneSettings, tune

    root = tmp_path_factory.mktemp("tiny-run")
    (root / "fast.toml").write_text((Path(__file__).parent / "data" / "cpu-fast.toml").read_text())
    settings = TuneSettings(
        suite="digits", device=str(root / "fast.toml"), seed=0, evaluations=3, population=2
    )
    return tune(settings, root / "runs")
