"""Canonical pipelines: the rules, idempotence, and that the deployed precision never changes."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paper_pipelines import PAPER_PIPELINES

from petra_hw.canonical import canonicalize
from petra_hw.pipeline import Pipeline, Step
from petra_hw.precision import resolve
from petra_hw.steps import get_step


def canon(text: str) -> str:
    return canonicalize(Pipeline.parse(text)).to_text()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("PTQ - PTQ", "PTQ"),
        ("PDQ - PDQ - PDQ", "PDQ"),
        ("PDQ - PTQ", "PTQ"),
        ("PTQ - FP16", "FP16"),
        ("FP16 - PDQ - PTQ(calibration=entropy)", "PTQ(calibration=entropy)"),
        ("LR - PTQ - PDQ - Pr", "LR - PDQ - Pr"),
        ("Tr(epochs=2) - Tr(epochs=3)", "Tr(epochs=5)"),
        ("Tr(epochs=1) - Tr(epochs=1) - Tr(epochs=1) - Pr", "Tr(epochs=3) - Pr"),
        ("Tr(epochs=150) - Tr(epochs=100)", "Tr(epochs=200) - Tr(epochs=50)"),
        ("QAT(epochs=1) - QAT(epochs=2)", "QAT(epochs=3)"),
        ("Original", "Original"),
        # not equivalent, so left alone
        ("PTQ - Pr - PTQ", "PTQ - Pr - PTQ"),
        ("PTQ - QAT", "PTQ - QAT"),
        ("QAT - PTQ", "QAT - PTQ"),
        ("Tr - Pr - Tr", "Tr - Pr - Tr"),
        ("Reg - Reg", "Reg - Reg"),
        ("Pr - Pr", "Pr - Pr"),
        ("LR - LR", "LR - LR"),
    ],
)
def test_rules(text, expected):
    assert canon(text) == expected


def test_settings_are_kept():
    p = canonicalize(Pipeline.parse("Tr - Tr ; lr=0.01, optimizer=sgd"))
    assert p.to_text() == "Tr(epochs=4) ; optimizer=sgd, lr=0.01"


@pytest.mark.parametrize("text", PAPER_PIPELINES)
def test_paper_pipelines_canonicalize_to_valid_pipelines(text):
    pipeline = Pipeline.parse(text)
    c = canonicalize(pipeline)
    assert Pipeline.from_json(c.to_json()) == c
    assert Pipeline.parse(c.to_text(full=True)) == c
    assert canonicalize(c) == c
    assert resolve(c) == resolve(pipeline)
    for step in c.steps:
        assert callable(get_step(step.kind))


def test_paper_pipelines_are_already_canonical():
    assert all(canon(t) == Pipeline.parse(t).to_text() for t in PAPER_PIPELINES)


_STEPS = [
    Step.make("Tr", epochs=1),
    Step.make("Tr", epochs=120),
    Step.make("QAT", epochs=1),
    Step.make("Reg"),
    Step.make("LR"),
    Step.make("Pr"),
    Step.make("PTQ"),
    Step.make("PTQ", calibration="entropy"),
    Step.make("PDQ"),
    Step.make("FP16"),
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(_STEPS), max_size=8))
def test_idempotent_and_precision_preserving(steps):
    pipeline = Pipeline.make(steps)
    c = canonicalize(pipeline)
    assert canonicalize(c) == c
    assert len(c) <= len(pipeline)
    assert resolve(c) == resolve(pipeline)
    assert sum(s["epochs"] for s in c if s.kind == "Tr") == sum(
        s["epochs"] for s in pipeline if s.kind == "Tr"
    )
