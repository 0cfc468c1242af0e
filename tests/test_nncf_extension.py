"""Issue 16, Why 5: NNCF's C++ extension is built under petra-hw's control, or NNCF's pure-torch
reference functions are used; which one is recorded, and no compiler outlives the build."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import psutil

FAST = Path(__file__).parent / "data" / "cpu-fast.toml"
PROBE = (
    "from petra_hw import nncf_extension as n; print('USED=' + n.prepare());"
    "import torch; from nncf.torch.quantization.quantize_functions import symmetric_quantize;"
    "x = torch.randn(8, requires_grad=True);"
    "symmetric_quantize(x, 256, -128, 127, torch.tensor(1.0), 1e-16).sum().backward()"
)


def _leftovers(cache: Path) -> list[str]:
    """Processes (ninja, c++, cc1plus) still working on this cache folder."""
    found = []
    for p in psutil.process_iter(["cmdline", "cwd"]):
        text = " ".join(p.info["cmdline"] or []) + " " + str(p.info["cwd"] or "")
        if str(cache) in text:
            found.append(text)
    return found


def _used(stdout: str) -> str:
    return next(line[5:] for line in stdout.splitlines() if line.startswith("USED="))


def _env(cache: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "PETRA_HW_CACHE": str(cache), **extra}


def test_no_compiler_falls_back_to_reference_and_remembers(tmp_path):
    cache = tmp_path / "cache"
    env = _env(cache, CXX=str(tmp_path / "no-such-c++"))
    for _ in range(2):  # the second process does not try again
        proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True,
                              text=True, timeout=600)  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        assert _used(proc.stdout) == "reference"
    assert (cache / "torch_extensions" / "quantized_functions_cpu.failed.json").is_file()
    assert not _leftovers(cache)


def test_build_timeout_kills_the_compilers_and_leaves_no_stale_lock(tmp_path):
    cache = tmp_path / "cache"
    env = _env(cache, PETRA_HW_NNCF_BUILD_TIMEOUT="8")
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    used = _used(proc.stdout)
    assert used in ("extension", "reference")  # a fast machine may finish in 8 s
    assert not _leftovers(cache)
    assert not list((cache / "torch_extensions").rglob("lock"))


def test_qat_artifact_records_which_functions_were_used(digits, tmp_path):
    cache = tmp_path / "cache"
    out = tmp_path / "art"
    env = _env(cache, CXX=str(tmp_path / "no-such-c++"))
    proc = subprocess.run(
        [sys.executable, "-m", "petra_hw.cli", "compile", "--suite", "digits", "--pipeline",
         "QAT(epochs=1)", "--device", str(FAST), "--out", str(out)],
        env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["nncf"]["quantize_functions"] == "reference"
