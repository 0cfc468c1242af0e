"""The GPU path: everything up to the GPU boundary runs here; ``gpu`` tests need an NVIDIA GPU.

Without a GPU: the signed INT8 Q/DQ graphs TensorRT parses (from QAT and from PTQ), the FP16 graph,
optimization profiles, the timing cache's place and engine portability checks; ONNX Runtime's
CUDA session settings and its refusals (CPU fall-back, INT8 on the CUDA provider); GPU profiles
refused (check_host, CLI) and chosen by NVML name; NVML absence handled; every GPU backend saying
why it is unavailable.  With one (``-m gpu``): torch CUDA FP32/FP16 and CUDA graphs against the CPU,
NVML energy during a measurement, ONNX Runtime CUDA (``ort_cuda``), TensorRT FP32/FP16/INT8 engines
(``tensorrt``).  Where the host's GPU profile lists TensorRT or ONNX Runtime and its GPU build is
missing, those tests fail rather than skip: deselect them explicitly (``-m "gpu and not tensorrt"``).
"""

from __future__ import annotations

import copy
import dataclasses
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from backends import onnxruntime_backend as ortb
from backends import tensorrt_backend as trt_backend
from backends.onnxruntime_backend import OnnxRuntimeBackend
from backends.torch_backend import TorchBackend
from petra_hw.artifact import InputSpec, read_artifact
from petra_hw.backend import CompileRequest, check_supported, choose_backend, get_backend
from petra_hw.errors import ArtifactError, UserError
from petra_hw.nvml import NvmlSampler, trapezoid_j
from petra_hw.pipeline import Pipeline
from petra_hw.precision import PrecisionIntent
from petra_hw.profiles import (
    MeasureSettings,
    check_host,
    detect_profile,
    gpu_names,
    load_profile,
    matches,
)
from petra_hw.steps.base import StepContext
from petra_hw.suite import Splits

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
        calib=digits.splits.calib.take(64),
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
    """What TensorRT needs: quantization by Quantize/DequantizeLinear only (no integer operators of
    ONNX Runtime's other formats anywhere in the graph), INT8 zero points of 0, a dynamic batch
    axis; and the graph runs in ONNX Runtime (CPU) close to ``model``."""
    import onnxruntime as ort

    nodes, consts = _qdq(path)
    graph = onnx.load(str(path)).graph
    ops = {n.op_type for n in graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    integer = [
        n.op_type
        for n in graph.node
        if n.op_type.startswith("QLinear")
        or n.op_type.endswith("Integer")
        or n.op_type == "DynamicQuantizeLinear"
        or n.domain not in ("", "ai.onnx")
    ]
    assert not integer, integer
    for n in nodes:
        zp = consts[n.input[2]]
        assert zp.dtype == np.int8 and not zp.any(), n.name
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
        s.train.take(128),
        s.calib.take(64),
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
    _check_trt_int8_graph(path, qat_model, digits.splits.val.inputs())


def test_ptq_gives_symmetric_signed_qdq_for_tensorrt(digits, tmp_path) -> None:
    path = tmp_path / "ptq.onnx"
    request = _request(digits, tmp_path, "int8", int8_mode="static", calibration="minmax")
    info = trt_backend.prepare_onnx(digits.model, request, path)["quantization"]
    assert info["mode"] == "static" and info["symmetric"] and info["calibration_samples"] == 64
    _check_trt_int8_graph(path, digits.model, digits.splits.val.inputs())


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


def test_integer_operators_are_refused(tmp_path) -> None:
    """A graph with Q/DQ pairs but also ONNX Runtime's dynamic-quantization operators."""
    from onnx import TensorProto, helper

    zp = helper.make_tensor("zp", TensorProto.INT8, [], [0])
    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("DynamicQuantizeLinear", ["dq"], ["y", "ys", "yzp"], name="dyn"),
    ]
    float_in = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 4])
    outs = [
        helper.make_tensor_value_info("y", TensorProto.UINT8, [None, 4]),
        helper.make_tensor_value_info("ys", TensorProto.FLOAT, []),
        helper.make_tensor_value_info("yzp", TensorProto.UINT8, []),
    ]
    graph = helper.make_graph(nodes, "g", [float_in], outs, initializer=[zp, scale])
    path = tmp_path / "mixed.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    with pytest.raises(ValueError, match="integer operators DynamicQuantizeLinear"):
        trt_backend.check_signed_qdq(path)


