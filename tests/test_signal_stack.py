"""The thread's signal alternate stack stays mapped after OpenVINO compiles and runs an artifact.

OpenVINO's CPU plugin installs its own alternate stack when a Core creates it and unmaps it when
that Core is destroyed, without restoring the previous one; the next signal handled on it (a
child's SIGCHLD once torch's DataLoader installed its handler) killed the test process with a
SIGSEGV at an unrelated test.  ``backends.openvino_backend.core()`` keeps one Core alive."""

from __future__ import annotations

import ctypes
import gc
from pathlib import Path

import pytest

import petra_hw

FAST = Path(__file__).parent / "data" / "cpu-fast.toml"


class _Stack(ctypes.Structure):
    _fields_ = [
        ("ss_sp", ctypes.c_void_p),
        ("ss_flags", ctypes.c_int),
        ("ss_size", ctypes.c_size_t),
    ]


def _alternate_stack_is_usable() -> bool:
    stack = _Stack()
    assert ctypes.CDLL("libc.so.6").sigaltstack(None, ctypes.byref(stack)) == 0
    if stack.ss_flags & 2 or not stack.ss_sp:  # SS_DISABLE: signals run on the normal stack
        return True
    for line in Path("/proc/self/maps").read_text().splitlines():
        start, end = (int(x, 16) for x in line.split()[0].split("-"))
        if start <= stack.ss_sp and stack.ss_sp + stack.ss_size <= end:
            return True
    return False


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="Linux only")
def test_openvino_leaves_a_mapped_alternate_stack(digits, tmp_path) -> None:
    """A tune uses OpenVINO in this process (the nncf-default peers, the final re-measure)."""
    pytest.importorskip("openvino")
    run = petra_hw.tune("digits", device=FAST, out=tmp_path, evaluations=1, population=1)
    assert any(e.backend == "openvino" and e.ok for e in run.references)
    del run
    gc.collect()
    assert _alternate_stack_is_usable()
