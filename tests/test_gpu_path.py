"""The GPU path: everything up to the GPU boundary runs here; ``gpu`` tests need an NVIDIA GPU.

Without a GPU: the signed INT8 Q/DQ graphs TensorRT parses (from QAT and from PTQ), the FP16 graph,
optimization profiles and engine portability checks; GPU profiles refused (check_host, CLI); NVML
absence handled; every GPU backend saying why it is unavailable.  With one (``-m gpu``): torch CUDA
FP32/FP16 and CUDA graphs against the CPU, NVML energy during a measurement, a TensorRT engine.
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from backends import tensorrt_backend as trt_backend
from backends.onnxruntime_backend import OnnxRuntimeBackend
from backends.torch_backend import TorchBackend
from petra_hw.artifact import InputSpec, read_artifact
from petra_hw.backend import CompileRequest, check_supported, get_backend
from petra_hw.errors import ArtifactError, UserError
from petra_hw.nvml import NvmlSampler, trapezoid_j
from petra_hw.pipeline import Pipeline
from petra_hw.precision import PrecisionIntent
from petra_hw.profiles import MeasureSettings, check_host, gpu_names, load_profile, matches
from petra_hw.steps.base import StepContext
from petra_hw.suite import Split, Splits

HAS_CUDA = torch.cuda.is_available()
no_gpu = pytest.mark.skipif(HAS_CUDA or bool(gpu_names()), reason="this host has an NVIDIA GPU")
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (torch.cuda)")
QUICK = MeasureSettings(warmup_iters=3, min_iters=5, min_time_s=0.05, max_time_s=2.0)


class _Clocked:
    """A runner on a simulated clock: 1 ms per call."""

    device = "cpu"

    def __init__(self) -> None:
        self.now = 0

    def clock(self) -> int:
        return self.now

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.now += 1_000_000
        return x

    def synchronize(self) -> None:
        pass


def _request(digits, tmp_path, precision: str, profile: str = "rtx6000ada", **options):
    intent = PrecisionIntent(
        precision, str(options.pop("int8_mode", "")), str(options.pop("calibration", "minmax"))
    )
    return CompileRequest(
        intent=intent,
        out_dir=tmp_path / f"{precision}-{profile}",
        input_spec=InputSpec("input", (None, *digits.suite.input_shape)),
        profile=load_profile(profile),
        calib=Split(digits.splits.calib.x[:64], digits.splits.calib.y[:64]),
        options=tuple(sorted(options.items())),
    )


def _qdq(path) -> tuple[list, dict]:
    graph = onnx.load(str(path)).graph
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    consts.update(
        {
            n.output[0]: numpy_helper.to_array(n.attribute[0].t)
            for n in graph.node
            if n.op_type == "Constant"
        }
    )
    return [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")], consts


def _check_trt_int8_graph(path, model, x: torch.Tensor) -> None:
    """What TensorRT needs: only Quantize/DequantizeLinear, INT8 zero points of 0, a dynamic
    batch axis; and the graph runs in ONNX Runtime (CPU) close to ``model``."""
    import onnxruntime as ort

    nodes, consts = _qdq(path)
    assert nodes and {n.op_type for n in nodes} == {"QuantizeLinear", "DequantizeLinear"}
    for n in nodes:
        zp = consts[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
    graph = onnx.load(str(path)).graph
    for value in (*graph.input, *graph.output):
        dim0 = value.type.tensor_type.shape.dim[0]
        assert dim0.dim_param and not dim0.HasField("dim_value"), value.name
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = np.concatenate([session.run(None, {"input": x[i : i + 7].numpy()})[0] for i in (0, 7)])
    with torch.no_grad():
        want = model(x[:14]).numpy()
    assert got.shape == want.shape
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.85


@pytest.fixture(scope="module")
def qat_model(digits):
    from petra_hw.steps.qat import fake_quant_train

    s = digits.splits
    splits = Splits(
        Split(s.train.x[:128], s.train.y[:128]),
        Split(s.calib.x[:64], s.calib.y[:64]),
        s.val,
        s.test,
    )
    ctx = StepContext(digits.suite, splits, Pipeline.parse("QAT(epochs=1)"))
    return fake_quant_train(copy.deepcopy(digits.model), ctx.pipeline.steps[0], ctx).eval()


# -- TensorRT's input, without TensorRT -----------------------------------------------------------
def test_qat_model_gives_signed_qdq_for_tensorrt(digits, qat_model, tmp_path) -> None:
    path = tmp_path / "qat.onnx"
    info = trt_backend.prepare_onnx(
        qat_model, _request(digits, tmp_path, "int8", int8_mode="qat"), path
    )
    assert info["quantization"]["mode"] == "qat" and info["quantization"]["quantize_linear"] > 0
    _check_trt_int8_graph(path, qat_model, digits.splits.val.x)


def test_ptq_gives_symmetric_signed_qdq_for_tensorrt(digits, tmp_path) -> None:
    path = tmp_path / "ptq.onnx"
    request = _request(digits, tmp_path, "int8", int8_mode="static", calibration="minmax")
    info = trt_backend.prepare_onnx(digits.model, request, path)["quantization"]
    assert info["mode"] == "static" and info["symmetric"] and info["calibration_samples"] == 64
    _check_trt_int8_graph(path, digits.model, digits.splits.val.x)


@pytest.mark.parametrize("mode", ["dynamic", "qat"])
def test_int8_without_qdq_is_refused(digits, tmp_path, mode) -> None:
    request = _request(digits, tmp_path, "int8", int8_mode=mode)
    with pytest.raises(ValueError, match="end the pipeline with QAT"):
        trt_backend.prepare_onnx(digits.model, request, tmp_path / "x.onnx")


def test_uint8_qdq_is_refused(digits, qat_model, tmp_path) -> None:
    from petra_hw.onnx_export import export_onnx

    spec = InputSpec("input", (None, *digits.suite.input_shape))
    unsigned = export_onnx(qat_model, spec, tmp_path / "u8.onnx")  # ONNX Runtime's U8 activations
    with pytest.raises(ValueError, match="INT8 zero point of 0"):
        trt_backend.check_signed_qdq(unsigned)


def test_fp16_graph_keeps_float32_io(digits, tmp_path) -> None:
    path = tmp_path / "fp16.onnx"
    trt_backend.prepare_onnx(digits.model, _request(digits, tmp_path, "fp16"), path)
    graph = onnx.load(str(path)).graph
    assert {v.type.tensor_type.elem_type for v in (*graph.input, *graph.output)} == {
        onnx.TensorProto.FLOAT
    }
    weights = [i for i in graph.initializer if len(i.dims) > 1]
    assert weights and all(i.data_type == onnx.TensorProto.FLOAT16 for i in weights)


def test_optimization_profiles_cover_latency_and_throughput() -> None:
    assert trt_backend.optimization_profiles((1, 64)) == [(1, 1, 1), (2, 64, 64)]
    assert trt_backend.optimization_profiles((1,)) == [(1, 1, 1)]


def test_engine_portability_check_names_what_differs() -> None:
    here = {"version": "10.3.0", "gpu": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
    trt_backend.check_portable("a", here, here)
    built = {**here, "gpu": "NVIDIA RTX 6000 Ada Generation", "compute_capability": "8.9"}
    with pytest.raises(ArtifactError, match="RTX 6000 Ada.*compile it again"):
        trt_backend.check_portable("a", built, here)
    with pytest.raises(ArtifactError, match="version '10.2.0'"):
        trt_backend.check_portable("a", {**here, "version": "10.2.0"}, here)


# -- refusals on a host without a GPU -------------------------------------------------------------
@no_gpu
@pytest.mark.parametrize("name", ["rtx6000ada", "h100"])
def test_gpu_profiles_refused_here(name) -> None:
    with pytest.raises(UserError, match=f"device '{name}' needs a GPU matching .*no NVIDIA GPU"):
        check_host(load_profile(name))


@no_gpu
def test_cli_refuses_gpu_profile_with_one_line() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "petra_hw.cli", "profile", "--device", "rtx6000ada"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 2
    assert len(out.stderr.strip().splitlines()) == 1 and "needs a GPU" in out.stderr


@no_gpu
def test_backends_say_why_they_cannot_run_on_gpu_profiles(cpu_profile) -> None:
    rtx = load_profile("rtx6000ada")
    reason = get_backend("tensorrt").available(rtx)
    assert reason and ("CUDA" in reason or "tensorrt" in reason)
    assert "GPU profiles only" in trt_backend.TensorRTBackend().available(cpu_profile)
    assert OnnxRuntimeBackend().available(rtx)
    assert TorchBackend().available(rtx) == "torch sees no CUDA device"
    with pytest.raises(UserError, match="not available here"):
        check_supported(get_backend("tensorrt"), rtx, "fp16")


@no_gpu
def test_nvml_absence_gives_no_energy_and_no_error(cpu_profile) -> None:
    from petra_hw.fingerprint import fingerprint
    from petra_hw.profiler import measure

    with NvmlSampler() as sampler:
        pass
    assert not sampler.available and sampler.energy_per_call(10) is None and sampler.summary() == {}
    assert fingerprint()["gpus"] == []
    gpu_like = dataclasses.replace(
        cpu_profile, device_kind="gpu", nvml=True, batch_sizes=(1, 4), measurement=QUICK
    )
    r = _Clocked()
    m = measure(r, (3,), gpu_like, backend="x", precision="fp32", size_bytes=1, clock=r.clock)
    assert m.energy_j is None and m.gpu == {}


@pytest.mark.skipif(torch.cuda.is_initialized(), reason="CUDA in use: the UUID wins")
@pytest.mark.parametrize("visible, want", [("", 0), ("2,3", 2), ("GPU-1a2b", "GPU-1a2b")])
def test_measured_gpu_follows_cuda_visible_devices(monkeypatch, visible, want) -> None:
    from petra_hw.nvml import measured_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert measured_gpu() == want


def test_energy_integral_of_power_samples() -> None:
    assert trapezoid_j([(0.0, 100.0), (1.0, 100.0), (3.0, 200.0)]) == pytest.approx(400.0)
    assert trapezoid_j([(0.0, 100.0)]) is None


def test_torch_refuses_fp16_and_cuda_graphs_on_cpu_profiles(digits, cpu_profile, tmp_path) -> None:
    with pytest.raises(UserError, match="does not run fp16"):
        check_supported(TorchBackend(), cpu_profile, "fp16")
    with pytest.raises(ValueError, match="GPU profiles only"):
        TorchBackend().compile(digits.model, _request(digits, tmp_path, "fp16", "cpu"))
    with pytest.raises(ValueError, match="CUDA graphs need a GPU"):
        TorchBackend().compile(
            digits.model, _request(digits, tmp_path, "fp32", "cpu", cuda_graphs=True)
        )


def test_torch_fp16_artifact_stores_half_weights(digits, tmp_path) -> None:
    request = _request(digits, tmp_path, "fp16", cuda_graphs=True)
    artifact = TorchBackend().compile(digits.model, request)
    assert artifact.manifest["device"] == "cuda" and artifact.manifest["cuda_graphs"] is True
    assert next(digits.model.parameters()).dtype == torch.float32  # the caller's model untouched
    program = torch.export.load(artifact.file("model.pt2")).module()
    assert {p.dtype for p in program.parameters()} == {torch.float16}
    x = digits.splits.val.x[:16]
    with torch.no_grad():
        got, want = program(x.half()).float(), digits.model(x)
    assert (got.argmax(1) == want.argmax(1)).float().mean() > 0.9
    if not HAS_CUDA:
        with pytest.raises(RuntimeError, match="no GPU is present"):
            TorchBackend().load(read_artifact(artifact.path))


# -- --device auto on GPU hosts (NVML names) ------------------------------------------------------
@pytest.mark.parametrize(
    "gpu_name, profile",
    [
        ("NVIDIA RTX 6000 Ada Generation", "rtx6000ada"),
        ("NVIDIA H100 80GB HBM3", "h100"),
        ("NVIDIA H100 PCIe", "h100"),
        ("NVIDIA H100 NVL", "h100"),
        ("Quadro RTX 6000", None),  # Turing, not Ada
        ("NVIDIA H200", None),
        ("NVIDIA A100-SXM4-80GB", None),
    ],
)
def test_auto_recognises_gpus_by_nvml_name(gpu_name, profile) -> None:
    from petra_hw.profiles import profile_names

    cpu = "AMD EPYC 9124 16-Core Processor"
    found = [p for p in map(load_profile, profile_names()) if matches(p, cpu, [gpu_name], "x86_64")]
    best = max(found, key=lambda p: p.match.priority)
    assert best.name == (profile or "epyc9124")


# -- on a GPU -------------------------------------------------------------------------------------
def _compile_torch(digits, tmp_path, precision, **options):
    profile = dataclasses.replace(load_profile("h100"), measurement=QUICK, batch_sizes=(1, 16))
    request = dataclasses.replace(_request(digits, tmp_path, precision, **options), profile=profile)
    request = dataclasses.replace(request, out_dir=tmp_path / f"torch-{precision}-{len(options)}")
    artifact = TorchBackend().compile(digits.model, request)
    return TorchBackend().load(read_artifact(artifact.path), profile), profile


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-2), ("fp16", 5e-2)])
def test_torch_cuda_matches_cpu(digits, tmp_path, precision, tol):
    runner, _ = _compile_torch(digits, tmp_path, precision)
    x = digits.splits.val.x[:64]
    got = runner(x.numpy())
    with torch.no_grad():
        want = digits.model.cpu()(x).numpy()
    assert runner.device == "cuda"
    assert np.abs(got - want).max() <= tol * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.98


@pytest.mark.gpu
@needs_cuda
def test_cuda_graphs_runner_equals_eager(digits, tmp_path):
    from backends.torch_backend import CudaGraphRunner

    eager, _ = _compile_torch(digits, tmp_path, "fp16")
    graphs, _ = _compile_torch(digits, tmp_path, "fp16", cuda_graphs=True)
    assert isinstance(graphs, CudaGraphRunner)
    for n in (1, 5, 1):  # a second shape, then the first graph replayed again
        x = digits.splits.val.x[:n].numpy()
        np.testing.assert_allclose(graphs(x), eager(x), rtol=1e-2, atol=1e-2)
    assert len(graphs.graphs) == 2


@pytest.mark.gpu
@needs_cuda
def test_nvml_energy_during_a_measurement(digits, tmp_path):
    from petra_hw.profiler import measure

    runner, profile = _compile_torch(digits, tmp_path, "fp16")
    settings = dataclasses.replace(QUICK, min_time_s=1.0)
    profile = dataclasses.replace(profile, measurement=settings)
    shape = tuple(digits.suite.input_shape)
    m = measure(runner, shape, profile, backend="torch", precision="fp16", size_bytes=1)
    assert m.energy_j is not None and m.energy_j > 0
    one = m.gpu["batches"]["1"]
    assert one["memory_used_bytes_max"] > 0 and one["sm_clock_mhz_mean"] > 0
    assert one["temperature_c_max"] > 0 and "16" in m.gpu["batches"]


@pytest.mark.gpu
@needs_cuda
def test_tensorrt_fp16_engine_builds_and_runs(digits, tmp_path):
    pytest.importorskip("tensorrt")
    request = _request(digits, tmp_path, "fp16")
    artifact = trt_backend.TensorRTBackend().compile(digits.model, request)
    assert (artifact.path / "timing.cache").is_file()
    runner = trt_backend.TensorRTBackend().load(read_artifact(artifact.path))
    x = digits.splits.val.x[:100]  # larger than the profile's largest batch: split
    got = runner(x.numpy())
    with torch.no_grad():
        want = digits.model.cpu()(x).numpy()
    assert np.abs(got - want).max() <= 5e-2 * np.abs(want).max()
    built = artifact.manifest["tensorrt"]
    moved = artifact.update(tensorrt={**built, "version": "0.0.0"})
    with pytest.raises(ArtifactError, match="compile it again"):
        trt_backend.TensorRTBackend().load(moved)