def test_timing_cache_is_shared_outside_the_artifact(digits, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PETRA_HW_CACHE", str(tmp_path / "cache"))
    host = {"version": "10.13.0", "gpu": "NVIDIA H200", "compute_capability": "9.0"}
    request = _request(digits, tmp_path, "fp16")
    path = trt_backend.timing_cache_path(request, host)
    assert path == tmp_path / "cache" / "tensorrt" / "NVIDIA-H200-cc9.0-trt10.13.0.cache"
    assert request.out_dir not in path.parents
    other = trt_backend.timing_cache_path(_request(digits, tmp_path, "int8"), host)
    assert other == path  # every build on this GPU and TensorRT version shares it
    moved = trt_backend.timing_cache_path(request, {**host, "version": "10.14.1"})
    assert moved != path
    given = _request(digits, tmp_path, "fp16", timing_cache=str(tmp_path / "run" / "t.cache"))
    assert trt_backend.timing_cache_path(given, host) == tmp_path / "run" / "t.cache"


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


# -- ONNX Runtime's CUDA settings and refusals, without a GPU -------------------------------------
def test_ort_gpu_sessions_refuse_cpu_fallback(cpu_profile) -> None:
    gpu = load_profile("h200")
    assert ortb.providers_for(gpu) == [ortb.CUDA]  # CPU listed too would contradict the option
    opts = ortb.session_options(gpu)
    assert opts.get_session_config_entry(ortb.NO_CPU_FALLBACK) == "1"
    assert opts.get_session_config_entry(ortb.RECORD_ASSIGNMENT) == "1"
    assert ortb.providers_for(cpu_profile) == [ortb.CPU]
    cpu_opts = ortb.session_options(cpu_profile)
    assert cpu_opts.get_session_config_entry(ortb.RECORD_ASSIGNMENT) == "1"
    with pytest.raises(RuntimeError):  # the CPU provider may run everything on a CPU profile
        cpu_opts.get_session_config_entry(ortb.NO_CPU_FALLBACK)


@pytest.fixture(scope="module")
def fp32_onnx(digits, tmp_path_factory) -> Path:
    from petra_hw.onnx_export import export_onnx

    spec = InputSpec("input", (None, *digits.suite.input_shape))
    return export_onnx(digits.model, spec, tmp_path_factory.mktemp("ort") / "m.onnx")


def test_ort_node_assignment_is_checked_node_by_node(fp32_onnx, cpu_profile) -> None:
    session = ortb.make_session(str(fp32_onnx), cpu_profile)
    placed = ortb.check_assignment(session, ortb.CPU)
    assert set(placed) == {ortb.CPU} and placed[ortb.CPU] >= 3
    with pytest.raises(RuntimeError, match=r"placed nodes off CUDAExecutionProvider: \d+ on CPU"):
        ortb.check_assignment(session, ortb.CUDA)


def test_ort_gpu_session_without_cuda_provider_is_refused(fp32_onnx) -> None:
    import onnxruntime as ort

    if ortb.CUDA in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    with pytest.raises(RuntimeError, match="would run part of this model on the CPU"):
        ortb.make_session(str(fp32_onnx), load_profile("h200"))


def test_ort_int8_is_refused_on_gpu_profiles(digits, cpu_profile, tmp_path) -> None:
    gpu = load_profile("nvidia-gpu")
    for mode in ("static", "dynamic", "qat"):
        reason = ortb.refusal("int8", mode, gpu)
        assert reason and "no INT8 kernels" in reason and "tensorrt" in reason
    assert ortb.refusal("fp16", "", gpu) is None and ortb.refusal("fp32", "", gpu) is None
    assert ortb.refusal("int8", "static", cpu_profile) is None
    with pytest.raises(UserError, match="no INT8 kernels"):
        check_supported(OnnxRuntimeBackend(), gpu, "int8")
    with pytest.raises(ValueError, match="no INT8 kernels"):  # before any work is done
        OnnxRuntimeBackend().compile(digits.model, _request(digits, tmp_path, "int8", "h200"))
    assert not (tmp_path / "int8-h200").exists()


@no_gpu
def test_no_backend_for_int8_on_a_gpu_without_tensorrt() -> None:
    with pytest.raises(UserError, match="tensorrt.*not available.*no INT8 kernels"):
        choose_backend(load_profile("h100"), PrecisionIntent("int8", "static"))


# -- refusals on a host without a GPU -------------------------------------------------------------
@no_gpu
@pytest.mark.parametrize("name", ["rtx6000ada", "h100", "h200", "nvidia-gpu"])
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


@pytest.mark.parametrize("visible, want", [("", 0), ("2,3", 2), ("GPU-1a2b", "GPU-1a2b")])
def test_measured_gpu_follows_cuda_visible_devices(monkeypatch, visible, want) -> None:
    """Before CUDA is initialised the environment decides; after (earlier GPU tests in this
    process), torch's current device's UUID does.  Decided when the test runs, not at collection."""
    from petra_hw.nvml import measured_gpu

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    if torch.cuda.is_initialized():
        assert str(measured_gpu()).startswith("GPU-")
    else:
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
    x = digits.splits.val.inputs(16)
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
        ("NVIDIA H200", "h200"),
        ("NVIDIA H200 NVL", "h200"),
        ("Quadro RTX 6000", "nvidia-gpu"),  # Turing, not Ada
        ("NVIDIA A100-SXM4-80GB", "nvidia-gpu"),
        ("NVIDIA L4", "nvidia-gpu"),
        (None, "epyc9124"),  # no GPU: the CPU profile
    ],
)
def test_auto_recognises_gpus_by_nvml_name(monkeypatch, gpu_name, profile) -> None:
    """``--device auto`` with NVML reporting ``gpu_name`` on an EPYC 9124 host."""
    import petra_hw.profiles as profiles

    monkeypatch.setattr(profiles, "gpu_names", lambda: [gpu_name] if gpu_name else [])
    monkeypatch.setattr(profiles, "cpu_model", lambda: "AMD EPYC 9124 16-Core Processor")
    picked = load_profile("auto")
    assert picked.name == profile
    if gpu_name:
        note = f"--device auto picked profile {profile} ("
        assert any(n.startswith(note) and repr(gpu_name) in n for n in picked.notes)
        assert any(n.startswith(note) for n in check_host(picked))  # printed by the CLI
    else:
        assert picked.notes == ()


