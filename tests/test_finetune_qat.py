"""Tr and the quantization steps: fine-tuning, QAT's QDQ export, and non-final quantization."""

from __future__ import annotations

import copy
import math

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from petra_hw.artifact import InputSpec
from petra_hw.onnx_export import export_onnx, is_fake_quantized
from petra_hw.pipeline import Pipeline
from petra_hw.precision import resolve
from petra_hw.serialize import load_model, save_model
from petra_hw.steps import get_step
from petra_hw.steps.base import StepContext
from petra_hw.steps.qat import (
    DEFERRED,
    FAKE_QUANT,
    RUN,
    fake_quant_train,
    round_fp16,
    round_weights_int8,
    step_roles,
)
from petra_hw.suite import Splits
from petra_hw.training import TrainingError


def small_context(baseline, text: str, n_train: int = 128, n_calib: int = 64) -> StepContext:
    """A context whose train/calib splits are slices of the real ones (fast on 2 cores)."""
    s = baseline.splits
    splits = Splits(
        s.train.take(n_train),
        s.calib.take(n_calib),
        s.val,
        s.test,
    )
    return StepContext(baseline.suite, splits, Pipeline.parse(text))


@pytest.fixture(scope="module")
def qat_model(digits):
    """The digits baseline after QAT as the last step (fake quantizers kept)."""
    ctx = small_context(digits, "QAT")
    return fake_quant_train(copy.deepcopy(digits.model), ctx.pipeline.steps[0], ctx)


def _qdq_nodes(path) -> tuple[list, dict]:
    graph = onnx.load(str(path)).graph
    consts = {
        n.output[0]: numpy_helper.to_array(n.attribute[0].t)
        for n in graph.node
        if n.op_type == "Constant"
    }
    consts.update({i.name: numpy_helper.to_array(i) for i in graph.initializer})
    return [n for n in graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")], consts


def test_finetune_trains_and_reports_calib_loss(digits):
    ctx = small_context(digits, "Tr(epochs=2)", n_train=64)
    seen: list[tuple[int, float]] = []
    ctx = StepContext(
        ctx.suite, ctx.splits, ctx.pipeline, epoch_callback=lambda e, m: seen.append((e, m))
    )
    model = copy.deepcopy(digits.model)
    before = model.classifier[2].weight.detach().clone()
    out = get_step("Tr")(model, ctx.pipeline.steps[0], ctx)
    assert out is model and not torch.equal(before, model.classifier[2].weight)
    assert [e for e, _ in seen] == [1, 2] and all(math.isfinite(m) for _, m in seen)


def test_finetune_nan_raises_training_error(digits):
    ctx = small_context(digits, "Tr(epochs=1)")
    model = copy.deepcopy(digits.model)
    with torch.no_grad():
        model.classifier[2].bias.fill_(float("nan"))
    with pytest.raises(TrainingError):
        get_step("Tr")(model, ctx.pipeline.steps[0], ctx)


def test_qat_model_exports_qdq_that_onnxruntime_runs(qat_model, digits, tmp_path):
    import onnxruntime as ort

    assert is_fake_quantized(qat_model)
    spec = InputSpec("input", (None, *digits.suite.input_shape))
    path = export_onnx(qat_model, spec, tmp_path / "qat.onnx")
    nodes, _ = _qdq_nodes(path)
    kinds = {n.op_type for n in nodes}
    assert kinds == {"QuantizeLinear", "DequantizeLinear"}
    x = digits.splits.val.inputs()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = qat_model.eval()(x).numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.98
    assert (got.argmax(1) == digits.splits.val.targets().numpy()).mean() > 0.9
    assert is_fake_quantized(qat_model)  # export worked on a copy


def test_qat_qdq_runs_in_openvino(qat_model, digits, tmp_path):
    import openvino as ov

    spec = InputSpec("input", (None, *digits.suite.input_shape))
    path = export_onnx(qat_model, spec, tmp_path / "qat.onnx")
    compiled = ov.Core().compile_model(str(path), "CPU")
    x = digits.splits.val.inputs(64)
    got = compiled(x.numpy())[0]
    with torch.no_grad():
        want = qat_model(x).numpy()
    assert (got.argmax(1) == want.argmax(1)).mean() > 0.95


def test_signed_qdq_has_only_int8_zero_points(qat_model, digits, tmp_path):
    """TensorRT's ONNX parser rejects UINT8 Q/DQ; the signed export has none."""
    spec = InputSpec("input", (None, *digits.suite.input_shape))
    default = export_onnx(qat_model, spec, tmp_path / "default.onnx")
    signed = export_onnx(qat_model, spec, tmp_path / "signed.onnx", signed_qdq=True)
    for path, dtypes in ((default, {np.int8, np.uint8}), (signed, {np.int8})):
        nodes, consts = _qdq_nodes(path)
        zps = [consts[n.input[2]] for n in nodes if n.op_type == "QuantizeLinear"]
        assert {z.dtype.type for z in zps} == dtypes
        assert all((z == 0).all() for z in zps)  # symmetric, as TensorRT requires


def test_plain_models_are_not_fake_quantized(digits):
    assert not is_fake_quantized(digits.model)


def test_intermediate_qat_folds_into_plain_model(digits, tmp_path):
    ctx = small_context(digits, "QAT - Pr", n_train=64)
    model = get_step("QAT")(copy.deepcopy(digits.model), ctx.pipeline.steps[0], ctx)
    assert not is_fake_quantized(model)
    assert type(model) is type(digits.model)
    w = model.features[3].weight.detach().reshape(64, -1)
    assert all(len(torch.unique(row)) <= 128 for row in w)  # on the 7-bit weight grid
    save_model(model, tmp_path / "m.pt")  # ordinary modules: serializable
    loaded, _ = load_model(tmp_path / "m.pt", digits.suite.build_model)
    x = digits.splits.val.inputs(32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))


