"""Fuzzing the three inputs a user hands petra-hw as text (issue 16): pipeline text, profile TOML
and artifact manifests.  Every generated case must end in exit 0 or exit 2 with one line on
stderr, never a traceback.  The CLI's ``main`` runs in-process, on inputs that are refused or
measured in milliseconds, so the 600+ cases take well under a minute."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from petra_hw.artifact import DIGEST, MANIFEST
from petra_hw.assess import compile_model
from petra_hw.cli import main
from petra_hw.integrity import seal
from petra_hw.pipeline import Pipeline

FAST = Path(__file__).parent / "data" / "cpu-fast.toml"
CASES = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    database=None,
)


def run_cli(argv: list[str]) -> tuple[int, list[str]]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(argv)
    return rc, err.getvalue().strip().splitlines()


def assert_clean(rc: int, err: list[str]) -> None:
    assert rc in (0, 2), (rc, err)
    if rc == 2:
        assert len(err) == 1 and err[0].startswith("petra-hw: error:"), err


# -- pipeline text ------------------------------------------------------------------------
TOKENS = ["LR", "Pr", "QAT", "PTQ", "PDQ", "FP16", "Tr", "Reg", " - ", "-", "(", ")", "=", ",",
          ";", "ratio", "epochs", "lr", "0.5", "nan", "inf", "-1", "1e400", "true", "rank",
          "optimizer=sgd", "calibration=entropy", " ", "\n", "Ω", "\x00"]  # fmt: skip
pipeline_text = st.one_of(
    st.lists(st.sampled_from(TOKENS), max_size=12).map("".join),
    st.text(max_size=40),
)


@CASES
@given(text=pipeline_text)
def test_pipeline_text(text: str) -> None:
    # a profile that does not exist: every pipeline is parsed, then the command stops
    rc, err = run_cli(["compile", "--suite", "digits", "--pipeline", text, "--device",
                       "/nonexistent/profile.toml"])  # fmt: skip
    assert rc == 2
    assert_clean(rc, err)


# -- profile TOML -------------------------------------------------------------------------
BASE = tomllib.loads(FAST.read_text())
scalar = st.one_of(
    st.integers(-(2**40), 2**40), st.floats(allow_nan=True, allow_infinity=True), st.booleans(),
    st.text(max_size=8),
)  # fmt: skip
value = st.one_of(scalar, st.lists(scalar, max_size=4))


def _toml_value(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return (
            "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
        )
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    raise TypeError(v)


def _toml(data: dict) -> str:
    lines = [
        f"{json.dumps(k)} = {_toml_value(v)}" for k, v in data.items() if not isinstance(v, dict)
    ]
    for k, v in data.items():
        if isinstance(v, dict):
            lines.append(f"[{json.dumps(k)}]")
            lines += [f"{json.dumps(kk)} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


@st.composite
def profiles(draw) -> str:
    data = json.loads(json.dumps(BASE))
    for _ in range(draw(st.integers(1, 3))):
        section = draw(st.sampled_from([None, "measurement", "match"]))
        target = data if section is None else data.setdefault(section, {})
        keys = sorted(k for k, v in target.items() if not isinstance(v, dict))
        key = draw(st.one_of(st.sampled_from(keys or ["name"]), st.text(min_size=1, max_size=6)))
        if draw(st.booleans()) and key in target:
            del target[key]
        else:
            target[key] = draw(value)
    text = _toml(data)
    if draw(st.integers(0, 9)) == 0:  # now and then, broken TOML
        text = text[: draw(st.integers(0, len(text)))]
    return text


@CASES
@given(text=profiles())
def test_profile_toml(text: str, tmp_path: Path) -> None:
    path = tmp_path / "fuzz.toml"
    path.write_text(text)
    # the profile is loaded and checked; the unknown suite then stops the command before work
    rc, err = run_cli(["compile", "--suite", "no-such-suite", "--pipeline", "PTQ", "--device",
                       str(path)])  # fmt: skip
    assert rc == 2
    assert_clean(rc, err)


# -- manifests ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def artifact(digits, cpu_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("fuzz-artifact") / "a"
    return compile_model(digits.model, digits.suite, digits.splits, cpu_profile, "onnxruntime",
                         "fp32", out, pipeline=Pipeline().to_json())  # fmt: skip


@pytest.fixture(scope="module")
def instant_profile(tmp_path_factory) -> Path:
    """Measurements of a few milliseconds: a manifest that stays valid is measured quickly."""
    text = FAST.read_text().replace("batch_sizes = [1, 8]", "batch_sizes = [1]")
    text = text.replace("min_iters = 5", "min_iters = 1").replace(
        "warmup_iters = 2", "warmup_iters = 0"
    )
    text = text.replace("min_time_s = 0.05", "min_time_s = 0.0").replace(
        "max_time_s = 1.0", "max_time_s = 0.01"
    )
    path = tmp_path_factory.mktemp("instant") / "instant.toml"
    path.write_text(text)
    return path


json_value = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-5, 2**40), st.text(max_size=10),
              st.floats(allow_nan=False)),
    lambda inner: st.one_of(st.lists(inner, max_size=3),
                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
    max_leaves=6,
)  # fmt: skip
FIELDS = ["schema_version", "backend", "precision", "files", "aux_files", "input", "pipeline",
          "environment", "metrics", "size_bytes", "openvino"]  # fmt: skip


@CASES
@given(
    edits=st.lists(st.tuples(st.sampled_from(FIELDS), st.one_of(json_value, st.just("<del>")),
                             st.sampled_from(["", "name", "shape", "dtype", "model.onnx"])),
                   min_size=1, max_size=3),
    reseal=st.booleans(),
)  # fmt: skip
def test_manifest(edits, reseal: bool, artifact, instant_profile: Path, tmp_path: Path) -> None:
    folder = tmp_path / "a"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(artifact.path, folder)
    manifest = json.loads((folder / MANIFEST).read_text())
    for field, new, sub in edits:
        target = manifest.get(field)
        if sub and isinstance(target, dict):
            target = dict(target)
            if new == "<del>":
                target.pop(sub, None)
            else:
                target[sub] = new
            manifest[field] = target
        elif new == "<del>":
            manifest.pop(field, None)
        else:
            manifest[field] = new
    (folder / MANIFEST).write_text(json.dumps(manifest))
    if reseal:
        (folder / DIGEST).write_text(seal(manifest))
    rc, err = run_cli(["profile", str(folder), "--device", str(instant_profile)])
    assert_clean(rc, err)
