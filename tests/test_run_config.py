"""One run configuration: the CLI maps onto TuneSettings by field, and a journaled space is kept."""

from __future__ import annotations

import dataclasses
import json

import pytest

from petra_hw.cli import build_parser
from petra_hw.errors import UserError
from petra_hw.profiles import load_profile
from petra_hw.search.space import SearchSpace
from petra_hw.search.tune import TuneSettings


def _tune_parser():
    sub = build_parser()._subparsers._group_actions[0]  # type: ignore[union-attr]
    return sub.choices["tune"]


def test_every_setting_has_its_option() -> None:
    dests = {a.dest for a in _tune_parser()._actions}
    assert {f.name for f in dataclasses.fields(TuneSettings)} <= dests


def test_space_file_and_plugins_reach_the_settings(tmp_path) -> None:
    from petra_hw.commands.tune import _space_file

    spec = {"kinds": ["LR", "Pr"], "max_len": 2}
    path = tmp_path / "space.json"
    path.write_text(json.dumps(spec))
    args = _tune_parser().parse_args(
        ["--space", str(path), "--plugin", "a_module", "--budget", "1m", "--timeout", "9"]
    )
    assert args.space == spec and args.plugins == ["a_module"]
    assert (args.budget_s, args.timeout_s) == (60.0, 9.0)
    toml = tmp_path / "space.toml"
    toml.write_text('kinds = ["LR"]\nmax_len = 1\n')
    assert _space_file(str(toml)) == {"kinds": ["LR"], "max_len": 1}
    with pytest.raises(UserError, match="malformed space file"):
        path.write_text("{")
        _tune_parser().parse_args(["--space", str(path)])


def test_a_journaled_space_is_searched_as_is() -> None:
    profile = load_profile("cpu")
    fresh = TuneSettings(space={"kinds": ["LR", "PTQ"], "max_len": 2}).search_space(profile)
    assert fresh.kinds == ("LR", "PTQ") and fresh.max_len == 2
    # what tune journals; a resume rebuilds exactly this, whatever backends the host has
    journaled = json.loads(json.dumps(fresh.to_spec()))
    again = TuneSettings(space=journaled).search_space(dataclasses.replace(profile, backends=()))
    assert again == fresh
    assert TuneSettings().search_space(profile) == SearchSpace.for_profile(profile)


def test_objective_config_is_built_once() -> None:
    s = TuneSettings(max_latency_ms=2.0, max_quality_drop=0.01)
    assert s.objective_config(True, energy=True).names[-1] == "energy_j"
    config = s.objective_config(False, energy=False, split="test")
    assert (config.higher_is_better, config.split, config.max_latency_ms) == (False, "test", 2.0)
    with pytest.raises(UserError, match="energy_j"):
        TuneSettings(objectives=("quality", "energy_j")).objective_config(True, energy=False)
