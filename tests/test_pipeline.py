from __future__ import annotations

import json

import pytest
from paper_pipelines import PAPER_PIPELINES

from petra_hw.errors import UserError
from petra_hw.pipeline import Pipeline, Step, parse_pipeline

PAPER = [*PAPER_PIPELINES, "LR - Reg - Pr - QAT"]
ALIASES = {"QS": "PTQ", "QD": "PDQ"}


@pytest.mark.parametrize("text", PAPER)
def test_paper_pipelines_round_trip(text: str) -> None:
    p = parse_pipeline(text)
    assert [s.kind for s in p] == [ALIASES.get(t.strip(), t.strip()) for t in text.split("-")]
    assert parse_pipeline(str(p)) == p
    assert Pipeline.from_json(json.loads(json.dumps(p.to_json()))) == p
    assert parse_pipeline(p.to_text(full=True)) == p
    assert p.hash == parse_pipeline(str(p)).hash and len(p.hash) == 16


def test_parameters_settings_and_defaults() -> None:
    p = parse_pipeline(
        "LR(rule=energy, threshold=0.95) - Pr(criterion=taylor, ratio=0.3) - PTQ(int8) ; lr=1e-4, optimizer=sgd"
    )
    assert p.steps[1]["criterion"] == "taylor" and p.steps[1]["ratio"] == 0.3
    assert (
        p.steps[2]["dtype"] == "int8"
        and p.setting("lr") == 1e-4
        and p.setting("optimizer") == "sgd"
    )
    # Defaults are filled in, so explicit defaults equal the bare form and hash the same.
    assert parse_pipeline("LR(rule=energy, threshold=0.95)") == parse_pipeline("LR")
    assert str(parse_pipeline("LR(threshold=0.95)")) == "LR"
    assert str(p) == "LR - Pr(criterion=taylor) - PTQ ; optimizer=sgd, lr=0.0001"


def test_hash_distinguishes_and_is_stable() -> None:
    a, b = parse_pipeline("LR - Pr"), parse_pipeline("Pr - LR")
    assert a.hash != b.hash and a != b
    assert a.hash != parse_pipeline("LR - Pr ; lr=0.01").hash
    assert parse_pipeline("QS").hash == parse_pipeline("PTQ").hash
    assert len({parse_pipeline(t).hash for t in PAPER}) == len(set(PAPER))
    assert a.prefix(1) == parse_pipeline("LR") and hash(a) == hash(parse_pipeline("LR - Pr"))


def test_original_is_the_empty_pipeline() -> None:
    assert len(parse_pipeline("Original")) == 0 and str(Pipeline()) == "Original"


@pytest.mark.parametrize(
    "text, token",
    [
        ("LR - Foo - Pr", "Foo"),
        ("LR(rank=3)", "rank"),
        ("Pr(ratio=abc)", "ratio"),
        ("Pr(ratio=0.99)", "ratio"),
        ("LR(rule=magic)", "magic"),
        ("LR - - Pr", "empty step"),
        ("LR(threshold=0.9", "unbalanced"),
        ("LR ; momentum=0.9", "momentum"),
        ("Pr(ratio=0.1, ratio=0.2)", "twice"),
        ("", "empty"),
    ],
)
def test_invalid_text_names_the_bad_token(text: str, token: str) -> None:
    with pytest.raises(UserError, match=token):
        parse_pipeline(text)


def test_steps_are_immutable_and_validated() -> None:
    s = Step.make("Pr", ratio=0.5)
    with pytest.raises(AttributeError):
        s.kind = "LR"  # type: ignore[misc]
    assert s.replace(ratio=0.2)["ratio"] == 0.2 and s["ratio"] == 0.5
    with pytest.raises(UserError):
        Step("QS", ())
