"""A step kind, a backend and a strategy defined in one plug-in file, used end to end by tune."""

from __future__ import annotations

import importlib
import json
import sys
from pathlib import Path

import pytest

from petra_hw.cli import main
from petra_hw.kinds import KINDS
from petra_hw.search.store import JOURNAL_NAME, Store
from petra_hw.steps import registered_kinds

PLUGIN = (Path(__file__).parent / "plugin_example.py").resolve()
FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()


@pytest.fixture(scope="module", autouse=True)
def plugin_example():
    """The plug-in registered for this module only: every registry it writes is restored after,
    so later tests see the built-in kinds, backends and strategies alone."""
    from petra_hw import backend, kinds, plugins
    from petra_hw.search import executors
    from petra_hw.search.strategy import base as strategy
    from petra_hw.steps import base as steps

    tables = [kinds.KINDS, kinds._ALIASES, backend._REGISTERED, strategy.STRATEGIES,
              executors.EXECUTORS, plugins._LOADED]  # fmt: skip
    saved = [set(t) for t in tables]
    modules = set(sys.modules)
    yield importlib.import_module("plugin_example")
    for table, before in zip(tables, saved):  # drop what was added (built-ins fill in lazily)
        for key in set(table) - before:
            del table[key]
    for table in (steps._REGISTRY, steps._READS):
        for key in set(table) - set(kinds.KINDS):
            del table[key]
    for name in set(sys.modules) - modules:
        if "plugin" in name:
            del sys.modules[name]


def test_plugin_registers_kind_backend_and_strategy(plugin_example) -> None:
    from petra_hw.backend import backend_names
    from petra_hw.search.strategy import STRATEGIES

    assert KINDS["Soft"] is plugin_example.SOFT and "Soft" in registered_kinds()
    assert sorted(KINDS) == registered_kinds()
    assert "plain-ort" in backend_names() and "one-step-first" in STRATEGIES


def test_tune_runs_a_plugin_end_to_end(digits, tmp_path, capsys) -> None:
    profile = tmp_path / "plain.toml"  # the plug-in backend first, so backend choice picks it
    profile.write_text(FAST_PROFILE.replace('backends = ["onnxruntime"', 'backends = ["plain-ort"'))
    space = tmp_path / "space.json"
    space.write_text(json.dumps({"kinds": ["Soft", "LR"], "max_len": 2}))
    out = tmp_path / "runs"
    argv = ["tune", "--suite", "digits", "--device", str(profile), "--evaluations", "2",
            "--population", "2", "--no-references",
            "--strategy", "one-step-first", "--plugin", str(PLUGIN), "--space", str(space),
            "--out", str(out)]  # fmt: skip
    assert main(argv) == 0, capsys.readouterr().err
    (run_dir,) = [p for p in out.iterdir() if (p / JOURNAL_NAME).is_file()]
    with Store(run_dir / JOURNAL_NAME) as store:
        (record,) = store.runs()
        evaluations = store.evaluations(record.id)
    assert record.strategy == "one-step-first"
    assert record.settings["plugins"] == [str(PLUGIN)]
    journaled = record.settings["space"]  # the full spec, so a resume searches exactly this
    assert journaled["kinds"] == ["Soft", "LR"] and journaled["max_len"] == 2
    assert "Soft.threshold" in journaled["params"]
    # backend variants of a candidate (compiled for the profile's other backends) are apart
    chosen = [e for e in evaluations if not e.candidate.variant]
    assert len(chosen) == 3  # the Original and two candidates, all through the plug-in
    assert all(e.ok and e.backend == "plain-ort" for e in chosen), [e.error for e in chosen]
    assert [str(e.candidate.pipeline).split("(")[0] for e in chosen[1:]] == ["Soft", "LR"]
    assert all(e.backend != "plain-ort" for e in evaluations if e.candidate.variant)
