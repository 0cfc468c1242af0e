"""NNCF's C++ quantize extension: built once, at a moment petra-hw controls, or not at all.

NNCF compiles its CPU extension (``quantized_functions_cpu``) on the first fake-quantized forward,
inside whatever process gets there first, with a 60 s timeout, in torch's shared extension folder.
On a busy host the build times out, its compiler processes outlive the run, and the lock file
they leave makes every later QAT hang.  Here the first QAT of a process calls ``prepare()``:

* under an exclusive file lock of its own (so one process builds; the others wait, then load),
* in a child process of its own session with a generous timeout (``PETRA_HW_NNCF_BUILD_TIMEOUT``,
  default 900 s); on timeout the whole process group (ninja, c++) is killed, so no compiler
  outlives it,
* into ``$PETRA_HW_CACHE/torch_extensions`` (``TORCH_EXTENSIONS_DIR``), where a stale torch
  lock file is removed first (holding our lock proves nobody else is building).

When the build fails or times out (no C++ compiler, for example) NNCF's pure-torch reference
quantize functions are used instead; the failure is remembered in the cache folder so that later
processes do not retry it until the cache is cleared.  ``used()`` says which implementation this
process uses, and the evaluation and the artifact's manifest record it.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)

TIMEOUT_ENV = "PETRA_HW_NNCF_BUILD_TIMEOUT"
DEFAULT_TIMEOUT_S = 900.0
EXTENSION, REFERENCE = "extension", "reference"
_NAME = "quantized_functions_cpu"
_BUILD = (
    "from nncf.torch.quantization.extensions import QuantizedFunctionsCPULoader as L\n"
    "from nncf.torch.quantization.reference import ReferenceQuantizedFunctions as R\n"
    "import sys\n"
    "sys.exit(1 if L.load() is R else 0)\n"
)

_used: str | None = None


class ExtensionBuildError(RuntimeError):
    """The extension build could not even be attempted (cache folder unwritable): infra."""


def _cache() -> Path:
    from petra_hw.baseline import cache_dir

    return cache_dir() / "torch_extensions"


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        from petra_hw.errors import UserError

        raise UserError(f"{TIMEOUT_ENV}={raw!r}: give seconds as a number") from None


def used() -> str | None:
    """``extension`` or ``reference`` once a QAT of this process prepared NNCF, else None."""
    return _used


def _kill_session(sid: int) -> None:
    """SIGKILL every process of session ``sid``: ninja puts each compiler in a process group of
    its own, so killing the builder's group alone would leave them running."""
    import psutil

    for p in psutil.process_iter():
        try:
            if os.getsid(p.pid) == sid:
                p.send_signal(signal.SIGKILL)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue


def _build(root: Path, failed: Path) -> bool:
    """Build the extension in a child session; kill the whole group on timeout."""
    import torch

    build_dir = root / "nncf" / _NAME / torch.__version__
    (build_dir / "lock").unlink(missing_ok=True)  # stale: we hold the only build lock
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(root), "NNCF_EXTENSION_LOAD_TIMEOUT": "0"}
    timeout = _timeout_s()
    proc = subprocess.Popen(
        [sys.executable, "-c", _BUILD],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _, err = proc.communicate(timeout=timeout)
        reason = (err or "").strip().splitlines()[-1:] or [f"exit code {proc.returncode}"]
        ok = proc.returncode == 0
    except subprocess.TimeoutExpired:
        ok, reason = False, [f"build timed out after {timeout:g} s ({TIMEOUT_ENV})"]
    finally:
        _kill_session(proc.pid)  # compilers the build left running, if any
        proc.wait()
    if not ok:
        (build_dir / "lock").unlink(missing_ok=True)
        failed.write_text(json.dumps({"reason": reason[0], "torch": torch.__version__}))
        log.warning("NNCF extension not built (%s): using NNCF's reference functions", reason[0])
    return ok


def prepare() -> str:
    """Make NNCF use its built extension or its reference functions; returns which."""
    global _used
    if _used is not None:
        return _used
    import torch
    from nncf.torch.quantization import extensions
    from nncf.torch.quantization.reference import ReferenceQuantizedFunctions

    root = _cache()
    os.environ["TORCH_EXTENSIONS_DIR"] = str(root)  # where NNCF's loader looks, this process
    os.environ.setdefault("NNCF_EXTENSION_LOAD_TIMEOUT", str(int(_timeout_s())))
    failed = root / f"{_NAME}.failed.json"
    try:
        root.mkdir(parents=True, exist_ok=True)
        lock = open(root / "petra-hw-build.lock", "a+")  # noqa: SIM115 - closed below
    except OSError as exc:
        raise ExtensionBuildError(f"cannot use the extension cache {root}: {exc}") from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one builder per machine; the others wait here
        library = root / "nncf" / _NAME / torch.__version__ / f"{_NAME}.so"
        built = not failed.exists() and (library.is_file() or _build(root, failed))
        namespace = extensions.QuantizedFunctionsCPU
        if built:
            namespace.get("Quantize_forward")  # loads the built library (NNCF falls back itself)
        else:
            # NNCF's own fallback object, set where NNCF's lazy loader keeps what it loaded
            namespace._loaded_namespace = ReferenceQuantizedFunctions
    _used = REFERENCE if namespace._loaded_namespace is ReferenceQuantizedFunctions else EXTENSION
    return _used
