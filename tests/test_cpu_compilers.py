"""CPU compilers: ONNX Runtime (FP32, INT8 static/dynamic/QAT) and OpenVINO (FP32, BF16, INT8).

Each artifact is compiled from a real baseline, loaded back from disk (hashes verified) and judged
through its runner, as a deployment would run it.  The baseline cache lives in a session temporary
folder (``PETRA_HW_CACHE``, set by tests/conftest.py), so each suite trains once per session.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from petra_hw.artifact import read_artifact
from petra_hw.assess import compile_model, judge
from petra_hw.backend import check_supported, get_backend
from petra_hw.baseline import predict_split
from petra_hw.errors import ArtifactError, UserError
from petra_hw.pipeline import Pipeline
from petra_hw.precision import PrecisionIntent
from petra_hw.profiles import MeasureSettings

ORT_CASES = [
    ("fp32", {}),
    ("int8", {"int8_mode": "static", "calibration": "minmax"}),
    ("int8", {"int8_mode": "static", "calibration": "entropy"}),
    ("int8", {"int8_mode": "static", "calibration": "percentile"}),
    ("int8", {"int8_mode": "dynamic"}),
]
OV_CASES = [("fp32", {}), ("int8", {"int8_mode": "static", "calibration": "minmax"})]


@pytest.fixture(scope="module")
def fast(cpu_profile):
    """The cpu profile with a short measurement: these tests check plumbing, not speed."""
    quick = MeasureSettings(
        warmup_iters=1, min_iters=3, min_time_s=0.0, max_time_s=1.0, repeats_if_noisy=0
    )
    return dataclasses.replace(cpu_profile, measurement=quick)


@pytest.fixture(scope="module")
def reference(digits):
    return {n: predict_split(digits.model, digits.splits.by_name(n)) for n in ("val", "test")}


def intent(precision: str, options: dict) -> PrecisionIntent:
    mode, calibration = options.get("int8_mode", ""), options.get("calibration", "minmax")
    return PrecisionIntent(precision, mode, calibration)


def compile_and_judge(baseline, profile, reference, backend, precision, options, out, model=None):
    artifact = compile_model(
        model if model is not None else baseline.model, baseline.suite, baseline.splits, profile,
        backend, intent(precision, options), out, pipeline=Pipeline().to_json(),
    )  # fmt: skip
    return judge(artifact, baseline.suite, baseline.splits, profile, reference)


def check_assessment(
    result, baseline, precision: str, min_agreement: float, max_rel: float = 0.2
) -> dict:
    """Quality through the artifact is close to the baseline's; parity and sizes are recorded."""
    manifest = read_artifact(result.artifact.path).manifest  # round trip through disk
    assert manifest == json.loads(json.dumps(result.artifact.manifest, default=str))
    assert manifest["precision"] == precision
    assert manifest["size_bytes"] == result.artifact.size_bytes > 0
    metrics = manifest["metrics"]
    assert set(metrics["quality"]) == {"val", "test"}
    assert metrics["parity"]["top1_agreement"] >= min_agreement
    assert 0 <= metrics["parity"]["rel_error"] < (1e-4 if precision == "fp32" else max_rel)
    assert metrics["quality"]["test"] >= baseline.metrics["test"] - (
        0.0 if precision == "fp32" else 0.03
    )
    assert metrics["measurement"]["latency"]["p50_ms"] > 0
    ops = manifest["op_counts"]
    assert ops["int8"] + ops["float"] > 0 and ops["by_type"]
    return manifest


@pytest.mark.parametrize(
    ("precision", "options"),
    ORT_CASES,
    ids=["fp32", "int8-minmax", "int8-entropy", "int8-percentile", "int8-dynamic"],
)
def test_onnxruntime(digits, fast, reference, tmp_path, precision, options) -> None:
    result = compile_and_judge(
        digits, fast, reference, "onnxruntime", precision, options, tmp_path / "a"
    )
    manifest = check_assessment(result, digits, precision, 1.0 if precision == "fp32" else 0.9)
    ops = manifest["op_counts"]
    assert ops["graph"] == "ort-optimized"
    if precision == "fp32":
        assert ops["int8"] == 0 and "quantization" not in manifest
        return
    q = manifest["quantization"]
    assert ops["float"] == 0  # the digits CNN has 3 convs and 2 linears: all integer
    if options["int8_mode"] == "static":
        # U8S8 QDQ, as the cpu profile asks: ORT fuses every conv into an integer kernel.
        assert (q["activation_type"], q["weight_type"], q["per_channel"]) == (
            "QUInt8",
            "QInt8",
            True,
        )
        assert q["calibration"] == options["calibration"] and q["calibration_samples"] >= len(
            digits.splits.calib
        )
        assert ops["by_type"]["QLinearConv"] == 3 and ops["by_type"]["QGemm"] == 2
    else:
        assert ops["by_type"]["ConvInteger"] == 3 and "slower" in q["note"]


