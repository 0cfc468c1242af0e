"""Compile -> artifact -> verified load -> runner, for the FP32 backends, plus tamper detection."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from petra_hw.artifact import read_artifact
from petra_hw.assess import compile_model, judge
from petra_hw.baseline import predict, predict_split
from petra_hw.errors import ArtifactError
from petra_hw.integrity import seal
from petra_hw.pipeline import Pipeline


@pytest.fixture(scope="module", params=["torch", "onnxruntime"])
def artifact(request, digits, cpu_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp(request.param)
    return compile_model(
        digits.model,
        digits.suite,
        digits.splits,
        cpu_profile,
        request.param,
        "fp32",
        out / "a",
        pipeline=Pipeline().to_json(),
    )


def test_runner_matches_eager_model(artifact, digits) -> None:
    import petra_hw

    runner = petra_hw.load(artifact.path)
    x = digits.splits.test.inputs(7)
    np.testing.assert_allclose(runner(x.numpy()), predict(digits.model, x), atol=1e-4)
    assert runner(x[:1].numpy()).shape == (1, 10)  # dynamic batch axis


def test_manifest_records_what_matters(artifact) -> None:
    m = read_artifact(artifact.path).manifest
    assert m["backend"] == artifact.backend and m["precision"] == "fp32"
    assert m["input"]["shape"] == [None, 1, 8, 8]
    assert all(len(h) == 64 for h in m["files"].values())
    assert m["environment"]["packages"]["torch"].startswith("2.14")
    assert artifact.size_bytes == sum((artifact.path / f).stat().st_size for f in m["files"])


def test_judge_measures_quality_through_runner(artifact, digits, cpu_profile) -> None:
    reference = {n: predict_split(digits.model, digits.splits.by_name(n)) for n in ("val", "test")}
    fast = cpu_profile.__class__(
        **{
            **cpu_profile.__dict__,
            "measurement": cpu_profile.measurement.__class__(
                warmup_iters=2, min_iters=5, min_time_s=0.0, max_time_s=1.0, repeats_if_noisy=0
            ),
        }
    )
    a = judge(artifact, digits.suite, digits.splits, fast, reference)
    assert a.quality["test"] == pytest.approx(digits.metrics["test"], abs=1e-6)
    assert a.parity["top1_agreement"] == 1.0 and a.parity["max_abs_diff"] < 1e-3
    assert (
        len(a.measurement.latency.samples_ms) >= 5
        and a.measurement.size_bytes == artifact.size_bytes
    )
    assert read_artifact(artifact.path).manifest["metrics"]["quality"]["test"] == a.quality["test"]


def test_tampering_is_detected(artifact, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact.path, copy)
    model_file = next(iter(read_artifact(copy).files))
    data = bytearray((copy / model_file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / model_file).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="does not match its sha256"):
        read_artifact(copy)
    (copy / model_file).unlink()
    with pytest.raises(ArtifactError, match="missing file"):
        read_artifact(copy)


def test_manifest_cannot_point_outside(artifact, tmp_path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(artifact.path, copy)
    mf = json.loads((copy / "manifest.json").read_text())
    mf["files"] = {"../../etc/passwd": "0" * 64}
    (copy / "manifest.json").write_text(json.dumps(mf))
    with pytest.raises(ArtifactError, match="does not match its digest"):
        read_artifact(copy)
    (copy / "manifest.digest").write_text(seal(mf))  # an attacker who re-seals
    with pytest.raises(ArtifactError, match="invalid manifest field 'files'"):
        read_artifact(copy)
    (copy / "manifest.json").write_text("{not json")
    with pytest.raises(ArtifactError, match="corrupt manifest"):
        read_artifact(copy)


def test_loads_in_a_fresh_process_with_only_the_folder(artifact, tmp_path) -> None:
    copy = tmp_path / "deploy"
    shutil.copytree(artifact.path, copy)
    code = (
        "import sys, numpy as np, petra_hw; r = petra_hw.load(sys.argv[1]); "
        "print(r(np.zeros((3, 1, 8, 8), np.float32)).shape)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(copy)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("(3, 10)")
