"""Issue 16, Why 1 and the manifest half of Why 2: artifacts cannot be swapped or edited, and a
bad manifest is one line and exit 2; kill -9 during compile leaves nothing loadable."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import petra_hw
from petra_hw.artifact import DIGEST, MANIFEST, read_artifact
from petra_hw.assess import compile_model
from petra_hw.cli import main
from petra_hw.errors import ArtifactError, UserError
from petra_hw.integrity import SIGNING_KEY_ENV, seal
from petra_hw.pipeline import Pipeline

FAST = str(Path(__file__).parent / "data" / "cpu-fast.toml")


@pytest.fixture(scope="module")
def ort(digits, cpu_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort") / "a"
    return compile_model(digits.model, digits.suite, digits.splits, cpu_profile, "onnxruntime",
                         "fp32", out, pipeline=Pipeline().to_json())  # fmt: skip


@pytest.fixture(scope="module")
def other(digits, cpu_profile, tmp_path_factory):
    """A second, different ONNX model (PTQ) to swap in."""
    out = tmp_path_factory.mktemp("other") / "a"
    return compile_model(digits.model, digits.suite, digits.splits, cpu_profile, "onnxruntime",
                         "int8", out, pipeline=Pipeline().to_json(),
                         options={"int8_mode": "static", "calibration": "minmax"})  # fmt: skip


def _copy(artifact, tmp_path: Path) -> Path:
    return Path(shutil.copytree(artifact.path, tmp_path / "copy"))


def _edit(folder: Path, reseal: bool = False, **fields) -> dict:
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest.update(fields)
    (folder / MANIFEST).write_text(json.dumps(manifest))
    if reseal:  # what an attacker who knows the format does: sha256 is no secret
        (folder / DIGEST).write_text(seal(manifest))
    return manifest


def _cli_one_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("petra-hw: error:"), err
    return err[0]


def test_why1_swapped_model_with_emptied_file_list_is_refused(ort, other, tmp_path, capsys):
    folder = _copy(ort, tmp_path)
    _edit(folder, files={})
    shutil.copy(other.path / "model.onnx", folder / "model.onnx")
    with pytest.raises(ArtifactError, match="does not match its digest"):
        petra_hw.load(folder)
    _edit(folder, reseal=True, files={})  # re-sealed: the empty list is refused by its schema
    with pytest.raises(ArtifactError, match="invalid manifest field 'files'"):
        petra_hw.load(folder)
    assert "invalid manifest field 'files'" in _cli_one_line(
        ["profile", str(folder), "--device", FAST], capsys
    )


def test_why1_unlisted_and_missing_files_refuse_the_load(ort, tmp_path):
    folder = _copy(ort, tmp_path)
    (folder / "extra.onnx").write_bytes(b"not part of the artifact")
    with pytest.raises(ArtifactError, match="extra.onnx is not listed"):
        read_artifact(folder)
    (folder / "extra.onnx").unlink()
    (folder / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="missing file model.onnx"):
        read_artifact(folder)


@pytest.mark.parametrize(
    "fields",
    [{"pipeline": {"steps": [{"kind": "PTQ", "params": {}}], "settings": {}}},
     {"precision": "int8"}, {"schema_version": 99}],
)  # fmt: skip
def test_why1_edited_manifest_is_refused(ort, tmp_path, fields):
    folder = _copy(ort, tmp_path)
    _edit(folder, **fields)
    with pytest.raises(ArtifactError, match="does not match its digest"):
        read_artifact(folder)


def test_unknown_schema_version_is_refused_even_when_resealed(ort, tmp_path):
    folder = _copy(ort, tmp_path)
    _edit(folder, reseal=True, schema_version=99)
    with pytest.raises(ArtifactError, match="schema_version 99 is not supported"):
        read_artifact(folder)


def test_hmac_signing_key(digits, cpu_profile, tmp_path, monkeypatch, ort):
    monkeypatch.setenv(SIGNING_KEY_ENV, "deployment-secret")
    signed = compile_model(digits.model, digits.suite, digits.splits, cpu_profile, "onnxruntime",
                           "fp32", tmp_path / "signed", pipeline=Pipeline().to_json())  # fmt: skip
    assert (signed.path / DIGEST).read_text().startswith("hmac-sha256:")
    read_artifact(signed.path)
    with pytest.raises(ArtifactError, match="not signed with PETRA_HW_SIGNING_KEY"):
        read_artifact(ort.path)  # built without the key: a deployment rejects it
    monkeypatch.setenv(SIGNING_KEY_ENV, "another-key")
    with pytest.raises(ArtifactError, match="does not match its signature"):
        read_artifact(signed.path)
    monkeypatch.delenv(SIGNING_KEY_ENV)
    with pytest.raises(ArtifactError, match="set PETRA_HW_SIGNING_KEY"):
        read_artifact(signed.path)


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"backend": "openvino"}, "backend 'openvino' cannot load it"),
        ({"backend": "tensorrt"}, "tensorrt"),
        ({"backend": "nope"}, "unknown backend 'nope'"),
        ({"files": ["model.onnx"]}, "invalid manifest field 'files'"),
        ({"input": {"name": "input", "shape": [None, 3, 32, 32]}}, "input.shape"),
        ({"input": {"name": "input", "shape": "1x8x8"}}, "invalid manifest field 'input.shape'"),
    ],
)
def test_why2_bad_manifest_is_one_line(ort, tmp_path, capsys, fields, message):
    folder = _copy(ort, tmp_path)
    _edit(folder, reseal=True, **fields)
    assert message in _cli_one_line(["profile", str(folder), "--device", FAST], capsys)
    with pytest.raises(UserError):
        petra_hw.load(folder)


def test_measured_samples_are_listed_files(ort, tmp_path):
    folder = read_artifact(_copy(ort, tmp_path))
    updated = folder.add_file("measurement.json", b"{}")
    assert "measurement.json" in read_artifact(updated.path).manifest["aux_files"]


def test_kill_9_during_compile_leaves_nothing_loadable_or_a_complete_artifact(digits, tmp_path):
    """Kill compile at several instants: each folder is refused or loads and runs."""
    outcomes = set()
    for delay in (2.0, 6.0, 12.0):
        out = tmp_path / f"kill-{delay}"
        proc = subprocess.Popen(
            [sys.executable, "-m", "petra_hw.cli", "compile", "--suite", "digits", "--pipeline",
             "PTQ", "--device", FAST, "--out", str(out)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=os.environ.copy(),
        )  # fmt: skip
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        try:
            runner = petra_hw.load(out)
        except UserError:
            outcomes.add("refused")
            continue
        runner(digits.splits.test.inputs(2).numpy())
        outcomes.add("complete")
    assert outcomes  # every kill ended in one of the two acceptable states
