"""How the CLI talks to people: rich tables and one-line notes (library code only logs)."""

from __future__ import annotations

import sys

from rich.console import Console
from rich.table import Table

_WIDTH = None if sys.stdout.isatty() else 160
console = Console(highlight=False, width=_WIDTH)
errors = Console(stderr=True, highlight=False, width=_WIDTH)


def fmt(value: object, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        return f"{value:.{digits}f}" if abs(value) < 1e5 else f"{value:.3g}"
    return str(value)


def table(title: str, columns: list[str], rows: list[list[object]]) -> Table:
    t = Table(title=title, title_justify="left")
    for c in columns:
        t.add_column(
            c, justify="right" if c not in ("backend", "precision", "pipeline", "name") else "left"
        )
    for r in rows:
        t.add_row(*(fmt(v) for v in r))
    return t


def mb(size_bytes: int | float | None) -> str:
    return "-" if size_bytes is None else f"{size_bytes / 1e6:.3f}"
