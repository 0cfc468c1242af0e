"""Bad input: one line on stderr, exit code 2, no traceback."""

from __future__ import annotations

import subprocess
import sys

import pytest

from petra_hw.cli import main


def _run(args: list[str], capsys) -> tuple[int, str]:
    code = main(args)
    err = capsys.readouterr().err
    return code, err


@pytest.mark.parametrize(
    "args, needle",
    [
        (["profile", "--suite", "no-such-suite"], "unknown suite 'no-such-suite'"),
        (["profile", "--device", "tpu9"], "unknown device 'tpu9'"),
        (["profile", "--backend", "nope"], "backend 'nope' is not a backend"),
        (["profile", "--device", "rtx6000ada"], "needs a GPU"),
        (
            ["compile", "--pipeline", "LR - Foo", "--suite", "digits", "--device", "cpu"],
            "unknown step kind 'Foo'",
        ),
        (["compile", "--pipeline", "FP16", "--suite", "digits", "--device", "cpu"], "fp16"),
        (["nonsense-command"], "invalid choice"),
        (["profile", "/definitely/not/an/artifact"], "no manifest.json"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, needle, capsys) -> None:
    from petra_hw.profiles import gpu_names

    if "rtx6000ada" in args and gpu_names():
        pytest.skip("host has a GPU")
    code, err = _run(args, capsys)
    assert code == 2
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and needle.lower() in lines[0].lower(), err
    assert "Traceback" not in err


def test_malformed_profile_toml(tmp_path, capsys) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = = 1\n")
    code, err = _run(["profile", "--device", str(bad)], capsys)
    assert code == 2 and "malformed profile TOML" in err


def test_missing_data(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PETRA_DATA_DIR", str(tmp_path))
    code, err = _run(["profile", "--suite", "cifar10-resnet20", "--device", "cpu"], capsys)
    assert code == 2 and "CIFAR-10 not found" in err and "--data-dir" in err


def test_devices_and_suites_list(capsys) -> None:
    assert main(["devices"]) == 0
    out = capsys.readouterr().out
    assert "epyc9124" in out and "--device auto =" in out
    assert main(["suites"]) == 0
    assert "cifar10-resnet18" in capsys.readouterr().out


def test_console_script_entry_point() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "petra_hw.cli", "--version"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "petra-hw" in out.stdout


def test_profile_measures_a_suite_and_remeasures_its_artifact(tmp_path, capsys, digits) -> None:
    import json
    from pathlib import Path

    fast = Path(__file__).parent / "data" / "cpu-fast.toml"
    out, report = tmp_path / "art", tmp_path / "p.json"
    args = ["profile", "--suite", "digits", "--device", str(fast), "--backend", "onnxruntime"]
    assert main([*args, "--precision", "fp32", "--out", str(out), "--json", str(report)]) == 0
    data = json.loads(report.read_text())
    [row] = data["results"]
    assert row["backend"] == "onnxruntime"
    assert abs(row["quality_test"] - digits.metrics["test"]) <= 0.01  # FP32 through the artifact
    assert "onnxruntime" in capsys.readouterr().out
    assert main(["profile", str(out / "onnxruntime-fp32"), "--device", str(fast)]) == 0
    assert "fp32" in capsys.readouterr().out
