"""Quantization steps on the torch model: QAT, and PTQ/PDQ/FP16 where they are not the last word.

Quantization steps are intents; which one decides the deployed precision is fixed by
``petra_hw.precision.resolve`` (the pipeline's last quantization step).  ``apply`` gives each
step a role (:func:`step_roles`):

* **deferred** -- the last quantization step when it is PTQ, PDQ or FP16: the torch model is left
  as is and the backend compiler quantizes the final model (calibrating PTQ on the calib split).
* **fake_quant** -- QAT as the very last step: NNCF inserts fake quantizers (INT8 symmetric;
  per-channel weights on a 7-bit grid so that pre-VNNI x86 CPUs do not saturate; ranges calibrated
  on the calib split), the model trains with them on the train
  split, and the fake-quantized model is what the backend exports, as QDQ ONNX with the trained
  scales (``int8`` mode ``qat``).  BatchNorm is folded into the preceding conv first, so the
  weights that train under quantization are the weights the runtime executes.
* **run** -- every other step, including quantization steps that are not last.  Their meaning is
  "quantization noise that the later steps adapt to", on an ordinary float model:

  - PTQ / PDQ round Conv and Linear weights in place to the per-output-channel symmetric INT8
    grid (scale = max|w| / 127);
  - FP16 rounds every floating parameter and buffer to float16 (and back to float32);
  - QAT (not last, e.g. ``LR - QAT - Pr - QS``) trains with fake quantization as above, but
    without folding BatchNorm, then folds the quantized weights back into the plain model and
    drops the quantizers, so later structural steps (Pr, LR) see ordinary modules.  When later
    model-changing steps follow, the deployed precision is INT8 static (``precision.resolve``).

The fake-quantized model is exported by ``petra_hw.onnx_export`` (as QDQ ONNX with the trained
scales), where every ONNX export lives.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections import Counter

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from petra_hw.onnx_export import count_quantizers
from petra_hw.pipeline import Pipeline, Step
from petra_hw.steps.base import ALL_SETTINGS, StepContext, register
from petra_hw.steps.finetune import fit

log = logging.getLogger(__name__)

RUN, DEFERRED, FAKE_QUANT = "run", "deferred", "fake_quant"
# QAT fine-tunes at 1% of the pipeline's learning rate (NVIDIA's pytorch-quantization recipe:
# start at 1% of the training rate, cosine down).  At the full rate (Adam 1e-3) the fake-quantized
# models collapsed: cifar10-resnet20 0.686 -> 0.401 test accuracy after one epoch, ResNet-18 to
# chance (0.09); at 1e-4 ResNet-18 still lost 4.6 points, at 1e-5 0.5 (a third of an epoch).
QAT_LR_SHARE = 0.01
CALIB_BATCH = 32
_INT8_LAYERS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_FOLDABLE = {nn.BatchNorm1d: (nn.Conv1d, nn.Linear), nn.BatchNorm2d: (nn.Conv2d,)}


def step_roles(pipeline: Pipeline) -> tuple[str, ...]:
    """The role of each step (``run``, ``deferred`` or ``fake_quant``), as the docstring defines."""
    roles = [RUN] * len(pipeline)
    quant = [i for i, s in enumerate(pipeline.steps) if s.spec.quantizes]
    if quant:
        last = quant[-1]
        if pipeline.steps[last].spec.deferred:
            roles[last] = DEFERRED
        elif last == len(pipeline) - 1:
            roles[last] = FAKE_QUANT
    return tuple(roles)


# -- intermediate post-training rounding ----------------------------------------------------------
@torch.no_grad()
def round_weights_int8(model: nn.Module) -> nn.Module:
    """Round Conv/Linear weights in place to the per-output-channel symmetric INT8 grid."""
    for m in model.modules():
        if isinstance(m, _INT8_LAYERS):
            w = m.weight
            amax = w.abs().reshape(w.shape[0], -1).amax(dim=1).clamp_min(1e-12)
            scale = (amax / 127.0).reshape(-1, *([1] * (w.dim() - 1)))
            w.copy_(torch.round(w / scale).clamp(-127, 127) * scale)
    return model


@torch.no_grad()
def round_fp16(model: nn.Module) -> nn.Module:
    """Round every floating parameter and buffer to float16 precision, keeping float32 storage."""
    for t in [*model.parameters(), *model.buffers()]:
        if t.is_floating_point():
            t.copy_(t.half().to(t.dtype))
    return model


@register("PTQ")
@register("PDQ")
def intermediate_int8_step(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    return round_weights_int8(model)


@register("FP16")
def intermediate_fp16_step(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    return round_fp16(model)


# -- QAT ------------------------------------------------------------------------------------------
def fold_batchnorm(model: nn.Module) -> int:
    """Fold each BatchNorm that only follows a Conv/Linear into it (BN becomes ``nn.Identity``).

    The pairs come from a ``torch.fx`` trace; a model that cannot be traced keeps its BatchNorm
    (still correct, only slower in ONNX Runtime).  Returns the number of folds.
    """
    model.eval()
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception as exc:  # tracing is best effort: any failure means "do not fold"
        log.info("BatchNorm not folded: model cannot be traced (%s)", exc)
        return 0
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    folded = 0
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1:
            continue
        bn = model.get_submodule(node.target)
        src = node.args[0] if node.args else None
        if type(bn) not in _FOLDABLE or not isinstance(src, fx.Node):
            continue
        if src.op != "call_module" or calls[src.target] != 1 or len(src.users) != 1:
            continue
        layer = model.get_submodule(src.target)
        if type(layer) not in _FOLDABLE[type(bn)]:
            continue
        fuse = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
        model.set_submodule(src.target, fuse(layer, bn))
        model.set_submodule(node.target, nn.Identity())
        folded += 1
    return folded


def _quantize(model: nn.Module, ctx: StepContext) -> nn.Module:
    """NNCF's INT8 fake quantization of a copy of ``model``, ranges calibrated on calib."""
    import nncf
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    from petra_hw import nncf_extension

    nncf.set_log_level(logging.WARNING)  # NNCF logs INFO to its own handler by default
    nncf_extension.prepare()  # build NNCF's C++ extension under control, or use its reference

    calib = ctx.splits.calib
    # a list, not a generator: NNCF's statistics differ when fed a re-iterable generator
    batches = list(calib.input_batches(CALIB_BATCH))
    with contextlib.redirect_stdout(io.StringIO()):  # NNCF draws progress bars on stdout
        return nncf.quantize(
            model.eval(),
            nncf.Dataset(batches),
            preset=nncf.QuantizationPreset.PERFORMANCE,
            subset_size=len(batches),
            # 7-bit weights on every layer (NNCF's overflow fix): x86 CPUs without VNNI add u8*s8
            # products pairwise in int16, which 8-bit weights saturate (ONNX Runtime's QLinearConv
            # then drifts far from the trained model); QAT trains on the same 7-bit grid.
            advanced_parameters=AdvancedQuantizationParameters(overflow_fix=OverflowFix.ENABLE),
        )


