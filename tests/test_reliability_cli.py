"""Issue 16, Why 2 and Why 4: every bad input is one line and exit 2, with nothing left behind."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from fulldisk import full_disk

from petra_hw.cli import main
from petra_hw.search.store import JOURNAL_NAME, Store

FAST = Path(__file__).parent / "data" / "cpu-fast.toml"


def one_line(argv: list[str], capsys) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("petra-hw: error:"), err
    assert "Traceback" not in err[0]
    return err[0]


@pytest.fixture(scope="module")
def bad_suites(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("suites")
    (folder / "badsplits.py").write_text(
        textwrap.dedent("""
        import dataclasses
        from suites.digits.suite import SUITE as DIGITS

        def load_splits(ctx):
            raise ValueError("no data for you")

        SUITE = dataclasses.replace(DIGITS, name="badsplits", load_splits=load_splits)
    """)
    )
    (folder / "badforward.py").write_text(
        textwrap.dedent("""
        import dataclasses
        from suites.digits.suite import SUITE as DIGITS, DigitsCNN

        class Broken(DigitsCNN):
            def forward(self, x):
                raise RuntimeError("forward exploded")

        SUITE = dataclasses.replace(DIGITS, name="badforward", build_model=Broken)
    """)
    )
    return folder


@pytest.mark.parametrize(
    "suite, function", [("badsplits", "load_splits"), ("badforward", "forward")]
)
def test_user_code_error_names_file_and_function_and_leaves_no_out(
    bad_suites, tmp_path, capsys, suite, function
):
    out = tmp_path / "out"
    line = one_line(["compile", "--suite", str(bad_suites / f"{suite}.py"), "--pipeline", "PTQ",
                     "--device", str(FAST), "--out", str(out)], capsys)  # fmt: skip
    assert f"{suite}.py" in line and f"`{function}`" in line
    assert not out.exists()
    line = one_line(["tune", "--suite", str(bad_suites / f"{suite}.py"), "--device", str(FAST),
                     "--evaluations", "1", "--out", str(tmp_path / "runs")], capsys)  # fmt: skip
    assert f"{suite}.py" in line and f"`{function}`" in line


def test_users_empty_out_folder_is_kept_and_left_empty(bad_suites, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    one_line(["compile", "--suite", str(bad_suites / "badforward.py"), "--pipeline", "Tr",
              "--device", str(FAST), "--out", str(out)], capsys)  # fmt: skip
    assert out.is_dir() and not any(out.iterdir())


@pytest.mark.parametrize(
    "old, new, message",
    [
        ("max_cv = 10.0", 'max_cv = "high"', "'measurement.max_cv'"),
        ("min_iters = 5", 'min_iters = "thirty"', "'measurement.min_iters'"),
        ("batch_sizes = [1, 8]", "batch_sizes = [0, -4]", "'batch_sizes"),
        ("batch_sizes = [1, 8]", "batch_sizes = []", "'batch_sizes'"),
        ('backends = ["onnxruntime", "openvino", "torch"]', 'backends = "onnxruntime"',
         "'backends': 'onnxruntime' is not of type 'array'"),
        ("threads = 1", "threads = 1\nturbo = true", "unknown key 'turbo'"),
        ("max_cv = 10.0", "max_cv = nan", "'measurement.max_cv' must be a finite number"),
    ],
)  # fmt: skip
def test_profile_values_are_checked_before_any_work(tmp_path, capsys, old, new, message):
    text = FAST.read_text()
    assert old in text
    profile = tmp_path / "p.toml"
    profile.write_text(text.replace(old, new))
    out = tmp_path / "out"
    started = time.monotonic()
    line = one_line(["compile", "--suite", "digits", "--pipeline", "PTQ", "--device",
                     str(profile), "--out", str(out)], capsys)  # fmt: skip
    assert message in line and not out.exists()
    assert time.monotonic() - started < 10  # refused at load time, not after compiling


def test_resume_of_a_missing_run_names_each_place_looked_once(tmp_path, capsys):
    missing = tmp_path / "nothere"
    line = one_line(["tune", "--resume", str(missing), "--out", str(tmp_path)], capsys)
    assert line.count(str(missing)) == 2 and "neither" not in line  # the run's name, the path
    line = one_line(["tune", "--resume", "run-x", "--out", str(tmp_path)], capsys)
    assert f"neither run-x nor {tmp_path / 'run-x'} holds a journal.sqlite" in line


@pytest.mark.parametrize("text", ["Pr(ratio=nan)", "Pr(ratio=inf)", "Tr(epochs=1e400)"])
def test_non_finite_step_values_are_refused(tmp_path, capsys, text):
    line = one_line(["compile", "--suite", "digits", "--pipeline", text, "--device", str(FAST),
                     "--out", str(tmp_path / "o")], capsys)  # fmt: skip
    assert "finite" in line


@pytest.fixture
def real_run(tmp_path) -> Path:
    """A run folder with a valid journal (no evaluations) for the damage tests to spoil."""
    run = tmp_path / "runs" / "r1"
    run.mkdir(parents=True)
    with Store(run / JOURNAL_NAME) as store:
        store.create_run("r1", suite="digits", profile="cpu-fast", strategy="random", seed=0,
                         settings={"suite": "digits", "device": str(FAST)}, fingerprint={})  # fmt: skip
    return run


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
@pytest.mark.parametrize("command", ["resume", "report", "export"])
def test_damaged_journal_is_one_line(real_run, tmp_path, capsys, damage, command):
    journal = real_run / JOURNAL_NAME
    for side in ("-wal", "-shm"):
        Path(f"{journal}{side}").unlink(missing_ok=True)
    data = journal.read_bytes()
    journal.write_bytes(os.urandom(len(data)) if damage == "garbage" else data[: len(data) // 3])
    argv = {
        "resume": ["tune", "--resume", str(real_run)],
        "report": ["report", str(real_run), "--out", str(tmp_path / "rep")],
        "export": ["export", str(real_run), "--out", str(tmp_path / "exp")],
    }[command]
    assert "journal" in one_line(argv, capsys)
    assert not list(tmp_path.rglob("*.tmp"))


def test_second_resume_of_a_run_names_the_holder(real_run, capsys):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from petra_hw.search.runlock import RunLock; "
         "lock = RunLock(sys.argv[1]); print('locked', flush=True); time.sleep(120)", str(real_run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "locked"
        line = one_line(["tune", "--resume", str(real_run)], capsys)
        assert f"in use by process {holder.pid}" in line
    finally:
        holder.kill()
        holder.wait()


def test_full_disk_under_compile_is_one_line_and_leaves_nothing(digits, tmp_path, capsys):
    with full_disk(tmp_path, 40) as mount:
        out = mount / "artifact"
        line = one_line(["compile", "--suite", "digits", "--pipeline", "PTQ", "--device",
                         str(FAST), "--out", str(out)], capsys)  # fmt: skip
        assert "is full: free space" in line
        assert sorted(p.name for p in mount.iterdir()) == ["filler"]  # no out, no *.tmp