def scalar_scales(artifact) -> dict[str, float]:
    """Per-tensor activation scales of an ORT INT8 artifact's graph."""
    graph = onnx.load(str(artifact.file("model.onnx"))).graph
    return {
        i.name: float(numpy_helper.to_array(i))
        for i in graph.initializer
        if i.name.endswith("_scale") and not i.dims
    }


def test_entropy_calibration_is_not_minmax(digits, cpu_profile, ort_int8, tmp_path) -> None:
    """ORT's default entropy histogram degenerates to min-max; ours must search thresholds."""
    entropy = compile_model(digits.model, digits.suite, digits.splits, cpu_profile, "onnxruntime",
                            PrecisionIntent("int8", "static", "entropy"), tmp_path / "a")  # fmt: skip
    minmax, clipped = scalar_scales(ort_int8), scalar_scales(entropy)
    assert minmax.keys() == clipped.keys()
    assert any(clipped[k] < minmax[k] * 0.99 for k in minmax)


@pytest.mark.parametrize(("precision", "options"), OV_CASES, ids=["fp32", "int8"])
def test_openvino(digits, fast, reference, tmp_path, precision, options) -> None:
    result = compile_and_judge(
        digits, fast, reference, "openvino", precision, options, tmp_path / "a"
    )
    manifest = check_assessment(result, digits, precision, 1.0 if precision == "fp32" else 0.9)
    ov = manifest["openvino"]
    assert ov["config"]["INFERENCE_PRECISION_HINT"] == ov["inference_precision"] == "f32"
    assert ov["config"]["PERFORMANCE_HINT"] == "LATENCY"
    assert set(manifest["files"]) == {"model.xml", "model.bin"}
    ops = manifest["op_counts"]
    if precision == "int8":
        assert ops["by_type"]["Convolution:u8"] == 3 and ops["float"] == 0
        assert manifest["quantization"]["tool"].startswith("nncf")
    else:
        assert ops["int8"] == 0 and ops["by_type"]["Convolution:f32"] == 3
    runner = get_backend("openvino").load(result.artifact, fast)
    for batch in (1, 7):  # dynamic batch
        assert runner(np.zeros((batch, 1, 8, 8), np.float32)).shape == (batch, 10)


def test_openvino_bf16_runs_bf16_or_is_refused(digits, fast, reference, tmp_path) -> None:
    from backends.openvino_backend import cpu_capabilities

    backend = get_backend("openvino")
    if "BF16" not in cpu_capabilities():
        assert "bf16" not in backend.precisions
        with pytest.raises(UserError, match="cannot compile bf16"):
            check_supported(backend, fast, "bf16")
        with pytest.raises(UserError, match="no BF16"):
            compile_model(
                digits.model, digits.suite, digits.splits, fast, "openvino", "bf16", tmp_path / "a"
            )
        assert not (tmp_path / "a" / "model.xml").exists()
        return
    result = compile_and_judge(digits, fast, reference, "openvino", "bf16", {}, tmp_path / "a")
    manifest = check_assessment(result, digits, "bf16", 0.9)
    assert manifest["openvino"]["inference_precision"] == "bf16"
    assert any(k.endswith(":bf16") for k in manifest["op_counts"]["by_type"])


@pytest.fixture(scope="module")
def qat_model(digits):
    from petra_hw.apply import apply

    return apply(Pipeline.parse("QAT"), digits, digits.suite, seed=0).model


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_qat_compiles_requantized_from_trained_weights(
    digits, qat_model, fast, reference, tmp_path, backend
) -> None:
    result = compile_and_judge(
        digits, fast, reference, backend, "int8", {"int8_mode": "qat"}, tmp_path / "a", qat_model
    )
    # QAT retrained the weights, so outputs move further from the FP32 baseline than PTQ's do.
    manifest = check_assessment(result, digits, "int8", 0.9, max_rel=1.0)
    assert manifest["quantization"]["mode"] == "qat"
    assert manifest["quantization"]["weights"].startswith("QAT-trained")
    assert manifest["op_counts"]["int8"] >= 3 and manifest["op_counts"]["float"] == 0


