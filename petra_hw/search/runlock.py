"""One process per run: the process that works on a run folder holds an exclusive lock on it.

``run.lock`` in the run folder is locked with ``flock`` (released by the kernel when the holder
exits, even by ``kill -9``, so a lock is never stale) and holds the holder's PID, so a second
``tune --resume`` of the same run is refused naming it.  The same file keeps a small reserve of
disk space that is released when the disk fills up, so the run can still be marked interrupted.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

from petra_hw.errors import UserError

LOCK_NAME = "run.lock"
RESERVE_BYTES = 256 << 10


class RunLock:
    """Exclusive, non-blocking hold on a run folder for this process's lifetime of the run."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self._file = open(self.path, "a+b")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.seek(0)
            holder = self._file.read(32).split(b"\0", 1)[0].decode(errors="replace").strip()
            self._file.close()
            raise UserError(
                f"run {run_dir} is in use by process {holder or '(unknown)'}; wait for it to "
                "finish or stop it, then --resume"
            ) from None
        self._file.truncate(0)
        self._file.write(f"{os.getpid()}\n".encode())
        self._file.flush()

    def reserve(self) -> None:
        """Set disk space aside (best effort) that ``release_reserve`` gives back."""
        try:
            os.posix_fallocate(self._file.fileno(), 0, RESERVE_BYTES)
        except OSError:
            pass

    def release_reserve(self) -> None:
        """Give the reserved space back (the disk is full: the final status must still fit)."""
        self._file.truncate(len(f"{os.getpid()}\n"))

    def release(self) -> None:
        if not self._file.closed:
            fcntl.flock(self._file, fcntl.LOCK_UN)
            self._file.close()
