"""Writing files so that a crash or a full disk leaves either the old file or the new one, never a
half-written one or a stray ``*.tmp``; and telling a full disk apart from every other failure."""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path

from petra_hw.errors import DiskFull

_FULL = (errno.ENOSPC, errno.EDQUOT)
_NEARLY_FULL_BYTES = 1 << 20  # below this a failed write is taken as a full disk


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to a temporary beside ``path``, fsync, rename over it; clean up on failure."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def disk_full(exc: BaseException, where: Path | None = None) -> bool:
    """Whether ``exc`` (or an exception it was raised from) is a full disk or quota.

    Some writers (protobuf, SQLite) report a full disk without ``ENOSPC``; when ``where`` is
    given, a failure while its file system has (almost) no free space counts as one too.
    """
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, DiskFull) or (isinstance(e, OSError) and e.errno in _FULL):
            return True
        if "database or disk is full" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return where is not None and free_bytes(where) < _NEARLY_FULL_BYTES


def free_bytes(where: Path) -> int:
    """Free bytes on the file system holding ``where`` (or its nearest existing parent)."""
    path = Path(where).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return 1 << 62