def fake_quant_train(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    """QAT as the last step: fold BatchNorm, insert fake quantizers, train; keep the quantizers."""
    folded = fold_batchnorm(model)
    fq = _quantize(model, ctx)
    log.info("QAT: %d BatchNorm folded, %d quantizers", folded, count_quantizers(fq))
    return fit(fq, int(step["epochs"]), ctx, lr_share=QAT_LR_SHARE)


@torch.no_grad()
def fold_quantized_weights(fq: nn.Module, plain: nn.Module, example: torch.Tensor) -> nn.Module:
    """Load ``fq``'s weights into ``plain`` (same structure, no hooks), each weight replaced by
    its fake-quantized value; activation quantizers are dropped."""
    import nncf
    from nncf.torch.function_hook.hook_storage import decode_hook_name
    from nncf.torch.function_hook.nncf_graph.nncf_graph_builder import build_nncf_graph
    from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE, get_hook_storage
    from nncf.torch.model_graph_manager import get_const_node
    from nncf.torch.quantization.layers import BaseQuantizer

    fq.eval()
    graph = build_nncf_graph(fq, example)
    state = {k: v for k, v in fq.state_dict().items() if not k.startswith(ATR_HOOK_STORAGE)}
    for name, quantizer in get_hook_storage(fq).named_hooks():
        hook_type, op_name, port = decode_hook_name(name)
        if not isinstance(quantizer, BaseQuantizer) or hook_type != "pre_hooks":
            continue
        try:
            const = get_const_node(graph.get_node_by_name(op_name), port, graph)
        except nncf.InternalError:  # an activation quantizer (e.g. inside a GRU): no weight
            continue
        if const is not None:
            weight = const.layer_attributes.name
            state[weight] = quantizer(fq.get_parameter(weight)).detach()
    plain.load_state_dict(state, strict=True)
    return plain.eval()


def trained_float_model(fq: nn.Module, example: torch.Tensor) -> nn.Module:
    """A plain copy of the fake-quantized ``fq`` (NNCF's hooks removed) whose weights are their
    trained, fake-quantized values: what CPU compilers re-quantize with their own QDQ placement
    (see ``backends.common.qat_float_model``)."""
    from nncf.torch.function_hook.wrapper import ATR_HOOK_STORAGE

    plain = copy.deepcopy(fq)
    for attr in ("forward", "_replicate_for_data_parallel"):  # wrap_model's instance overrides
        plain.__dict__.pop(attr, None)
    delattr(plain, ATR_HOOK_STORAGE)
    return fold_quantized_weights(fq, plain, example)


@register("QAT", reads=ALL_SETTINGS)
def intermediate_qat_step(model: nn.Module, step: Step, ctx: StepContext) -> nn.Module:
    """QAT that is not last: train with fake quantization, then fold into a plain float model."""
    fq = fit(_quantize(model, ctx), int(step["epochs"]), ctx, lr_share=QAT_LR_SHARE)
    return fold_quantized_weights(fq, model, ctx.suite.example_input(1))
