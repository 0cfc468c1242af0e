"""The run journal: a real SQLite file, round trips, and durability under ``kill -9``."""

from __future__ import annotations

import math
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from petra_hw.errors import UserError
from petra_hw.pipeline import Pipeline
from petra_hw.search.store import Store
from petra_hw.search.types import Candidate, Evaluation


def _ok(text: str, generation: int = 0, latency: float = 1.0) -> Evaluation:
    return Evaluation(
        Candidate(Pipeline.parse(text), generation, "abc", "tweak"),
        objectives={"quality_val": 0.9, "latency_ms": latency, "size_bytes": 1e5},
        quality={"val": 0.9, "test": 0.88},
        measurement={"latency": {"samples_ms": [1.0, 1.1]}},
        artifact="/tmp/x",
        precision="int8-static",
        backend="onnxruntime",
        timings_s={"apply_s": 1.5},
        cache_hit_steps=1,
    )


def _make_run(store: Store, run_id: str = "r1") -> str:
    return store.create_run(
        run_id,
        suite="digits",
        profile="cpu",
        strategy="evolution",
        seed=3,
        settings={"population": 4},
        fingerprint={"cpu_model": "test"},
    )


def test_round_trip(tmp_path) -> None:
    with Store(tmp_path / "journal.sqlite") as store:
        run = _make_run(store)
        with pytest.raises(UserError):
            _make_run(store)
        evs = [
            _ok("LR - PTQ"),
            Evaluation(
                Candidate(Pipeline.parse("Pr")), error="boom", error_kind="step", feasible=False
            ),
            _ok("Pr - Tr", generation=1, latency=float("nan")),
        ]
        for ev in evs:
            assert store.add_evaluation(run, ev)
        assert not store.add_evaluation(run, evs[0])  # a candidate is journaled once
        back = store.evaluations(run)
        assert back[:2] == evs[:2]
        assert (
            math.isnan(back[2].objectives["latency_ms"]) and back[2].candidate == evs[2].candidate
        )
        assert store.evaluated_ids(run) == {e.candidate.id for e in evs}

        assert store.load_state(run) is None
        store.save_state(run, 0, {"rng": [1, 2], "pending": ["a"]})
        store.save_state(run, 1, {"rng": [3]})
        store.save_state(run, 1, {"rng": [4]})
        assert store.load_state(run) == (1, {"rng": [4]})

        store.add_hypervolume(run, evaluations=3, generation=1, value=0.25, elapsed_s=2.0)
        store.add_hypervolume(run, evaluations=6, generation=2, value=0.5, elapsed_s=4.0)
        assert [p.value for p in store.hypervolume(run)] == [0.25, 0.5]

        store.set_status(run, "finished")
        store.update_stats(run, elapsed_s=4.0)
        store.update_stats(run, errors={"step": 1})
        record = store.get_run(run)
        assert (record.status, record.seed, record.settings) == ("finished", 3, {"population": 4})
        assert record.stats == {"elapsed_s": 4.0, "errors": {"step": 1}}
        assert [r.id for r in store.runs()] == [run]
        with pytest.raises(UserError):
            store.get_run("nope")

    # indexed columns are queryable without the JSON; NaN becomes NULL
    conn = sqlite3.connect(tmp_path / "journal.sqlite")
    rows = conn.execute(
        "SELECT pipeline, error_kind, latency_ms FROM evaluations ORDER BY seq"
    ).fetchall()
    assert rows == [("LR - PTQ", None, 1.0), ("Pr", "step", None), ("Pr - Tr", None, None)]
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_journaled_evaluation_survives_kill_9(tmp_path) -> None:
    """A writer SIGKILLed right after add_evaluation returns loses nothing."""
    path = tmp_path / "journal.sqlite"
    script = textwrap.dedent(
        f"""
        import sys, time
        from petra_hw.pipeline import Pipeline
        from petra_hw.search.store import Store
        from petra_hw.search.types import Candidate, Evaluation
        store = Store({str(path)!r})
        store.create_run("r", suite="s", profile="p", strategy="random", seed=0, settings={{}},
                         fingerprint={{}})
        for text in ("LR", "Pr", "PTQ"):
            store.add_evaluation("r", Evaluation(Candidate(Pipeline.parse(text)),
                                                 objectives={{"latency_ms": 1.0}}))
        print("journaled", flush=True)
        time.sleep(120)
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "journaled"
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    with Store(path) as store:
        assert [str(e.candidate.pipeline) for e in store.evaluations("r")] == ["LR", "Pr", "PTQ"]
        assert store.get_run("r").status == "running"
