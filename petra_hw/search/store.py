"""The run journal: runs, evaluations, strategy snapshots and hypervolume, in one SQLite file.

Every finished evaluation is committed in its own transaction the moment it arrives, so a run
killed at any instant (``kill -9``, OOM killer, power loss) keeps every evaluation that finished
and can be resumed without evaluating them again.  The file is in WAL mode (readers such as
reports never block the writer) with ``synchronous=FULL``: a commit returns only after the WAL is
fsynced.  NORMAL would already survive a killed process; FULL also survives an OS crash or power
loss, and its cost (one fsync, milliseconds) is nothing next to an evaluation (seconds to hours).

Only stdlib ``sqlite3``; the full evaluation is stored as JSON next to indexed columns that
reports and resume query directly.
"""

from __future__ import annotations

import functools
import json
import math
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from petra_hw.errors import DiskFull, UserError
from petra_hw.fsutil import disk_full
from petra_hw.search.types import Candidate, Evaluation

SCHEMA_VERSION = 4  # 2: the references table; 3: evaluations.fidelity; 4: evaluations.variant
T = TypeVar("T")
JOURNAL_NAME = "journal.sqlite"


def run_journal(run_dir: str | Path) -> Path:
    """The journal of a run folder, or one clear error when ``run_dir`` is not one."""
    journal = Path(run_dir) / JOURNAL_NAME
    if not journal.is_file():
        raise UserError(f"{run_dir} is not a run folder (no {JOURNAL_NAME})")
    return journal


_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    status TEXT NOT NULL,
    suite TEXT NOT NULL,
    profile TEXT NOT NULL,
    strategy TEXT NOT NULL,
    seed INTEGER NOT NULL,
    settings TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    stats TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE IF NOT EXISTS evaluations (
    run_id TEXT NOT NULL REFERENCES runs(id),
    seq INTEGER NOT NULL,
    candidate_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    error TEXT,
    error_kind TEXT,
    feasible INTEGER NOT NULL,
    quality_val REAL,
    latency_ms REAL,
    throughput_ips REAL,
    size_bytes REAL,
    fidelity REAL NOT NULL DEFAULT 1.0,
    variant TEXT NOT NULL DEFAULT '',
    objectives TEXT NOT NULL,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, candidate_id)
);
CREATE UNIQUE INDEX IF NOT EXISTS evaluations_seq ON evaluations(run_id, seq);
CREATE INDEX IF NOT EXISTS evaluations_generation ON evaluations(run_id, generation);
CREATE TABLE IF NOT EXISTS reference_evaluations (
    run_id TEXT NOT NULL REFERENCES runs(id),
    name TEXT NOT NULL,
    seq INTEGER NOT NULL,
    error TEXT,
    data TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS strategy_states (
    run_id TEXT NOT NULL REFERENCES runs(id),
    generation INTEGER NOT NULL,
    state TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, generation)
);
CREATE TABLE IF NOT EXISTS screened (
    run_id TEXT NOT NULL REFERENCES runs(id),
    candidate_id TEXT NOT NULL,
    generation INTEGER NOT NULL,
    pipeline TEXT NOT NULL,
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, candidate_id)
);
CREATE TABLE IF NOT EXISTS hypervolume (
    run_id TEXT NOT NULL REFERENCES runs(id),
    evaluations INTEGER NOT NULL,
    generation INTEGER NOT NULL,
    value REAL NOT NULL,
    elapsed_s REAL NOT NULL,
    created REAL NOT NULL,
    PRIMARY KEY (run_id, evaluations)
);
"""

_INDEXED = ("quality_val", "latency_ms", "throughput_ips", "size_bytes")
# Schema version -> statements that bring a journal of the previous version up to it.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    3: ("ALTER TABLE evaluations ADD COLUMN fidelity REAL NOT NULL DEFAULT 1.0",),
    # a backend variant's "backend/precision" ('' for an evaluation that trained)
    4: ("ALTER TABLE evaluations ADD COLUMN variant TEXT NOT NULL DEFAULT ''",),
}
# Entries that say nothing about the candidate (the environment failed, or the time budget
# stopped it): a resumed run's retry replaces them.
RETRIED_KINDS = ("infra", "budget")


@dataclass(frozen=True)
class RunRecord:
    """One run's row: what was searched, with which settings, on what machine, and how far."""

    id: str
    created: float
    updated: float
    status: str  # "running" | "finished" | "failed" | "interrupted"
    suite: str
    profile: str
    strategy: str
    seed: int
    settings: dict[str, Any]
    fingerprint: dict[str, Any]
    stats: dict[str, Any]


