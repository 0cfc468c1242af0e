"""The search space fitted to the suite's model: kinds and choices that cannot change it are
dropped once, before the run journals its space (real torch models)."""

from __future__ import annotations

import json
import logging

import pytest
import torch
from torch import nn

from petra_hw.cli import main
from petra_hw.errors import UserError
from petra_hw.search.applicable import ModelTraits, fit_space
from petra_hw.search.space import SearchSpace

EXAMPLE = torch.zeros(1, 1, 8, 8)


def no_batchnorm() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(16 * 64, 10)
    )


def one_output() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 1))  # rank 1 already: nothing to factorize


def test_bn_scale_leaves_a_model_without_batchnorm(caplog) -> None:
    with caplog.at_level(logging.INFO, logger="petra_hw.search.applicable"):
        space = fit_space(SearchSpace.default(), no_batchnorm(), EXAMPLE)
    assert "Pr" in space.kinds and "LR" in space.kinds
    assert "bn_scale" not in space.param_range("Pr", "criterion").choices
    assert set(space.param_range("Pr", "criterion").choices) == {
        "l1", "l2", "taylor", "hessian", "lamp",
    }  # fmt: skip
    assert "bn_scale dropped" in caplog.text
    assert SearchSpace.from_spec(json.loads(json.dumps(space.to_spec()))) == space
    # with BatchNorm nothing is dropped
    with_bn = nn.Sequential(
        nn.Conv2d(1, 16, 3), nn.BatchNorm2d(16), nn.Flatten(), nn.LazyLinear(10)
    )
    with_bn(EXAMPLE)
    assert fit_space(SearchSpace.default(), with_bn, EXAMPLE) == SearchSpace.default()


def test_kinds_that_cannot_change_the_model_are_dropped() -> None:
    traits = ModelTraits.of(one_output(), EXAMPLE)
    assert (traits.factorizable, traits.cheaper_factorizable, traits.prunable) == (1, 0, 0)
    space = fit_space(SearchSpace.default(), one_output(), EXAMPLE)
    assert "LR" not in space.kinds and "Pr" not in space.kinds and "Tr" in space.kinds
    assert not any(k.startswith(("LR.", "Pr.")) for k in space.ranges)
    # a channel multiple can make every low-rank pair too wide to pay
    wide = nn.Sequential(nn.Flatten(), nn.Linear(64, 12))
    assert "LR" in fit_space(SearchSpace.default(), wide, EXAMPLE).kinds
    assert "LR" not in fit_space(SearchSpace.default(), wide, EXAMPLE, channel_multiple=16).kinds


def test_nothing_left_is_a_user_error() -> None:
    space = SearchSpace.from_spec({"kinds": ["Pr"], "params": {"Pr.criterion": "bn_scale"}})
    with pytest.raises(UserError, match="bn_scale"):
        fit_space(space, no_batchnorm(), EXAMPLE)


SUITE_FILE = """
import dataclasses
from torch import nn
from suites.digits.suite import SUITE as DIGITS

SUITE = dataclasses.replace(
    DIGITS, name="one-output", build_model=lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 1))
)
"""


def test_tune_refuses_a_space_that_cannot_apply(tmp_path, capsys) -> None:
    (tmp_path / "suite.py").write_text(SUITE_FILE)
    (tmp_path / "space.json").write_text(json.dumps({"kinds": ["LR", "Pr"]}))
    argv = ["tune", "--suite", str(tmp_path / "suite.py"), "--space", str(tmp_path / "space.json")]
    argv += ["--mode", "untrained", "--evaluations", "1", "--out", str(tmp_path / "runs")]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no step kind of the search space can change this model" in err[0]
    assert not list((tmp_path / "runs").glob("*/journal*"))  # refused before the run began


def test_unstructured_masks_leave_a_profile_of_dense_backends(caplog) -> None:
    """ORT and OpenVINO multiply zeros like any weight: Pr(structured=false) can only cost
    quality there, so the space keeps structured pruning only; a backend that declares
    sparse_weights keeps both."""
    from petra_hw.backend import get_backend
    from petra_hw.profiles import load_profile
    from petra_hw.search.applicable import dense_backends

    cpu = load_profile("cpu")
    assert set(dense_backends(cpu)) == set(cpu.backends) and dense_backends(cpu)
    with caplog.at_level(logging.INFO, logger="petra_hw.search.applicable"):
        space = fit_space(SearchSpace.default(), no_batchnorm(), EXAMPLE, 1, dense_backends(cpu))
    assert space.param_range("Pr", "structured").choices == (True,)
    assert "save no time or bytes on" in caplog.text
    ort = type(get_backend("onnxruntime"))
    try:
        ort.sparse_weights = True
        assert dense_backends(cpu) == ()
    finally:
        del ort.sparse_weights
