"""scripts/gpu-check's plumbing on a host without a GPU: the wheels folder, the probe, the plan,
the JSON it writes, and how it reads a real ``petra-hw profile`` result."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from petra_hw.profiles import gpu_names

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu-check"
no_gpu = pytest.mark.skipif(bool(gpu_names()), reason="this host has an NVIDIA GPU")


def _script():
    """The script as a module (it has no .py suffix)."""
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def _wheel(folder: Path, dist: str, module: str) -> Path:
    """A real (tiny, pure-Python) wheel: the module plus its dist-info."""
    path = folder / f"{dist}-1.0-py3-none-any.whl"
    info = f"{dist}-1.0.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{module}/__init__.py", "VALUE = 42\n")
        z.writestr(f"{info}/METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
        z.writestr(
            f"{info}/WHEEL", "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        )
        z.writestr(f"{info}/RECORD", "")
    return path


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300
    )


def test_dry_run_sets_up_and_plans_every_phase(tmp_path) -> None:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "petra_probe_pkg", "petra_probe_pkg")
    _wheel(wheels, "rich", "rich")  # the host has rich: left packed, the host's one is used
    out, work = tmp_path / "out", tmp_path / "work"
    done = _run(str(out), "--dry-run", "--wheels", str(wheels), "--work", str(work))
    assert done.returncode == 0, done.stderr
    result = json.loads((out / "gpu-check.json").read_text())
    assert result["schema"] == "petra-hw gpu-check 1" and result["mode"] == "dry-run"
    assert result["environment"]["wheels"]["unpacked"] == ["petra_probe_pkg-1.0-py3-none-any.whl"]
    assert result["environment"]["wheels"]["host_has"] == ["rich-1.0-py3-none-any.whl"]
    assert (
        result["environment"]["work"] == str(work.resolve())
        and not (work / "site" / "rich").exists()
    )
    env = {**os.environ, "PYTHONPATH": str(work / "site")}
    check = [sys.executable, "-c", "import petra_probe_pkg; print(petra_probe_pkg.VALUE)"]
    assert subprocess.run(check, env=env, capture_output=True, text=True).stdout.strip() == "42"
    versions = result["versions"]
    assert versions["torch"] and versions["onnxruntime"] and versions["python"]
    phases = result["phases"]
    assert set(phases) == {"tests", "profile", "graphs", "tune"}
    assert all(p["status"] == "planned" for p in phases.values())
    assert "gpu" in phases["tests"]["command"][phases["tests"]["command"].index("-m", 3) + 1]
    profile = phases["profile"]["command"]
    assert profile[2:6] == ["petra_hw.cli", "profile", "--suite", "cifar10-resnet18"]
    assert profile[profile.index("--device") + 1] == "auto"
    tune = phases["tune"]["command"]
    assert tune[tune.index("--budget") + 1] == "180s" and "auto" in tune
    graphs_toml = Path(
        phases["graphs"]["command"][phases["graphs"]["command"].index("--device") + 1]
    )
    assert re.search(r"^\[torch\]\ncuda_graphs = true$", graphs_toml.read_text(), flags=re.M)
    if "tensorrt" not in versions:
        assert any("TensorRT" in s["what"] and s["reason"] for s in result["skipped"])


@no_gpu
def test_without_a_gpu_it_writes_the_json_and_exits_cleanly(tmp_path) -> None:
    done = _run(str(tmp_path / "out"), "--work", str(tmp_path / "work"))
    assert done.returncode == 0, done.stderr
    result = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert result["mode"] == "no-gpu" and result["phases"] == {} and result["backends"] == []
    assert {s["what"] for s in result["skipped"]} == {"tests", "profile", "graphs", "tune"}
    assert all(s["reason"].startswith("no NVIDIA GPU") for s in result["skipped"])
    assert result["device"]["auto_profile"] and result["versions"]["petra_hw_commit"]


def test_missing_out_folder_is_one_usage_error() -> None:
    done = _run()
    assert done.returncode == 2 and "give OUT" in done.stderr


def test_requirements_come_from_pyproject() -> None:
    import tomllib

    deps = _run("--requirements", "deps").stdout.split()
    no_deps = _run("--requirements", "no-deps").stdout.split()
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    pruning = next(p for p in pins if p.startswith("torch-pruning"))
    assert no_deps == [pruning]  # requires torch itself: downloaded without dependencies
    assert (
        "rich>=13" in deps and "pymoo==0.6.2" in deps and any(d.startswith("pytest") for d in deps)
    )
    names = {re.split(r"[<>=]", d)[0] for d in deps}
    assert not names & {"torch", "torchvision", "onnx", "onnxruntime", "nncf", "openvino"}


def test_results_are_read_from_a_real_profile_run(tmp_path) -> None:
    """The rows of gpu-check.json come from ``petra-hw profile --json``, run here on digits."""
    profile_json = tmp_path / "profile.json"
    fast = ROOT / "tests" / "data" / "cpu-fast.toml"
    cli = [sys.executable, "-m", "petra_hw.cli", "profile", "--suite", "digits", "--device"]
    cli += [str(fast), "--backend", "onnxruntime", "--precision", "fp32", "--json"]
    cli += [str(profile_json), "--out", str(tmp_path / "profile")]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    gpu_check = _script()
    check = gpu_check.Check(gpu_check.parse_args([str(tmp_path), "--work", str(tmp_path)]))
    (row,) = gpu_check.backend_rows(check)
    assert (row["backend"], row["precision"], row["cuda_graphs"]) == ("onnxruntime", "fp32", False)
    assert row["latency_ms"]["p50_ms"] > 0 and row["throughput"][0]["throughput_ips"] > 0
    assert row["energy_j_per_inference"] is None and row["quality_test"] > 0.5


@pytest.mark.slow
def test_tune_summary_is_read_from_a_real_run(tmp_path) -> None:
    """The tune part of gpu-check.json comes from the run's report, here a one-candidate tune."""
    fast = ROOT / "tests" / "data" / "cpu-fast.toml"
    cli = [sys.executable, "-m", "petra_hw.cli", "tune", "--suite", "digits", "--device", str(fast)]
    cli += ["--evaluations", "1", "--no-references", "--out", str(tmp_path / "runs")]
    done = subprocess.run(cli, capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    gpu_check = _script()
    args = gpu_check.parse_args([str(tmp_path / "out"), "--work", str(tmp_path)])
    (tmp_path / "out").mkdir()
    summary = gpu_check.tune_summary(gpu_check.Check(args))
    assert (tmp_path / "out" / "tune-report.json").is_file()
    assert summary["profile"] == "cpu-fast" and summary["evaluations"] >= 2
    assert summary["ok"] + len(summary["errors_by_kind"]) >= 1 and summary["front"]
    assert all(f["backend"] and f["objectives"] for f in summary["front"])