def test_generic_profile_matches_any_nvidia_gpu_but_loses_to_specific_ones() -> None:
    generic, h200 = load_profile("nvidia-gpu"), load_profile("h200")
    assert matches(generic, "", ["Tesla T4"], "aarch64") and not matches(generic, "x", [], "x86_64")
    cpus = [load_profile(n) for n in ("cpu", "epyc9124")]
    assert all(c.match.priority < generic.match.priority < h200.match.priority for c in cpus)
    for name in ("h100", "rtx6000ada"):  # names kept
        assert load_profile(name).match.priority > generic.match.priority


# -- on a GPU -------------------------------------------------------------------------------------
def _gpu_profile():
    """This host's GPU profile with quick measurement settings and batches 1 and 16."""
    return dataclasses.replace(detect_profile(), measurement=QUICK, batch_sizes=(1, 16))


def _gpu_request(digits, tmp_path, precision: str, name: str, **options) -> CompileRequest:
    request = _request(digits, tmp_path, precision, **options)
    return dataclasses.replace(request, profile=_gpu_profile(), out_dir=tmp_path / name)


def _compile_torch(digits, tmp_path, precision, **options):
    request = _gpu_request(
        digits, tmp_path, precision, f"torch-{precision}-{len(options)}", **options
    )
    artifact = TorchBackend().compile(digits.model, request)
    return TorchBackend().load(read_artifact(artifact.path), request.profile), request.profile


