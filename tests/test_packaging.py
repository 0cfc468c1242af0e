"""Packaging: exactly one ONNX Runtime per install, the README's commands and CI in step, and the
start-up check that names the fix for a broken ONNX Runtime install."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from backends import onnxruntime_backend as ortb

ROOT = Path(__file__).resolve().parents[1]
ORT_DISTS = {"onnxruntime", "onnxruntime-gpu"}


def _project() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _names(requirements: list[str]) -> set[str]:
    return {Requirement(r).name.lower() for r in requirements}


def test_core_dependencies_hold_no_onnx_runtime() -> None:
    assert not _names(_project()["dependencies"]) & ORT_DISTS


def test_each_extra_installs_at_most_one_onnx_runtime() -> None:
    extras = _project()["optional-dependencies"]
    assert _names(extras["cpu"]) & ORT_DISTS == {"onnxruntime"}
    assert _names(extras["gpu"]) & ORT_DISTS == {"onnxruntime-gpu"}
    for name, reqs in extras.items():
        assert len(_names(reqs) & ORT_DISTS) <= 1, name
    for name in set(extras) - {"cpu", "gpu"}:  # dev, ray: combined with either one
        assert not _names(extras[name]) & ORT_DISTS, name
    versions = {str(Requirement(r).specifier) for r in extras["cpu"] + extras["gpu"]}
    assert len(versions) == 1  # the same ONNX Runtime release on CPU and GPU


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(r"^python3 -m venv .*$", text, flags=re.M)


def test_readme_commands_name_the_cpu_extra() -> None:
    run, test = _readme_commands()[:2]
    assert '.venv/bin/pip install -e ".[cpu]"' in run and run.endswith("petra-hw tune")
    assert '.venv/bin/pip install -q -e ".[cpu,dev,ray]"' in test and test.endswith("pytest")


def test_ci_runs_the_readme_test_command_byte_for_byte() -> None:
    test = _readme_commands()[1]
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert test in ci
    assert (ROOT / "tox.ini").read_text().count("extras = cpu,dev,ray") == 1


def test_install_check_is_silent_on_a_cpu_host_with_the_cpu_build() -> None:
    assert ortb.install_problem(gpu_host=False) is None


def test_install_check_names_the_fix_for_the_cpu_build_on_a_gpu_host() -> None:
    import onnxruntime as ort

    if ortb.CUDA in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    problem = ortb.install_problem(gpu_host=True)
    assert problem and ortb.GPU_FIX in problem and "no CUDAExecutionProvider" in problem


def test_install_check_without_any_onnx_runtime(monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import raises ImportError
    problem = ortb.install_problem(gpu_host=False)
    assert (
        problem and problem.startswith("no ONNX Runtime is installed") and ortb.CPU_FIX in problem
    )
    from petra_hw.profiles import load_profile

    assert ortb.OnnxRuntimeBackend().available(load_profile("cpu")) == problem


def test_start_up_check_on_a_gpu_host_names_the_fix(monkeypatch, capsys) -> None:
    """A host whose NVML reports an A100 but whose ONNX Runtime is the CPU build (this one)."""
    import onnxruntime as ort

    import petra_hw.profiles as profiles
    from petra_hw.cli import main
    from petra_hw.commands.common import runtime_notes

    if ortb.CUDA in ort.get_available_providers():
        pytest.skip("this ONNX Runtime has the CUDA provider")
    monkeypatch.setattr(profiles, "gpu_names", lambda: ["NVIDIA A100-SXM4-80GB"])
    (note,) = runtime_notes(profiles.load_profile("nvidia-gpu"))
    assert note.startswith("onnxruntime: this host has an NVIDIA GPU") and ortb.GPU_FIX in note
    assert runtime_notes(profiles.load_profile("cpu")) == []  # the CPU build is right for it
    assert main(["devices"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--device auto = nvidia-gpu" in out
    assert "note: --device auto picked profile nvidia-gpu" in out and "A100-SXM4-80GB" in out
    assert "onnxruntime: this host has an NVIDIA GPU" in out and ortb.GPU_FIX in out
