"""Shared test set-up: one baseline cache per test session, so each suite trains once."""

from __future__ import annotations

import os

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