def _want(model, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return copy.deepcopy(model).cpu()(x).numpy()


@pytest.fixture
def tensorrt_here():
    """TensorRT on this GPU host.  Where the host's profile lists tensorrt, a missing TensorRT
    fails the test: a green ``-m gpu`` run must mean TensorRT was exercised."""
    try:
        import tensorrt
    except (ImportError, OSError) as exc:
        profile = detect_profile()
        if profile.is_gpu and "tensorrt" in profile.backends:
            pytest.fail(
                f"profile {profile.name} lists tensorrt, which cannot be imported ({exc}): install "
                "NVIDIA's tensorrt wheel, or deselect with -m 'gpu and not tensorrt'"
            )
        pytest.skip(f"tensorrt cannot be imported ({exc}) and profile {profile.name} lacks it")
    return tensorrt


@pytest.fixture
def ort_cuda_here():
    """ONNX Runtime's CUDA provider on this GPU host; missing, it fails like ``tensorrt_here``."""
    import onnxruntime as ort

    if ortb.CUDA not in ort.get_available_providers():
        profile = detect_profile()
        problem = ortb.install_problem(gpu_host=True)
        if profile.is_gpu and "onnxruntime" in profile.backends:
            pytest.fail(f"profile {profile.name} lists onnxruntime: {problem}")
        pytest.skip(str(problem))


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-2), ("fp16", 5e-2)])
def test_torch_cuda_matches_cpu(digits, tmp_path, precision, tol):
    runner, _ = _compile_torch(digits, tmp_path, precision)
    x = digits.splits.val.inputs(64)
    got, want = runner(x.numpy()), _want(digits.model, x)
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
        x = digits.splits.val.inputs(n).numpy()
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
@pytest.mark.ort_cuda
@needs_cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-2), ("fp16", 5e-2)])
def test_ort_cuda_runs_every_node_on_the_gpu(digits, tmp_path, ort_cuda_here, precision, tol):
    request = _gpu_request(digits, tmp_path, precision, f"ort-{precision}")
    artifact = OnnxRuntimeBackend().compile(digits.model, request)
    runner = OnnxRuntimeBackend().load(read_artifact(artifact.path), request.profile)
    assert set(ortb.assignment(runner.session)) == {ortb.CUDA}
    assert (
        runner.session.get_session_options().get_session_config_entry(ortb.NO_CPU_FALLBACK) == "1"
    )
    x = digits.splits.val.inputs(64)
    got, want = runner(x.numpy()), _want(digits.model, x)
    assert runner.device == "cuda" and got.shape == want.shape
    assert np.abs(got - want).max() <= tol * np.abs(want).max()
    assert np.allclose(runner(x[:1].numpy()), got[:1], rtol=tol, atol=tol * np.abs(want).max())


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_cuda
@pytest.mark.parametrize("precision, tol", [("fp32", 1e-3), ("fp16", 5e-2)])
def test_tensorrt_float_engine_builds_and_runs(digits, tmp_path, tensorrt_here, precision, tol):
    request = _gpu_request(digits, tmp_path, precision, f"trt-{precision}")
    artifact = trt_backend.TensorRTBackend().compile(digits.model, request)
    built = artifact.manifest["tensorrt"]
    cache = Path(built["timing_cache"])
    assert cache.is_file() and artifact.path not in cache.parents
    assert built["tf32"] is (precision != "fp32")  # fp32 engines do not use TF32
    runner = trt_backend.TensorRTBackend().load(read_artifact(artifact.path))
    x = digits.splits.val.inputs(100)  # larger than the profile's largest batch: split
    got, want = runner(x.numpy()), _want(digits.model, x)
    assert np.abs(got - want).max() <= tol * np.abs(want).max()
    one = runner(x[:1].numpy())  # the batch-1 optimization profile
    assert one.shape == (1, *want.shape[1:])
    assert np.abs(one - want[:1]).max() <= tol * np.abs(want).max()
    moved = artifact.update(tensorrt={**built, "version": "0.0.0"})
    with pytest.raises(ArtifactError, match="compile it again"):
        trt_backend.TensorRTBackend().load(moved)


@pytest.mark.gpu
@pytest.mark.tensorrt
@needs_cuda
@pytest.mark.parametrize("mode", ["qat", "static"])
def test_tensorrt_int8_engine_builds_and_runs(digits, qat_model, tmp_path, tensorrt_here, mode):
    model = qat_model if mode == "qat" else digits.model
    request = _gpu_request(digits, tmp_path, "int8", f"trt-int8-{mode}", int8_mode=mode)
    artifact = trt_backend.TensorRTBackend().compile(model, request)
    assert artifact.manifest["precision"] == "int8"
    assert artifact.manifest["quantization"]["mode"] == mode
    assert artifact.manifest["quantization"]["quantize_linear"] > 0
    runner = trt_backend.TensorRTBackend().load(read_artifact(artifact.path))
    x = digits.splits.val.inputs(100)
    got, want = runner(x.numpy()), _want(model, x)
    assert (got.argmax(1) == want.argmax(1)).mean() >= 0.9
    one = runner(x[:1].numpy())
    assert one.shape == (1, *want.shape[1:]) and one.argmax(1)[0] == got.argmax(1)[0]
