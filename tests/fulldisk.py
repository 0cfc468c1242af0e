"""A real full disk for tests: a small tmpfs filled to leave a chosen number of KiB free."""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def full_disk(tmp_path: Path, free_kb: int) -> Iterator[Path]:
    """A 4 MiB tmpfs with about ``free_kb`` left, its filler at ``filler`` (skips where mounting
    is not allowed, e.g. without root)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:  # fmt: skip
        pytest.skip("cannot mount a tmpfs here")
    try:
        free = os.statvfs(mount).f_bavail * os.statvfs(mount).f_frsize
        (mount / "filler").write_bytes(b"\0" * (free - free_kb * 1024))
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
