"""The backend protocol and registry.

A backend is a compiler + runtime for one family of devices.  ``supports(intent, profile)`` says
whether it compiles a precision intent for a device here (``None`` = yes, else the reason; the one
question backend choice asks), ``compile`` turns a torch model into an artifact folder for a
``CompileRequest`` (whose ``intent`` is the typed ``PrecisionIntent``), ``load`` turns an artifact
into a runner.  ``BaseBackend`` answers ``supports`` from the class's ``precisions`` and
``int8_modes`` plus its ``available(profile)``.  Backends are registered by name through the
``petra_hw.backends`` entry-point group (ours are declared in pyproject.toml), so a third party adds
one without touching petra-hw; ``register_backend`` does the same at run time for a plug-in module.
Heavy imports happen inside each backend module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from petra_hw.errors import ArtifactError, UserError
from petra_hw.precision import INT8_MODES, PrecisionIntent

if TYPE_CHECKING:
    from torch import nn

    from petra_hw.artifact import Artifact, InputSpec
    from petra_hw.profiles import DeviceProfile
    from petra_hw.suite import Split

ENTRY_POINT_GROUP = "petra_hw.backends"
# Built-ins, also used when the package metadata is absent (running from a bare checkout).
BUILTIN = {
    "torch": "backends.torch_backend:TorchBackend",
    "onnxruntime": "backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "backends.openvino_backend:OpenVinoBackend",
    "tensorrt": "backends.tensorrt_backend:TensorRTBackend",
}
_REGISTERED: dict[str, str] = {}  # added at run time by plug-in modules (register_backend)


@runtime_checkable
class Runner(Protocol):
    """A loaded artifact: maps a float32 batch (numpy) to outputs (numpy)."""

    device: str  # "cpu" or "cuda"

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def synchronize(self) -> None: ...


@dataclass(frozen=True)
class CompileRequest:
    """Everything a compiler needs besides the model: one value passed to every backend.

    ``intent`` is what to deploy (precision, int8 mode, calibration); ``options`` are
    backend-specific knobs (workspace size, CUDA graphs, timing cache), never the precision."""

    intent: PrecisionIntent
    out_dir: Path
    input_spec: InputSpec
    profile: DeviceProfile
    calib: Split | None = None
    pipeline: dict | None = None
    options: tuple[tuple[str, object], ...] = ()

    @property
    def precision(self) -> str:
        return self.intent.precision

    def option(self, name: str, default: object = None) -> object:
        return dict(self.options).get(name, default)


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]
    # whether zeroed weights (unstructured masks) make its artifacts faster or smaller
    sparse_weights: bool
    # whether the search compiles a trained candidate for it beside the first backend that
    # supports the candidate's precision (``supporting_backends``; the eager torch reference not)
    search_variant: bool

    def available(self, profile: DeviceProfile) -> str | None: ...

    def supports(self, intent: PrecisionIntent, profile: DeviceProfile) -> str | None: ...

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact: ...

    def load(self, artifact: Artifact, profile: DeviceProfile | None = None) -> Runner: ...


class BaseBackend:
    """``supports`` from the class's declared precisions and int8 modes, then ``available``."""

    name: str = ""
    precisions: tuple[str, ...] = ()
    int8_modes: tuple[str, ...] = INT8_MODES
    # Dense runtimes (ONNX Runtime, OpenVINO CPU, TensorRT without 2:4 sparsity) store and
    # multiply zeros like any weight: an unstructured mask saves neither time nor bytes there.
    sparse_weights: bool = False
    search_variant: bool = True

    def available(self, profile: DeviceProfile) -> str | None:
        return None

    def supports(self, intent: PrecisionIntent, profile: DeviceProfile) -> str | None:
        if intent.precision not in self.precisions:
            return f"cannot compile {intent.precision} (it compiles {', '.join(self.precisions)})"
        if intent.precision == "int8" and intent.mode not in self.int8_modes:
            return (
                f"cannot compile int8 {intent.mode} quantization "
                f"(it compiles {', '.join(self.int8_modes)})"
            )
        return self.available(profile)


def register_backend(name: str, target: str) -> None:
    """Make ``module:Class`` the backend ``name`` in this process (a plug-in's backend; installed
    packages use the entry-point group instead)."""
    _REGISTERED[name] = target


