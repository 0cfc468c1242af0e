"""petra-hw: a hardware-aware compression compiler and benchmark suite.

Importing this package stays light: torch-heavy and backend-specific modules are imported where
they are used, never here.  The Python API (``Suite``, ``tune``, ``resume``, ``compile``,
``profile``; see ``petra_hw.api``) is imported on first use.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_API = {
    "Suite": "petra_hw.suite",
    "tune": "petra_hw.api",
    "resume": "petra_hw.api",
    "compile": "petra_hw.api",
    "profile": "petra_hw.api",
    "Run": "petra_hw.api",
    "CompiledArtifact": "petra_hw.api",
}


def load(path: str):
    """Load a deployable artifact folder and return its runner (``runner(x) -> outputs``)."""
    from petra_hw.backend import load_runner

    return load_runner(path)


def __getattr__(name: str) -> Any:
    if name in _API:
        import importlib

        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'petra_hw' has no attribute {name!r}")


__all__ = ["__version__", "load", *_API]
