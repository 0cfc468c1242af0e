"""petra-hw: a hardware-aware compression compiler and benchmark suite.

Importing this package stays light: torch-heavy and backend-specific modules are imported where
they are used, never here.
"""

from __future__ import annotations

__version__ = "0.1.0"


def load(path: str):
    """Load a deployable artifact folder and return its runner (``runner(x) -> outputs``)."""
    from petra_hw.backend import load_runner

    return load_runner(path)


__all__ = ["__version__", "load"]