def _entry_points() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
    found.update(_REGISTERED)
    return found


def backend_names() -> list[str]:
    return sorted(_entry_points())


def get_backend(name: str) -> Backend:
    target = _entry_points().get(name)
    if target is None:
        raise UserError(f"unknown backend '{name}' (known: {', '.join(backend_names())})")
    module, _, attr = target.partition(":")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise UserError(f"backend '{name}' cannot be imported: {exc}") from None
    return cls()


def _intent(intent: PrecisionIntent | str) -> PrecisionIntent:
    return intent if isinstance(intent, PrecisionIntent) else PrecisionIntent(intent)


def check_supported(
    backend: Backend, profile: DeviceProfile, intent: PrecisionIntent | str
) -> None:
    """Fail before any work when the profile or backend cannot run this precision intent."""
    intent = _intent(intent)
    if backend.name not in profile.backends:
        raise UserError(
            f"backend '{backend.name}' is not a backend of device '{profile.name}' "
            f"({', '.join(profile.backends)})"
        )
    if intent.precision not in profile.precisions:
        raise UserError(
            f"device '{profile.name}' does not run {intent.precision} "
            f"(it runs {', '.join(profile.precisions)})"
        )
    reason = backend.supports(intent, profile)
    if reason:
        raise UserError(
            f"backend '{backend.name}' is not available here for {intent.label()}: {reason}"
        )


def choose_backend(
    profile: DeviceProfile, intent: PrecisionIntent, pinned: str | None = None
) -> str:
    """The pinned backend, or the profile's first backend that ``supports`` the intent (TensorRT
    and OpenVINO have no dynamic int8, for example, so PDQ goes to ONNX Runtime)."""
    if pinned:
        check_supported(get_backend(pinned), profile, intent)
        return pinned
    if intent.precision not in profile.precisions:
        raise UserError(
            f"device '{profile.name}' does not run {intent.precision} "
            f"(it runs {', '.join(profile.precisions)})"
        )
    reasons = []
    for name in profile.backends:
        try:
            check_supported(get_backend(name), profile, intent)
            return name
        except UserError as exc:
            reasons.append(str(exc))
    raise UserError(
        f"no backend of device '{profile.name}' can compile {intent.label()}: {'; '.join(reasons)}"
    )


def supporting_backends(profile: DeviceProfile, intent: PrecisionIntent) -> list[str]:
    """Every backend of the profile that compiles ``intent`` here, in the profile's order: the
    first is the one ``choose_backend`` picks, the others are where a search compiles the same
    trained model again as its backend variants (``search_variant`` backends only)."""
    found = []
    for name in profile.backends:
        try:
            backend = get_backend(name)
            check_supported(backend, profile, intent)
        except UserError:
            continue
        if not found or getattr(backend, "search_variant", True):
            found.append(name)
    return found


def load_runner(artifact: Artifact | str | Path, profile: DeviceProfile | None = None) -> Runner:
    """Load an artifact (a folder is read and verified first) with the backend that compiled it:
    the one "read, choose, load" path.  Refuses a backend that cannot run the manifest's precision
    or is not available here, and checks the model runs on its manifest's ``input.shape``, so a
    doctored manifest is one clear refusal rather than a traceback in the profiler."""
    from petra_hw.artifact import read_artifact

    if isinstance(artifact, (str, Path)):
        artifact = read_artifact(artifact)
    where = f"artifact {artifact.path}"
    backend = get_backend(artifact.backend)
    if artifact.precision not in backend.precisions:
        raise ArtifactError(
            f"{where}: backend '{backend.name}' does not run precision {artifact.precision}"
        )
    if profile is not None:
        reason = backend.available(profile)
        if reason:
            raise UserError(f"{where}: backend '{backend.name}' is not available here: {reason}")
    try:
        runner = backend.load(artifact, profile)
    except UserError:
        raise
    except Exception as exc:
        raise ArtifactError(
            f"{where}: backend '{backend.name}' cannot load it: {_first_line(exc)}"
        ) from None
    shape = artifact.input_spec.sample_shape(1)
    try:
        runner(np.zeros(shape, dtype=np.float32))
    except Exception as exc:
        raise ArtifactError(
            f"{where}: the model does not run on its manifest's input.shape {list(shape)}: "
            f"{_first_line(exc)}"
        ) from None
    return runner


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]