def test_qat_mode_refuses_a_float_model(digits, cpu_profile, tmp_path) -> None:
    with pytest.raises(ValueError, match="no QDQ"):
        compile_model(digits.model, digits.suite, digits.splits, cpu_profile, "onnxruntime",
                      PrecisionIntent("int8", "qat"), tmp_path / "a")  # fmt: skip


def test_fp16_on_cpu_profile_refused_before_work(cpu_profile) -> None:
    for name in ("onnxruntime", "openvino", "torch"):
        with pytest.raises(UserError, match="does not run fp16"):
            check_supported(get_backend(name), cpu_profile, "fp16")


@pytest.fixture(scope="module")
def ort_int8(digits, cpu_profile, tmp_path_factory):
    out = tmp_path_factory.mktemp("ort-int8") / "artifact"
    return compile_model(digits.model, digits.suite, digits.splits, cpu_profile, "onnxruntime",
                         PrecisionIntent("int8", "static", "minmax"), out)  # fmt: skip


def test_artifact_loads_in_a_fresh_process_elsewhere(ort_int8, digits, tmp_path) -> None:
    moved = shutil.copytree(ort_int8.path, tmp_path / "moved")
    x = digits.splits.test.inputs(5).numpy()
    np.save(tmp_path / "x.npy", x)
    code = (
        "import sys, numpy as np, petra_hw; r = petra_hw.load(sys.argv[1]); "
        "np.save(sys.argv[3], r(np.load(sys.argv[2])))"
    )
    subprocess.run([sys.executable, "-c", code, str(moved), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
                   cwd=tmp_path, check=True, timeout=300)  # fmt: skip
    here = get_backend("onnxruntime").load(read_artifact(ort_int8.path))(x)
    np.testing.assert_allclose(np.load(tmp_path / "y.npy"), here, rtol=1e-5, atol=1e-5)


def test_tampered_artifact_is_refused(ort_int8, tmp_path) -> None:
    moved = shutil.copytree(ort_int8.path, tmp_path / "moved")
    model = moved / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1] + b"\x00")
    with pytest.raises(ArtifactError, match="sha256"):
        read_artifact(moved)


def test_cli_compile_ptq(digits, tmp_path, capsys) -> None:
    from petra_hw.cli import main

    out = tmp_path / "art"
    rc = main(
        ["compile", "--suite", "digits", "--pipeline", "PTQ", "--device", "cpu", "--out", str(out)]
    )
    assert rc == 0, capsys.readouterr().err
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["precision"] == "int8" and manifest["quantization"]["mode"] == "static"
    assert manifest["pipeline"]["steps"][0]["kind"] == "PTQ"
    assert manifest["metrics"]["parity"]["top1_agreement"] >= 0.9
    read_artifact(out)


@pytest.mark.parametrize(
    ("pipeline", "message"),
    [
        ("PTQ - - LR", "empty step"),
        ("Bogus(x=1)", "unknown step kind"),
        ("FP16", "does not run fp16"),
    ],
)
def test_cli_compile_refuses_before_work(tmp_path, capsys, pipeline, message) -> None:
    from petra_hw.cli import main

    out = tmp_path / "never"
    rc = main(
        [
            "compile",
            "--suite",
            "digits",
            "--pipeline",
            pipeline,
            "--device",
            "cpu",
            "--out",
            str(out),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and message in err and err.count("\n") == 1
    assert not out.exists()


@pytest.mark.slow
def test_cifar10_resnet20_int8(cpu_profile, tmp_path) -> None:
    from petra_hw.baseline import get_baseline
    from petra_hw.suite import load_suite

    suite = load_suite("cifar10-resnet20")  # one plain epoch: this checks INT8 compiles, not SOTA
    short = dataclasses.replace(suite.train, epochs=1, finish_epochs=0, augment=None)
    suite = dataclasses.replace(suite, train=short)
    baseline = get_baseline(suite, 0)
    ref = {n: predict_split(baseline.model, baseline.splits.by_name(n)) for n in ("val", "test")}
    fast = dataclasses.replace(
        cpu_profile,
        measurement=MeasureSettings(
            warmup_iters=1, min_iters=3, min_time_s=0.0, max_time_s=1.0, repeats_if_noisy=0
        ),
    )
    for backend in ("onnxruntime", "openvino"):
        result = compile_and_judge(
            baseline,
            fast,
            ref,
            backend,
            "int8",
            {"int8_mode": "static", "calibration": "minmax"},
            tmp_path / backend,
        )
        manifest = check_assessment(result, baseline, "int8", 0.9)
        assert manifest["op_counts"]["int8"] >= 19  # ResNet-20: 19 convs (+3 projections) + fc
