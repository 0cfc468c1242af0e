"""Issue 16, Why 3 and the tune half of Why 2: environment failures are ``infra`` errors that stop
the run cleanly and are retried on resume; timeouts count only a candidate's own compute."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import torch
from fulldisk import full_disk

from petra_hw.cli import main
from petra_hw.pipeline import Pipeline
from petra_hw.search import evaluator
from petra_hw.search.evaluator import EvalContext
from petra_hw.search.executors import LocalExecutor
from petra_hw.search.store import JOURNAL_NAME
from petra_hw.search.types import Candidate

FAST = Path(__file__).parent / "data" / "cpu-fast.toml"


def _run_dir(out: Path) -> Path:
    (run,) = [p for p in out.iterdir() if (p / JOURNAL_NAME).exists()]
    return run


def _journal(run: Path) -> tuple[str, dict[str, str | None]]:
    conn = sqlite3.connect(run / JOURNAL_NAME)
    try:
        status = conn.execute("SELECT status FROM runs").fetchone()[0]
        kinds = dict(conn.execute("SELECT pipeline, error_kind FROM evaluations").fetchall())
    finally:
        conn.close()
    return status, kinds


def _tune(out: Path) -> list[str]:
    return [
        "tune",
        "--suite",
        "digits",
        "--device",
        str(FAST),
        "--evaluations",
        "1",
        "--population",
        "1",
        "--no-references",
        "--out",
        str(out),
    ]  # fmt: skip (evolution asks "LR" first)


def test_disk_full_in_a_candidate_is_infra_stops_the_run_and_is_retried(
    digits, tmp_path, monkeypatch, capsys
):
    """A full disk while a candidate is evaluated (``PETRA_HW_FAULT=diskfull``: ENOSPC raised where
    ``torch.save`` would raise it) is journaled as ``infra``, never as the candidate's fitness."""
    out = tmp_path / "runs"
    monkeypatch.setenv("PETRA_HW_FAULT", "diskfull")
    assert main(_tune(out)) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is full" in err[0] and "--resume" in err[0], err
    run = _run_dir(out)
    status, kinds = _journal(run)
    assert status == "interrupted"
    assert kinds.pop("Original") is None and list(kinds.values()) == ["infra"]
    monkeypatch.delenv("PETRA_HW_FAULT")
    assert main(["tune", "--resume", str(run)]) == 0, capsys.readouterr().err
    status, kinds = _journal(run)
    assert status == "finished" and "infra" not in kinds.values()


def test_real_full_disk_under_tune_interrupts_then_resumes(digits, tmp_path, capsys):
    with full_disk(tmp_path, 600) as mount:
        assert main(_tune(mount / "runs")) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "is full" in err[0] and "--resume" in err[0], err
        run = _run_dir(mount / "runs")
        assert _journal(run)[0] == "interrupted"
        (mount / "filler").unlink()
        assert main(["tune", "--resume", str(run)]) == 0, capsys.readouterr().err
        assert _journal(run)[0] == "finished"


def test_waiting_for_the_machine_lock_does_not_count_towards_the_timeout(
    digits, tmp_path, monkeypatch
):
    """Another job holds the machine-wide lock longer than the timeout: the candidate waits, then
    finishes (before the fix it timed out and the run could never be resumed)."""
    lock = tmp_path / "locks" / "petra-hw-measure.lock"
    monkeypatch.setenv("PETRA_HW_LOCK", str(lock))  # the spawned worker's locks: ours only
    monkeypatch.setattr(evaluator, "COMPUTE_LOCK", lock.with_name("petra-hw-compute.lock"))
    monkeypatch.setattr(evaluator, "GATE_LOCK", lock.with_name("petra-hw-gate.lock"))
    (tmp_path / "fast.toml").write_text(FAST.read_text())
    torch.save(digits.model.state_dict(), tmp_path / "baseline.pt")
    context = EvalContext("digits", str(tmp_path / "fast.toml"), tmp_path, tmp_path / "baseline.pt")
    timeout, held = 20.0, 30.0
    with LocalExecutor(context, workers=1, timeout_s=timeout) as executor:
        started = time.monotonic()
        results = executor.submit([Candidate(Pipeline.make())])
        with evaluator.measuring():  # the other job: holds the lock the candidate needs
            first = None
            # submit is a generator: drive it in the background while we hold the lock
            import threading

            box: list = []
            thread = threading.Thread(target=lambda: box.append(next(results)))
            thread.start()
            time.sleep(held)
            first = box[0] if box else None
        thread.join(timeout=300)
    assert first is None  # nothing finished while the lock was held
    ev = box[0]
    assert ev.ok, f"{ev.error_kind}: {ev.error}"
    assert time.monotonic() - started > held > timeout
