"""One line for failures that are not petra-hw's bugs: a user's suite code that raised, and a full
disk.  The CLI turns these into ``petra-hw: error: ...`` and exit code 2 instead of a traceback.

Suite files register themselves when loaded (``register_suite``): a frame of a traceback that lies
in a registered user suite's folder (or in a bundled suite's own ``suite.py``) is user code.
"""

from __future__ import annotations

import traceback
from pathlib import Path

from petra_hw.errors import DiskFull
from petra_hw.fsutil import disk_full

_SUITE_PATHS: dict[Path, Path] = {}  # file or folder holding suite code -> the suite file


def register_suite(source: Path, user: bool) -> None:
    """Remember where a loaded suite's code lives (a user suite: its whole folder)."""
    source = source.resolve()
    _SUITE_PATHS[source.parent if user else source] = source


def _suite_of(filename: str) -> Path | None:
    path = Path(filename).resolve()
    for where, suite in _SUITE_PATHS.items():
        if path == where or where in path.parents:
            return suite
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    out: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and all(e is not x for x in out):
        out.append(e)
        e = e.__cause__ or e.__context__
    return out


def user_code_error(exc: BaseException) -> str | None:
    """'suite file F: function `f` (line N) raised T: message' when the innermost frame of
    suite code in ``exc``'s traceback (or its causes) lies in a loaded suite, else None."""
    for e in _chain(exc):
        frames = [f for f in traceback.extract_tb(e.__traceback__) if _suite_of(f.filename)]
        if frames:
            f = frames[-1]
            message = str(e).strip().splitlines()
            return (
                f"suite file {_suite_of(f.filename)}: function `{f.name}` (line {f.lineno}) "
                f"raised {type(e).__name__}: {message[0] if message else ''}"
            )
    return None


def one_line(exc: BaseException, where: Path | None = None) -> str | None:
    """The one line a user sees for ``exc``, or None when it is a bug (keep the traceback)."""
    if disk_full(exc, where):
        if isinstance(exc, DiskFull):
            return str(exc)
        target = f" under {where}" if where is not None else ""
        return f"the disk is full{target}: free space and run the command again"
    return user_code_error(exc)
