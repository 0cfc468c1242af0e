"""The backend protocol and registry.

A backend is a compiler + runtime for one family of devices.  Three calls: ``available(profile)``
says whether it can run here (``None`` = yes, else the reason), ``compile`` turns a torch model
into an artifact folder, ``load`` turns an artifact into a runner.  Backends are registered by name
through the ``petra_hw.backends`` entry-point group (ours are declared in pyproject.toml), so a third
party adds one without touching petra-hw.  Heavy imports happen inside each backend module.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import numpy as np

from petra_hw.errors import UserError

if TYPE_CHECKING:
    from torch import nn

    from petra_hw.artifact import Artifact, InputSpec
    from petra_hw.profiles import Profile
    from petra_hw.suite import Split

ENTRY_POINT_GROUP = "petra_hw.backends"
# Built-ins, also used when the package metadata is absent (running from a bare checkout).
BUILTIN = {
    "torch": "backends.torch_backend:TorchBackend",
    "onnxruntime": "backends.onnxruntime_backend:OnnxRuntimeBackend",
    "openvino": "backends.openvino_backend:OpenVinoBackend",
    "tensorrt": "backends.tensorrt_backend:TensorRTBackend",
}


@runtime_checkable
class Runner(Protocol):
    """A loaded artifact: maps a float32 batch (numpy) to outputs (numpy)."""

    device: str  # "cpu" or "cuda"

    def __call__(self, x: np.ndarray) -> np.ndarray: ...

    def synchronize(self) -> None: ...


@dataclass(frozen=True)
class CompileRequest:
    """Everything a compiler needs besides the model: one value passed to every backend."""

    precision: str
    out_dir: Path
    input_spec: InputSpec
    profile: Profile
    calib: Split | None = None
    pipeline: dict | None = None
    options: tuple[tuple[str, object], ...] = ()

    def option(self, name: str, default: object = None) -> object:
        return dict(self.options).get(name, default)


class Backend(Protocol):
    name: str
    precisions: tuple[str, ...]

    def available(self, profile: Profile) -> str | None: ...

    def compile(self, model: nn.Module, request: CompileRequest) -> Artifact: ...

    def load(self, artifact: Artifact, profile: Profile | None = None) -> Runner: ...


def _entry_points() -> dict[str, str]:
    found = dict(BUILTIN)
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        found[ep.name] = ep.value
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


def check_supported(backend: Backend, profile: Profile, precision: str) -> None:
    """Fail before any work when the profile or backend cannot run this precision."""
    if backend.name not in profile.backends:
        raise UserError(
            f"backend '{backend.name}' is not a backend of device '{profile.name}' "
            f"({', '.join(profile.backends)})"
        )
    if precision not in profile.precisions:
        raise UserError(
            f"device '{profile.name}' does not run {precision} "
            f"(it runs {', '.join(profile.precisions)})"
        )
    if precision not in backend.precisions:
        raise UserError(
            f"backend '{backend.name}' cannot compile {precision} "
            f"(it compiles {', '.join(backend.precisions)})"
        )
    refuses = getattr(backend, "refuses", None)  # a backend's own rule (e.g. no INT8 on ORT CUDA)
    refused = refuses(precision, profile) if refuses is not None else None
    if refused:
        raise UserError(refused)
    reason = backend.available(profile)
    if reason:
        raise UserError(f"backend '{backend.name}' is not available here: {reason}")


def float_precision(profile: Profile) -> str:
    """What a pipeline without quantization deploys at: fp16 on GPUs that run it, else fp32."""
    return "fp16" if profile.is_gpu and "fp16" in profile.precisions else "fp32"


def supports_mode(backend: Backend, mode: str) -> bool:
    """Whether ``backend`` compiles this int8 mode (static, dynamic, qat); others accept all."""
    modes = getattr(backend, "int8_modes", None)
    return not mode or modes is None or mode in modes


def choose_backend(
    profile: Profile, precision: str, pinned: str | None = None, mode: str = ""
) -> str:
    """The pinned backend, or the profile's first available backend that compiles ``precision``
    (and, for int8, the ``mode``: TensorRT has no dynamic quantization, for example)."""
    if pinned:
        backend = get_backend(pinned)
        check_supported(backend, profile, precision)
        if not supports_mode(backend, mode):
            raise UserError(f"backend '{pinned}' cannot compile int8 {mode} quantization")
        return pinned
    if precision not in profile.precisions:
        raise UserError(
            f"device '{profile.name}' does not run {precision} "
            f"(it runs {', '.join(profile.precisions)})"
        )
    reasons = []
    for name in profile.backends:
        try:
            backend = get_backend(name)
            check_supported(backend, profile, precision)
            if not supports_mode(backend, mode):
                raise UserError(f"backend '{name}' cannot compile int8 {mode} quantization")
            return name
        except UserError as exc:
            reasons.append(str(exc))
    raise UserError(
        f"no backend of device '{profile.name}' can compile {precision}: {'; '.join(reasons)}"
    )
