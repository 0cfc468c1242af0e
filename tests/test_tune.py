"""``petra-hw tune`` end to end on digits: exit codes, a kill -9 and resume, injected faults."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from petra_hw.cli import main
from petra_hw.search.store import JOURNAL_NAME, Store

FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()


@pytest.fixture(scope="module")
def fast_profile(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("profile") / "fast.toml"
    path.write_text(FAST_PROFILE)
    return str(path)


def _rows(journal: Path) -> dict[str, float]:
    """candidate id -> commit time, read as a report would, while the run may be writing."""
    if not journal.exists():
        return {}
    conn = sqlite3.connect(journal, timeout=30)
    try:
        return dict(conn.execute("SELECT candidate_id, created FROM evaluations").fetchall())
    except sqlite3.OperationalError:  # schema not created yet
        return {}
    finally:
        conn.close()


@pytest.mark.parametrize(
    "argv",
    [
        ["tune", "--budget", "ten minutes"],
        ["tune", "--budget", "0s"],
        ["tune", "--device", "rtx6000ada", "--evaluations", "1"],  # no such GPU here
        ["tune", "--resume", "no-such-run"],
        ["tune", "--stagnation", "0"],
        ["tune", "--objectives", "latency_ms,size_bytes", "--evaluations", "1"],  # no quality
        ["tune", "--objectives", "quality,speed", "--evaluations", "1"],
        ["tune", "--target-quality-drop", "-0.1", "--evaluations", "1"],
    ],
)
def test_bad_input_exits_2(argv, tmp_path, capsys) -> None:
    assert main([*argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("petra-hw: error:")


def test_resume_after_kill_reevaluates_nothing(digits, fast_profile, tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    argv = ["tune", "--suite", "digits", "--device", fast_profile, "--evaluations", "4"]
    argv += ["--population", "2", "--no-references", "--out", str(out)]
    cmd = [sys.executable, "-m", "petra_hw.cli", *argv]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        before: dict[str, float] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            journals = list(out.glob(f"*/{JOURNAL_NAME}"))
            before = _rows(journals[0]) if journals else {}
            if len(before) >= 2:  # the Original and at least one candidate
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    [run_dir] = [p.parent for p in out.glob(f"*/{JOURNAL_NAME}")]
    before = _rows(run_dir / JOURNAL_NAME)  # the kill may have landed after one more commit
    assert len(before) >= 2

    assert main(["tune", "--resume", run_dir.name, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "Pareto front" in printed and str(run_dir) in printed

    after = _rows(run_dir / JOURNAL_NAME)
    assert {k: after[k] for k in before} == before  # journaled rows untouched
    # candidates (a low rung is id@f, possibly cut there; a backend variant is id.backend)
    hashes = {k.split("@")[0] for k in after}
    assert len({h for h in hashes if "." not in h}) == 1 + 4
    with Store(run_dir / JOURNAL_NAME) as store:
        record = store.get_run(run_dir.name)
        assert record.status == "finished"
        resumed = record.stats["sessions"][-1]
        assert len(record.stats["sessions"]) == 2
        assert resumed["evaluated"] == len(after) - len(before)  # nothing evaluated twice
        assert store.load_state(run_dir.name) is not None
        assert store.hypervolume(run_dir.name)


def test_injected_faults_are_recorded_and_the_search_completes(
    digits, fast_profile, tmp_path, monkeypatch, capsys
) -> None:
    monkeypatch.setenv("PETRA_HW_FAULT", "export@PTQ")
    out = tmp_path / "runs"
    argv = ["tune", "--suite", "digits", "--device", fast_profile, "--evaluations", "2"]
    argv += ["--population", "2", "--no-references"]
    assert main([*argv, "--out", str(out)]) == 0  # evolution seeds first: PTQ, then Pr - Tr - PTQ
    assert "compile: InjectedFault" in capsys.readouterr().out
    [journal] = out.glob(f"*/{JOURNAL_NAME}")
    with Store(journal) as store:
        [run] = store.runs()
        evs = store.evaluations(run.id)
        assert run.status == "finished" and run.stats["errors"].get("compile", 0) >= 1
    by_text = {str(e.candidate.pipeline): e for e in evs}
    assert by_text["Original"].ok
    assert by_text["PTQ"].error_kind == "compile" and "export" in by_text["PTQ"].error
    assert not any(e.candidate.variant for e in evs)  # a failed candidate gets no variants


def test_a_met_target_stops_the_run(digits, fast_profile, tmp_path, capsys) -> None:
    out = tmp_path / "runs"
    argv = ["tune", "--suite", "digits", "--device", fast_profile, "--evaluations", "8"]
    argv += ["--population", "2", "--no-references", "--no-variants"]
    argv += ["--target-size-mb", "1000", "--target-quality-drop", "0.5", "--stagnation", "3"]
    assert main([*argv, "--out", str(out)]) == 0
    assert "target met" in capsys.readouterr().out
    [journal] = out.glob(f"*/{JOURNAL_NAME}")
    with Store(journal) as store:
        [run] = store.runs()
        assert run.stats["stop_reason"].startswith("target met by ")
        # full-fidelity candidates (a promoted seed also has its reduced-rung row)
        rows = store.evaluations(run.id)
        candidates = [e for e in rows if not e.candidate.variant and e.full_fidelity]
        assert len(candidates) == 1 + 2  # the Original and one generation


def test_chosen_objectives_drive_the_run(digits, fast_profile, tmp_path) -> None:
    out = tmp_path / "runs"
    names = "quality,latency_ms,throughput_ips,complexity"
    argv = ["tune", "--suite", "digits", "--device", fast_profile, "--evaluations", "2"]
    argv += ["--population", "2", "--no-references", "--no-variants"]
    assert main([*argv, "--objectives", names, "--out", str(out)]) == 0
    [journal] = out.glob(f"*/{JOURNAL_NAME}")
    with Store(journal) as store:
        [run] = store.runs()
        assert tuple(run.settings["objectives"]) == tuple(names.split(","))
        assert store.hypervolume(run.id)  # one value per generation, over these objectives
    assert main([*argv, "--objectives", "quality,energy_j", "--out", str(out)]) == 2  # no NVML
