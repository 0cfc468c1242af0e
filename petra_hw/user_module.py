"""Run a user's Python file as a module: the one place where a user's code is imported by path."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

from petra_hw.errors import UserError


def load_user_file(path: Path) -> ModuleType:
    """Import ``path`` under a name of its own; whatever it raises is the user's error (one line,
    never a traceback), since a suite file is the user's code, not petra-hw's."""
    spec = importlib.util.spec_from_file_location(f"petra_user_suite_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as exc:  # a user's file: report, never a traceback
        raise UserError(f"cannot load suite file {path}: {type(exc).__name__}: {exc}") from None
    return module