def test_intermediate_ptq_rounds_to_per_channel_int8_grid(digits):
    model = round_weights_int8(copy.deepcopy(digits.model))
    for layer in (model.features[0], model.classifier[0]):
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1)
        scale = w.abs().amax(dim=1, keepdim=True) / 127
        q = w / scale
        assert torch.allclose(q, q.round(), atol=1e-3) and q.abs().max() <= 127 + 1e-3
    again = round_weights_int8(copy.deepcopy(model))
    assert all(
        torch.allclose(a, b, atol=1e-7)
        for a, b in zip(model.parameters(), again.parameters(), strict=True)
    )
    assert not torch.equal(model.features[0].weight, digits.model.features[0].weight)


def test_intermediate_fp16_rounds_to_half_precision(digits):
    model = round_fp16(copy.deepcopy(digits.model))
    for t in model.state_dict().values():
        if t.is_floating_point():
            assert t.dtype == torch.float32 and torch.equal(t, t.half().float())


@pytest.mark.parametrize(
    ("text", "roles"),
    [
        ("LR - PTQ", (RUN, DEFERRED)),
        ("Pr - QAT", (RUN, FAKE_QUANT)),
        ("QAT - Pr", (RUN, RUN)),
        ("LR - QAT - Pr - QS", (RUN, RUN, RUN, DEFERRED)),
        ("QD - Pr - QS - LR", (RUN, RUN, DEFERRED, RUN)),
        ("Pr - QAT - LR - QD", (RUN, RUN, RUN, DEFERRED)),
        ("Pr - LR", (RUN, RUN)),
    ],
)
def test_step_roles_follow_precision_contract(text, roles):
    pipeline = Pipeline.parse(text)
    assert step_roles(pipeline) == roles
    assert (FAKE_QUANT in roles) == (resolve(pipeline).mode == "qat")


def test_fold_batchnorm_keeps_outputs_of_a_residual_network():
    from petra_hw.steps.qat import fold_batchnorm
    from petra_hw.suite import load_suite

    torch.manual_seed(0)
    model = load_suite("cifar10-resnet20").build_model().eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        want = model(x)
        n_bn = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        assert fold_batchnorm(model) == n_bn
        assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
        torch.testing.assert_close(model(x), want, rtol=1e-4, atol=1e-4)
