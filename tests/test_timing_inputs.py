"""Artifacts are timed on real calib rows, tiled to the batch size, not on noise: a model whose
input carries an index (as transactions-coles' does) would index out of range on noise."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from petra_hw.artifact import read_artifact
from petra_hw.assess import compile_model, judge
from petra_hw.pipeline import Pipeline
from petra_hw.profiler import (
    TIMING_INPUTS,
    measure,
    measure_artifact,
    measure_fresh_process,
    tiled,
    timing_inputs,
)
from petra_hw.suite import RMSE, Split, Splits, Suite


class Indexed(nn.Module):
    """Column 0 is a category index (0..9) stored as a float, as in an event-sequence input."""

    def __init__(self) -> None:
        super().__init__()
        self.embedding = nn.Embedding(10, 3)
        self.head = nn.Linear(3 + 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.embedding(x[:, 0].long()), x[:, 1:]], dim=1))


def _split(n: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, 10, (n, 1), generator=g).float()
    return Split(torch.cat([idx, torch.randn(n, 2, generator=g)], dim=1), torch.randn(n))


SPLITS = Splits(_split(64, 0), _split(12, 1), _split(16, 2), _split(16, 3))
SUITE = Suite("indexed", "regression", Indexed, lambda _ctx: SPLITS, RMSE, (3,))


@pytest.fixture(scope="module")
def fast(cpu_profile):
    settings = dataclasses.replace(
        cpu_profile.measurement, warmup_iters=1, min_iters=3, min_time_s=0.0, max_time_s=1.0
    )
    return dataclasses.replace(
        cpu_profile, batch_sizes=(1, 32), measurement=settings, backends=("torch",)
    )


@pytest.fixture(scope="module")
def artifact(fast, tmp_path_factory):
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("indexed") / "a"
    return compile_model(
        Indexed().eval(), SUITE, SPLITS, fast, "torch", "fp32", out, Pipeline().to_json()
    )


def test_artifact_keeps_real_calib_rows(artifact) -> None:
    rows = timing_inputs(read_artifact(artifact.path))
    assert rows is not None and TIMING_INPUTS in read_artifact(artifact.path).all_files
    # all calib rows fit (12 < the largest batch size 32), as float32, in their order
    np.testing.assert_array_equal(rows, SPLITS.calib.inputs().numpy())
    assert tiled(rows, 32).shape == (32, 3) and (tiled(rows, 32)[12:24] == rows).all()


def test_indexed_model_is_timed_on_real_inputs(artifact, fast) -> None:
    a = judge(artifact, SUITE, SPLITS, fast)  # the search's path
    assert a.measurement.latency.batch_size == 1 and a.measurement.throughput_ips > 0
    m = measure_artifact(artifact.path, fast)  # petra-hw profile ARTIFACT
    assert [s.batch_size for s in m.throughput] == [32]
    # noise is what the profiler used before: it indexes out of range here
    runner = __import__("petra_hw").load(artifact.path)
    with pytest.raises(Exception, match="index|range"):
        measure(runner, (3,), fast, backend="torch", precision="fp32", size_bytes=1)


def test_fresh_process_reads_the_stored_rows(artifact, tmp_path) -> None:
    from petra_hw.profiles import load_profile

    text = (Path(__file__).parents[1] / "profiles" / "cpu.toml").read_text()
    for key, value in (("min_iters", 3), ("min_time_s", 0.0), ("max_time_s", 0.5)):
        text = re.sub(rf"(?m)^{key} = \S+", f"{key} = {value}", text)
    (tmp_path / "quick.toml").write_text(text)
    m = measure_fresh_process(artifact.path, load_profile(str(tmp_path / "quick.toml")))
    assert m.fresh_process and m.latency.p50_ms > 0
