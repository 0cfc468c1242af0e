"""Save and load transformed models without pickling modules.

A file holds a dict of plain data loaded with ``torch.load(weights_only=True)``: a JSON *structure
spec* (every module's dotted path, type and, for whitelisted types, the constructor arguments read
from the module) and the state dict.  Loading builds a fresh ``suite.build_model()``, replaces each
module whose recorded type or arguments differ (LR's ``nn.Sequential`` pairs, Pr's narrower
layers) by one constructed from a whitelist of torch types, then loads the state dict strictly.  A
tampered file can therefore only name whitelisted torch classes with plain-number arguments: no
code runs.  Modules of other types (the suite's own blocks) must be where the fresh model has them.

Fake-quantized (QAT) models carry NNCF hook modules outside the whitelist and are not saved: the
prefix cache stores nothing for such a prefix (see ``petra_hw.apply``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from petra_hw.steps.attention import guard_fast_path

FORMAT = 1


def _conv(m: nn.Module) -> dict[str, Any]:
    return {
        "in_channels": m.in_channels,
        "out_channels": m.out_channels,
        "kernel_size": m.kernel_size,
        "stride": m.stride,
        "padding": m.padding,
        "dilation": m.dilation,
        "groups": m.groups,
        "bias": m.bias is not None,
        "padding_mode": m.padding_mode,
    }


def _bn(m: nn.Module) -> dict[str, Any]:
    return {
        "num_features": m.num_features,
        "eps": m.eps,
        "momentum": m.momentum,
        "affine": m.affine,
        "track_running_stats": m.track_running_stats,
    }


def _pool(m: nn.Module, names: tuple[str, ...]) -> dict[str, Any]:
    return {n: getattr(m, n) for n in names}


_MAX_POOL = ("kernel_size", "stride", "padding", "dilation", "ceil_mode")
_AVG_POOL = ("kernel_size", "stride", "padding", "ceil_mode", "count_include_pad")
_NONE: Callable[[nn.Module], dict[str, Any]] = lambda m: {}  # noqa: E731
_INPLACE: Callable[[nn.Module], dict[str, Any]] = lambda m: {"inplace": m.inplace}  # noqa: E731

# type -> how to read its constructor keyword arguments back from an instance
WHITELIST: dict[type[nn.Module], Callable[[nn.Module], dict[str, Any]]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Linear: lambda m: {
        "in_features": m.in_features,
        "out_features": m.out_features,
        "bias": m.bias is not None,
    },
    nn.BatchNorm1d: _bn,
    nn.BatchNorm2d: _bn,
    nn.LayerNorm: lambda m: {
        "normalized_shape": m.normalized_shape,
        "eps": m.eps,
        "elementwise_affine": m.elementwise_affine,
        "bias": getattr(m, "bias", None) is not None,
    },
    nn.Embedding: lambda m: {
        "num_embeddings": m.num_embeddings,
        "embedding_dim": m.embedding_dim,
        "padding_idx": m.padding_idx,
        "max_norm": m.max_norm,
        "norm_type": m.norm_type,
        "scale_grad_by_freq": m.scale_grad_by_freq,
        "sparse": m.sparse,
    },
    nn.Sequential: _NONE,
    nn.Identity: _NONE,
    nn.Flatten: lambda m: {"start_dim": m.start_dim, "end_dim": m.end_dim},
    nn.Dropout: lambda m: {"p": m.p, "inplace": m.inplace},
    nn.ReLU: _INPLACE,
    nn.ReLU6: _INPLACE,
    nn.SiLU: _INPLACE,
    nn.Hardswish: _INPLACE,
    nn.LeakyReLU: lambda m: {"negative_slope": m.negative_slope, "inplace": m.inplace},
    nn.GELU: lambda m: {"approximate": m.approximate},
    nn.Sigmoid: _NONE,
    nn.Tanh: _NONE,
    nn.MaxPool1d: lambda m: _pool(m, _MAX_POOL),
    nn.MaxPool2d: lambda m: _pool(m, _MAX_POOL),
    nn.AvgPool1d: lambda m: _pool(m, _AVG_POOL),
    nn.AvgPool2d: lambda m: _pool(m, _AVG_POOL),
    nn.AdaptiveAvgPool1d: lambda m: {"output_size": m.output_size},
    nn.AdaptiveAvgPool2d: lambda m: {"output_size": m.output_size},
}
_BY_NAME = {cls.__name__: cls for cls in WHITELIST}


class SerializeError(ValueError):
    """A model that cannot be saved, or a file that does not describe a model of this suite."""


def _qualname(m: nn.Module) -> str:
    return f"{type(m).__module__}.{type(m).__qualname__}"


def _jsonable(value: Any) -> Any:
    if isinstance(value, (tuple, list)):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise SerializeError(f"constructor argument {value!r} is not plain data")


def module_spec(model: nn.Module) -> list[dict[str, Any]]:
    """Every module in definition order: path, type and (whitelisted types) constructor kwargs."""
    spec = []
    for path, m in model.named_modules():
        read = WHITELIST.get(type(m))
        if read is None:
            spec.append({"path": path, "custom": _qualname(m)})
        else:
            kwargs = {k: _jsonable(v) for k, v in read(m).items()}
            spec.append({"path": path, "type": type(m).__name__, "kwargs": kwargs})
    return spec


def _construct(entry: dict[str, Any]) -> nn.Module:
    cls = _BY_NAME.get(entry.get("type", ""))
    if cls is None:
        raise SerializeError(f"module type {entry.get('type')!r} is not in the whitelist")
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in dict(entry["kwargs"]).items()}
    return cls(**kwargs)


def _matches(module: nn.Module | None, entry: dict[str, Any]) -> bool:
    if module is None:
        return False
    if "custom" in entry:
        return _qualname(module) == entry["custom"]
    read = WHITELIST.get(type(module))
    return (
        read is not None
        and type(module).__name__ == entry["type"]
        and {k: _jsonable(v) for k, v in read(module).items()} == entry["kwargs"]
    )


def _get(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def rebuild(spec: list[dict[str, Any]], fresh: nn.Module) -> nn.Module:
    """Turn ``fresh`` (the suite's untrained model) into the recorded structure, parents first."""
    root = fresh
    for entry in spec:
        path = entry["path"]
        if _matches(_get(root, path) if path else root, entry):
            continue
        if "custom" in entry:
            raise SerializeError(
                f"module {path or '<root>'} is {entry['custom']} in the file, but the suite's "
                "model has something else there"
            )
        new = _construct(entry)
        if not path:
            root = new
            continue
        parent_path, _, name = path.rpartition(".")
        parent = _get(root, parent_path) if parent_path else root
        if parent is None:
            raise SerializeError(f"no parent module for {path}")
        parent.add_module(name, new)  # replaces an existing child in place, keeping its order
    recorded = {e["path"] for e in spec}
    for path in [p for p, _ in root.named_modules() if p not in recorded]:
        parent_path, _, name = path.rpartition(".")
        parent = _get(root, parent_path) if parent_path else root
        if parent is None or name not in parent._modules:
            continue  # inside a child already dropped
        if type(parent) is not nn.Sequential:
            raise SerializeError(f"the suite's model has a module the file lacks: {path}")
        del parent._modules[name]  # a shorter Sequential than the suite builds
    return root


def save_model(model: nn.Module, path: Path, meta: dict[str, Any] | None = None) -> int:
    """Write ``model`` atomically (temporary file + ``os.replace``); return the size in bytes."""
    spec = module_spec(model)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    blob = {
        "format": FORMAT,
        "spec": json.dumps(spec),
        "meta": json.dumps(meta or {}),
        "state": state,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{id(blob)}.tmp")
    try:
        torch.save(blob, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path.stat().st_size


def load_model(path: Path, build_model: Callable[[], nn.Module]) -> tuple[nn.Module, dict]:
    """Load a file written by :func:`save_model` onto ``build_model()``; returns (model, meta)."""
    blob = torch.load(Path(path), weights_only=True, map_location="cpu")
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise SerializeError(f"{path} is not a petra-hw model file (format {FORMAT})")
    model = rebuild(json.loads(blob["spec"]), build_model())
    model.load_state_dict(blob["state"], strict=True)
    guard_fast_path(model)  # a fresh build has every fast path on; the structure decides
    return model.eval(), json.loads(blob["meta"])
