"""Reference points: what a user of the device gets without petra-hw, measured in the same run.

A run is worth something only next to the one-shot recipes its user would otherwise run, so every
``tune`` (and ``petra-hw peers``) builds them from the same baseline, calibrates them on the same
calib split and measures them with the same harness, in the same process pool, as its candidates:

- *peers*: the one-shot tools of the device, each at the defaults its documentation shows
  (``onnxruntime.quantization.quantize_static``, ORT's x86 recipe, ``nncf.quantize`` with
  OpenVINO's default and f32 configurations on CPUs; TensorRT FP16/INT8 and ORT CUDA FP16 on GPUs);
- the *training control* ``Original + Tr(epochs=E)`` (E = the most epochs the search may give a
  ``Tr``): what more training alone does, so a pipeline with a training step is not credited with
  accuracy the Original could have had by training longer.

A reference is a ``Candidate`` with ``reference`` set: it travels through the executors and the
evaluator like any candidate, is journaled in its own table (``Store.add_reference``) and is never
told to a strategy, mutated, or counted in a front's hypervolume.  Peers are never tuned: their
settings are their tools' defaults, whatever they measure.
"""

from __future__ import annotations

from dataclasses import dataclass

from petra_hw.errors import UserError
from petra_hw.pipeline import Pipeline, Step
from petra_hw.precision import PrecisionIntent

CONTROL = "original+tr"
DEFAULT_CONTROL_EPOCHS = 3  # the top of the space's default epochs interval


@dataclass(frozen=True)
class Recipe:
    """One reference point: which backend compiles the Original (or the control), and how."""

    name: str
    devices: tuple[str, ...]  # "cpu", "gpu"
    backend: str | None  # None: the backend a candidate at this precision would get
    precision: str | None  # None: the device's float precision
    mode: str = ""  # int8: "static" | ...
    options: tuple[tuple[str, object], ...] = ()  # recipe options for the backend compiler
    doc: str = ""
    control: bool = False  # the training control (a pipeline, not a compile recipe)

    def intent(self, float_precision: str) -> PrecisionIntent:
        return PrecisionIntent(self.precision or float_precision, self.mode)


RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe(
            "ort-quantize-static",
            ("cpu",),
            "onnxruntime",
            "int8",
            "static",
            (("recipe", "ort-defaults"),),
            "onnxruntime.quantization.quantize_static(model, out, reader) at its defaults: "
            "QDQ, S8S8, per-tensor weights, MinMax",
        ),
        Recipe(
            "ort-x86",
            ("cpu",),
            "onnxruntime",
            "int8",
            "static",
            (("recipe", "ort-x86"),),
            "ONNX Runtime's documented x86 recipe: quant_pre_process, then quantize_static to QDQ "
            "with QUInt8 activations and per-channel QInt8 weights (MinMax)",
        ),
        Recipe(
            "nncf-default",
            ("cpu",),
            "openvino",
            "int8",
            "static",
            (("recipe", "nncf-default"),),
            "nncf.quantize(ov_model, nncf.Dataset(calib)) at its defaults, compiled with "
            "OpenVINO's default CPU configuration (BF16 float parts on a BF16 CPU)",
        ),
        Recipe(
            "nncf-default-f32",
            ("cpu",),
            "openvino",
            "int8",
            "static",
            (("recipe", "nncf-default"), ("inference_precision", "f32")),
            "the same nncf.quantize defaults, compiled with INFERENCE_PRECISION_HINT=f32",
        ),
        Recipe(
            "tensorrt-fp16",
            ("gpu",),
            "tensorrt",
            "fp16",
            doc="a TensorRT FP16 engine of the Original",
        ),
        Recipe(
            "tensorrt-int8",
            ("gpu",),
            "tensorrt",
            "int8",
            "static",
            doc="a TensorRT INT8 engine from symmetric post-training Q/DQ (NNCF/ModelOpt style)",
        ),
        Recipe(
            "ort-cuda-fp16",
            ("gpu",),
            "onnxruntime",
            "fp16",
            doc="ONNX Runtime's CUDA provider on the FP16-converted Original",
        ),
        Recipe(
            CONTROL,
            ("cpu", "gpu"),
            None,
            None,
            doc="the training control: the Original fine-tuned with Tr(epochs=E), E the most "
            "epochs the search space gives Tr, at the device's float precision",
            control=True,
        ),
    )
}


def get_recipe(name: str) -> Recipe:
    try:
        return RECIPES[name]
    except KeyError:
        raise UserError(f"unknown reference '{name}' (known: {', '.join(RECIPES)})") from None


def control_epochs(space) -> int:
    """E of the control: the largest ``Tr.epochs`` the search space allows."""
    try:
        rng = space.param_range("Tr", "epochs")
    except KeyError:  # a space without Tr: the default interval's top
        return DEFAULT_CONTROL_EPOCHS
    return int(max(rng.choices) if rng.is_choice else rng.high)


def pipeline_of(recipe: Recipe, epochs: int) -> Pipeline:
    """What a reference compiles: the Original, or the control's ``Tr(epochs=E)``."""
    if recipe.control:
        return Pipeline.make([Step.make("Tr", epochs=epochs)])
    return Pipeline.make()


def reference_candidates(is_gpu: bool, epochs: int) -> list:
    """One candidate per reference of this device class, peers first, the control last."""
    from petra_hw.search.types import Candidate

    device = "gpu" if is_gpu else "cpu"
    return [
        Candidate(pipeline_of(r, epochs), 0, None, "reference", r.name)
        for r in RECIPES.values()
        if device in r.devices
    ]
