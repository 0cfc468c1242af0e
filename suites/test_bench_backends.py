"""Backend regression benchmark: cifar10-resnet18 on this CPU through every CPU compiler.

Torch FP32, ONNX Runtime FP32 / INT8 and OpenVINO FP32 / BF16 / INT8, each timed by
pytest-benchmark at batch 1 and batch 32 with its test accuracy *through the artifact* in
``extra_info``, so a saved benchmark run is also a record of what each speed costs in quality.
``test_ort_int8_speedup`` guards the claim INT8 exists for, with the project's own harness.
Run with ``pytest suites/ --benchmark`` (see suites/conftest.py).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

SUITE = "cifar10-resnet18"
CASES = [
    ("torch", "fp32"),
    ("onnxruntime", "fp32"),
    ("onnxruntime", "int8"),
    ("openvino", "fp32"),
    ("openvino", "bf16"),
    ("openvino", "int8"),
]
BATCHES = (1, 32)


@dataclasses.dataclass
class Compiled:
    runner: object
    info: dict


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Baseline, this host's CPU profile, FP32 reference outputs, and a memo of compiled runners."""
    from petra_hw.baseline import get_baseline, predict_split
    from petra_hw.profiles import detect_profile, load_profile
    from petra_hw.suite import load_suite

    profile = detect_profile()
    if profile.is_gpu:
        profile = load_profile("cpu")
    profile = dataclasses.replace(profile, batch_sizes=BATCHES)
    baseline = get_baseline(load_suite(SUITE), 0)
    reference = predict_split(baseline.model, baseline.splits.test)
    return {"profile": profile, "baseline": baseline, "reference": reference,
            "out": tmp_path_factory.mktemp("bench"), "memo": {}}  # fmt: skip


def compiled(env: dict, backend: str, precision: str) -> Compiled:
    """Compile once per (backend, precision); score test accuracy and agreement via the runner."""
    from petra_hw.assess import compile_model
    from petra_hw.backend import get_backend, load_runner
    from petra_hw.quality import runner_outputs

    key = (backend, precision)
    if key not in env["memo"]:
        b, profile = env["baseline"], env["profile"]
        if precision not in get_backend(backend).precisions:
            pytest.skip(f"{backend} cannot compile {precision} on this CPU")
        artifact = compile_model(
            b.model, b.suite, b.splits, profile, backend, precision,
            env["out"] / f"{backend}-{precision}",
        )  # fmt: skip
        runner = load_runner(artifact, profile)
        out = b.splits.test.outputs(lambda x: runner_outputs(runner, x), 64)
        info = {
            "test_accuracy": b.suite.metric(out, b.splits.test.targets().numpy()),
            "top1_agreement": float((out.argmax(1) == env["reference"].argmax(1)).mean()),
            "size_bytes": artifact.size_bytes,
            "op_counts": {
                k: v for k, v in artifact.manifest.get("op_counts", {}).items() if k != "by_type"
            },
            "threads": profile.effective_threads(),
        }
        env["memo"][key] = Compiled(runner, info)
    return env["memo"][key]


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize(("backend", "precision"), CASES)
def test_backend(benchmark, env, backend: str, precision: str, batch: int) -> None:
    c = compiled(env, backend, precision)
    x = np.random.default_rng(0).standard_normal((batch, 3, 32, 32), dtype=np.float32)
    benchmark.group = f"{SUITE} batch {batch}"
    benchmark.extra_info.update(backend=backend, precision=precision, batch=batch, **c.info)
    benchmark(c.runner, x)


def test_ort_int8_speedup(env) -> None:
    """ORT INT8 (U8S8 QDQ) vs ORT FP32 at batch 32, timed by the project's one harness."""
    from backends.common import has_vnni
    from petra_hw.profiler import measure

    fp32, int8 = compiled(env, "onnxruntime", "fp32"), compiled(env, "onnxruntime", "int8")
    assert int8.info["top1_agreement"] >= 0.98
    ips = {}
    for name, c in (("fp32", fp32), ("int8", int8)):
        m = measure(c.runner, (3, 32, 32), env["profile"], backend="onnxruntime", precision=name,
                    size_bytes=c.info["size_bytes"])  # fmt: skip
        ips[name] = next(s.throughput_ips for s in m.throughput if s.batch_size == 32)
    speedup = ips["int8"] / ips["fp32"]
    if not has_vnni():
        pytest.skip(
            f"INT8 is {speedup:.2f}x FP32 here; the 3.5x target assumes VNNI int8 dot products"
        )
    assert speedup >= 3.5, f"ORT INT8 is only {speedup:.2f}x ORT FP32 at batch 32"