@dataclass(frozen=True)
class HypervolumePoint:
    evaluations: int
    generation: int
    value: float
    elapsed_s: float


def _read(method: Callable[..., T]) -> Callable[..., T]:
    """A read of the journal: a damaged file or row becomes one clear refusal."""

    @functools.wraps(method)
    def wrapper(self: Store, *args: Any, **kwargs: Any) -> T:
        with self.guard(decoding=True):
            return method(self, *args, **kwargs)

    return wrapper


def _number(value: Any) -> float | None:
    """A finite float for an indexed column, else NULL (SQLite has no NaN)."""
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


class Store:
    """A journal file holding any number of runs (tune keeps one per run folder)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
        try:
            self._open()
        except BaseException:
            self._conn.close()
            raise

    def _open(self) -> None:
        """Pragmas, an integrity check and the schema; a damaged file is one clear refusal."""
        self._conn.row_factory = sqlite3.Row
        with self.guard():
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA foreign_keys=ON")
            problems = [r[0] for r in self._conn.execute("PRAGMA quick_check").fetchall()]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError(problems[0])
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"journal {self.path} has schema {version}; this petra-hw reads up to "
                    f"{SCHEMA_VERSION}"
                )
            # executescript commits any open transaction first, so the script carries its own.
            # A journal of an older schema (tables there, user_version lower) is migrated in the
            # same transaction; a new file (no tables yet) gets the current schema directly.
            had_tables = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE name='evaluations'"
            ).fetchone()
            steps = [
                sql
                for v in range(version + 1, SCHEMA_VERSION + 1)
                for sql in _MIGRATIONS.get(v, ())
                if had_tables
            ]
            migrate = "".join(f"{sql};" for sql in steps)
            self._conn.executescript(
                f"BEGIN IMMEDIATE;{_SCHEMA}{migrate}PRAGMA user_version={SCHEMA_VERSION};COMMIT;"
            )

    @contextmanager
    def guard(self, decoding: bool = False) -> Iterator[None]:
        """SQLite failures as one line: a full disk (``DiskFull``) or a damaged journal; with
        ``decoding`` also rows that do not decode (JSON, missing fields)."""
        kinds: tuple[type[Exception], ...] = (sqlite3.DatabaseError,)
        if decoding:
            kinds += (json.JSONDecodeError, KeyError, TypeError, ValueError)
        try:
            yield
        except UserError:
            raise
        except kinds as exc:
            if "full" in str(exc) or disk_full(exc, self.path):
                raise DiskFull(
                    f"the disk holding {self.path.parent} is full: free space, then --resume"
                ) from exc
            raise UserError(
                f"journal {self.path} is damaged or not a petra-hw journal "
                f"({type(exc).__name__}: {exc})"
            ) from None

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One committed transaction (BEGIN IMMEDIATE: take the write lock up front)."""
        with self.guard():
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                if self._conn.in_transaction:
                    self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- runs ---------------------------------------------------------------------------------
    def create_run(
        self,
        run_id: str,
        *,
        suite: str,
        profile: str,
        strategy: str,
        seed: int,
        settings: dict[str, Any],
        fingerprint: dict[str, Any],
        status: str = "running",
    ) -> str:
        now = time.time()
        with self._tx() as c:
            if c.execute("SELECT 1 FROM runs WHERE id=?", (run_id,)).fetchone():
                raise UserError(f"run '{run_id}' already exists in {self.path}")
            c.execute(
                "INSERT INTO runs (id, created, updated, status, suite, profile, strategy, seed,"
                " settings, fingerprint) VALUES (?,?,?,?,?,?,?,?,?,?)",
                (
                    run_id,
                    now,
                    now,
                    status,
                    suite,
                    profile,
                    strategy,
                    seed,
                    json.dumps(settings, sort_keys=True),
                    json.dumps(fingerprint, sort_keys=True, default=str),
                ),
            )
        return run_id

    @_read
    def runs(self) -> list[RunRecord]:
        rows = self._conn.execute("SELECT * FROM runs ORDER BY created").fetchall()
        return [self._run(r) for r in rows]

    def last_run(self) -> RunRecord:
        """The folder's latest run: the one its report and timeline describe."""
        runs = self.runs()
        if not runs:
            raise UserError(f"{self.path} holds no run")
        return runs[-1]

    @_read
    def get_run(self, run_id: str) -> RunRecord:
        row = self._conn.execute("SELECT * FROM runs WHERE id=?", (run_id,)).fetchone()
        if row is None:
            raise UserError(f"no run '{run_id}' in {self.path}")
        return self._run(row)

    @staticmethod
    def _run(row: sqlite3.Row) -> RunRecord:
        return RunRecord(
            id=row["id"],
            created=row["created"],
            updated=row["updated"],
            status=row["status"],
            suite=row["suite"],
            profile=row["profile"],
            strategy=row["strategy"],
            seed=row["seed"],
            settings=json.loads(row["settings"]),
            fingerprint=json.loads(row["fingerprint"]),
            stats=json.loads(row["stats"]),
        )

    def set_status(self, run_id: str, status: str) -> None:
        with self._tx() as c:
            c.execute(
                "UPDATE runs SET status=?, updated=? WHERE id=?", (status, time.time(), run_id)
            )

    def update_stats(self, run_id: str, **stats: Any) -> None:
        """Merge counters (prefix-cache hits, elapsed time, ...) into the run's stats."""
        with self._tx() as c:
            row = c.execute("SELECT stats FROM runs WHERE id=?", (run_id,)).fetchone()
            merged = {**json.loads(row["stats"]), **stats}
            c.execute(
                "UPDATE runs SET stats=?, updated=? WHERE id=?",
                (json.dumps(merged, sort_keys=True), time.time(), run_id),
            )

    # -- evaluations --------------------------------------------------------------------------
    def add_evaluation(self, run_id: str, ev: Evaluation) -> bool:
        """Journal one finished evaluation (committed and fsynced before returning).

        Returns False, writing nothing, when this candidate is already journaled for the run,
        unless that entry says nothing about the candidate (``RETRIED_KINDS``: an ``infra``
        failure, or a run stopped by its time budget): a resumed run's retry replaces it.
        """
        data = ev.to_json()
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO evaluations (run_id, seq, candidate_id, generation, pipeline, error,"
                " error_kind, feasible, quality_val, latency_ms, throughput_ips, size_bytes,"
                " fidelity, variant, objectives, data, created)"
                " SELECT ?, COALESCE(MAX(seq), 0) + 1, ?,?,?,?,?,?,?,?,?,?,?,?,?,?,?"
                " FROM evaluations WHERE run_id=?"
                " ON CONFLICT (run_id, candidate_id) DO UPDATE SET"
                " generation=excluded.generation, error=excluded.error,"
                " error_kind=excluded.error_kind, feasible=excluded.feasible,"
                " quality_val=excluded.quality_val, latency_ms=excluded.latency_ms,"
                " throughput_ips=excluded.throughput_ips, size_bytes=excluded.size_bytes,"
                " fidelity=excluded.fidelity, variant=excluded.variant,"
                " objectives=excluded.objectives, data=excluded.data, created=excluded.created"
                f" WHERE evaluations.error_kind IN {RETRIED_KINDS!r}",
                (
                    run_id,
                    ev.candidate.id,
                    ev.candidate.generation,
                    str(ev.candidate.pipeline),
                    ev.error,
                    ev.error_kind,
                    int(ev.feasible),
                    *(_number(ev.objectives.get(k)) for k in _INDEXED),
                    float(ev.fidelity),
                    ev.variant,
                    json.dumps(ev.objectives, sort_keys=True),
                    json.dumps(data, sort_keys=True),
                    time.time(),
                    run_id,
                ),
            )
            c.execute("UPDATE runs SET updated=? WHERE id=?", (time.time(), run_id))
            return cur.rowcount == 1

    @_read
    def evaluations(self, run_id: str) -> list[Evaluation]:
        """A run's evaluations in the order they finished."""
        rows = self._conn.execute(
            "SELECT data FROM evaluations WHERE run_id=? ORDER BY seq", (run_id,)
        ).fetchall()
        return [Evaluation.from_json(json.loads(r["data"])) for r in rows]

    @_read
    def timed_evaluations(
        self, run_id: str, references: bool = False
    ) -> list[tuple[float, Evaluation]]:
        """A run's evaluations (or, with ``references``, its reference evaluations) in the order
        they finished, each with the wall-clock time (``time.time()``) it was journaled: progress
        over time (``petra_hw.search.timeline``)."""
        table = "reference_evaluations" if references else "evaluations"
        rows = self._conn.execute(
            f"SELECT created, data FROM {table} WHERE run_id=? ORDER BY seq", (run_id,)
        ).fetchall()
        return [(float(r["created"]), Evaluation.from_json(json.loads(r["data"]))) for r in rows]

    @_read
    def evaluated_ids(self, run_id: str) -> set[str]:
        rows = self._conn.execute(
            "SELECT candidate_id FROM evaluations WHERE run_id=?", (run_id,)
        ).fetchall()
        return {r["candidate_id"] for r in rows}

    # -- references (peers and the training control: never candidates) -----------------------
    def add_reference(self, run_id: str, ev: Evaluation) -> bool:
        """Journal one reference evaluation (``ev.candidate.reference`` names it); False, writing
        nothing, when it is already journaled."""
        name = ev.candidate.reference
        if not name:
            raise ValueError("add_reference needs an evaluation of a reference candidate")
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO reference_evaluations (run_id, name, seq, error, data, created)"
                " SELECT ?, ?, COALESCE(MAX(seq), 0) + 1, ?, ?, ? FROM reference_evaluations"
                " WHERE run_id=? ON CONFLICT (run_id, name) DO NOTHING",
                (run_id, name, ev.error, json.dumps(ev.to_json(), sort_keys=True), time.time(),
                 run_id),
            )  # fmt: skip
            return cur.rowcount == 1

    def references(self, run_id: str) -> list[Evaluation]:
        """A run's reference evaluations in the order they finished."""
        rows = self._conn.execute(
            "SELECT data FROM reference_evaluations WHERE run_id=? ORDER BY seq", (run_id,)
        ).fetchall()
        return [Evaluation.from_json(json.loads(r["data"])) for r in rows]

    # -- screened children (skipped on cheap objectives: petra_hw.search.screening) --------------
    def add_screened(self, run_id: str, candidate: Candidate, reason: str) -> bool:
        """Journal a child that was screened instead of evaluated; False when already there."""
        with self._tx() as c:
            cur = c.execute(
                "INSERT INTO screened (run_id, candidate_id, generation, pipeline, reason, created)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT (run_id, candidate_id) DO NOTHING",
                (run_id, candidate.id, candidate.generation, str(candidate.pipeline), reason,
                 time.time()),
            )  # fmt: skip
            return cur.rowcount == 1

    @_read
    def screened(self, run_id: str) -> list[tuple[str, str]]:
        """A run's screened children as (pipeline, reason), in the order they were screened."""
        rows = self._conn.execute(
            "SELECT pipeline, reason FROM screened WHERE run_id=? ORDER BY created, rowid",
            (run_id,),
        ).fetchall()
        return [(r["pipeline"], r["reason"]) for r in rows]

    # -- strategy snapshots -------------------------------------------------------------------
    def save_state(self, run_id: str, generation: int, state: dict[str, Any]) -> None:
        """Snapshot the strategy after ``generation`` was told (JSON: never pickle)."""
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO strategy_states (run_id, generation, state, created)"
                " VALUES (?,?,?,?)",
                (run_id, generation, json.dumps(state, sort_keys=True), time.time()),
            )

    @_read
    def load_state(self, run_id: str) -> tuple[int, dict[str, Any]] | None:
        """The latest snapshot as (generation, state), or None before the first generation."""
        row = self._conn.execute(
            "SELECT generation, state FROM strategy_states WHERE run_id=?"
            " ORDER BY generation DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        return None if row is None else (row["generation"], json.loads(row["state"]))

    # -- hypervolume over time ----------------------------------------------------------------
    def add_hypervolume(
        self, run_id: str, *, evaluations: int, generation: int, value: float, elapsed_s: float
    ) -> None:
        with self._tx() as c:
            c.execute(
                "INSERT OR REPLACE INTO hypervolume (run_id, evaluations, generation, value,"
                " elapsed_s, created) VALUES (?,?,?,?,?,?)",
                (run_id, evaluations, generation, float(value), float(elapsed_s), time.time()),
            )

    @_read
    def hypervolume(self, run_id: str) -> list[HypervolumePoint]:
        rows = self._conn.execute(
            "SELECT evaluations, generation, value, elapsed_s FROM hypervolume WHERE run_id=?"
            " ORDER BY evaluations",
            (run_id,),
        ).fetchall()
        return [HypervolumePoint(*tuple(r)) for r in rows]
