"""The kind table is the one source of every step-kind role."""

from __future__ import annotations

import pytest

from petra_hw import kinds
from petra_hw.canonical import canonicalize
from petra_hw.errors import UserError
from petra_hw.kinds import KINDS, KindSpec, ParamSpec, kinds_for, register_kind
from petra_hw.pipeline import Pipeline
from petra_hw.precision import resolve
from petra_hw.search.space import SearchSpace
from petra_hw.steps import registered_kinds


def test_kind_table_equals_step_registry():
    assert sorted(KINDS) == registered_kinds()


def test_roles_are_read_from_the_table():
    assert [k for k, s in KINDS.items() if s.deferred] == ["PTQ", "PDQ", "FP16"]
    assert [k for k, s in KINDS.items() if s.mergeable] == ["Tr", "QAT"]
    assert "FP16" not in kinds_for("cpu") and "FP16" in kinds_for("gpu")
    builtin = {k for k in kinds_for("cpu") if KINDS[k].module.startswith("petra_hw.steps.")}
    assert builtin == {"Tr", "Reg", "LR", "Pr", "QAT", "PTQ", "PDQ"}


def test_bad_roles_are_refused():
    with pytest.raises(ValueError, match="deferred"):
        KindSpec("Bad", (), deferred=True)
    with pytest.raises(ValueError, match="epochs"):
        KindSpec("Bad", (), mergeable=True)
    with pytest.raises(ValueError, match="already taken"):
        register_kind(KindSpec("QS", ()))


@pytest.fixture
def scratch_table():
    """Restore the kind table after a test adds a kind without an implementation."""
    saved, aliases = dict(KINDS), dict(kinds._ALIASES)
    yield
    KINDS.clear()
    KINDS.update(saved)
    kinds._ALIASES.clear()
    kinds._ALIASES.update(aliases)


def test_a_registered_kind_reaches_precision_canonical_and_space(scratch_table):
    spec = register_kind(
        KindSpec(
            "ToyQ",
            (ParamSpec("bits", int, 8, low=4, high=8),),
            precision="int8",
            int8_mode="dynamic",
            deferred=True,
            devices=("cpu",),
        )
    )
    assert register_kind(spec) is spec  # idempotent
    assert resolve(Pipeline.parse("LR - ToyQ")).label() == "int8-dynamic"
    assert canonicalize(Pipeline.parse("PTQ - ToyQ")).to_text() == "ToyQ"
    assert "ToyQ" in SearchSpace.default().kinds
    with pytest.raises(UserError, match="needs a CPU profile"):
        SearchSpace.from_spec({"kinds": ["ToyQ"]}, gpu=True)
