"""Plug-in modules: user code that registers step kinds, backends, strategies or executors.

A plug-in is a module name (``my_pkg.petra_ext``) or a path to a ``.py`` file; importing it runs
its registrations (``steps.register``, ``backend.register_backend``, ``register_strategy``,
``register_executor``; see docs/extending.md).  A run journals its plug-ins, and every process
that works on it (the search loop, each spawned worker, Ray tasks, a resume) imports them first,
so a kind defined in a plug-in is searched, applied and compiled like a built-in one.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType

from petra_hw.errors import UserError

_LOADED: dict[str, ModuleType] = {}


def _from_file(path: Path) -> ModuleType:
    for module in list(sys.modules.values()):  # already imported under its own name (pytest)
        file = getattr(module, "__file__", None)
        if file and Path(file).resolve() == path:
            return module
    name = f"petra_hw_plugin_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserError(f"plug-in {path} is not a Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


def load_plugin(spec: str) -> ModuleType:
    """Import one plug-in (once per process); a missing one is a UserError naming it."""
    if spec in _LOADED:
        return _LOADED[spec]
    path = Path(spec)
    if spec.endswith(".py"):
        if not path.is_file():
            raise UserError(f"plug-in file not found: {spec}")
        module = _from_file(path.resolve())
    else:
        try:
            module = importlib.import_module(spec)
        except ModuleNotFoundError as exc:
            if exc.name != spec:
                raise
            raise UserError(
                f"plug-in module {spec!r} not found (a module name or a .py path)"
            ) from None
    _LOADED[spec] = module
    return module


def load_plugins(specs: Iterable[str]) -> None:
    for spec in specs:
        load_plugin(spec)
