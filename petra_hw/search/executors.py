"""Executors run ``evaluate_candidate`` away from the search loop and hand back Evaluations.

Common interface: ``submit(candidates)`` yields one ``Evaluation`` per candidate as each
finishes (in finishing order), ``close()`` releases the workers, and ``context`` (an
``EvalContext``) may be replaced between calls (tune does so once the Original's objectives are
known).  Timeouts and dead workers become evaluations with ``error_kind`` "timeout" / "crash";
the search goes on.  A backend variant (``petra_hw.search.variants``) is a task of its own with
its own, shorter time limit (``timeout_for``).  A worker killed by SIGTERM/SIGHUP/SIGINT (the machine, not the candidate) and
a lock wait longer than ``PETRA_HW_LOCK_WAIT_S`` are ``infra``.  The local executor's timeout
counts a candidate's own compute: its worker reports lock waits, which are not counted.

``LocalExecutor`` keeps its own spawned worker processes rather than a ProcessPoolExecutor: a
pool can neither kill one overrunning task nor survive a segfault without failing every task in
flight.  Here a worker that overruns is killed (with its process group) and replaced, and a worker
that dies takes only its own candidate with it.  Workers die with the parent (PR_SET_PDEATHSIG),
so a killed ``tune`` leaves no orphans holding the compute lock.

``RayExecutor`` runs evaluations as Ray tasks.  Measurements on one host are serialised by the
same file locks whichever executor runs them (see ``petra_hw.search.evaluator``).
"""

from __future__ import annotations

import contextlib
import ctypes
import importlib.util
import logging
import multiprocessing as mp
import os
import signal
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Protocol

from petra_hw.search.budget import BUDGET, NOT_STARTED, BudgetGate
from petra_hw.search.evaluator import INFRA, EvalContext, evaluate_candidate
from petra_hw.search.types import Candidate, Evaluation
from petra_hw.search.variants import timeout_for

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
LOCK_WAIT_LIMIT_S = float(os.environ.get("PETRA_HW_LOCK_WAIT_S", 6 * 3600))
LOCK_MESSAGE = "petra-hw:lock-wait"
RAY_METRICS_ENV = "RAY_enable_metrics_collection"
_MACHINE_SIGNALS = {-signal.SIGTERM, -signal.SIGHUP, -signal.SIGINT}


class Executor(Protocol):
    context: EvalContext
    # Set by tune when the run has a time budget: candidates it refuses are not started and
    # running ones are stopped at its deadline, both as ``budget`` evaluations.
    budget: BudgetGate | None

    def submit(self, candidates: Iterable[Candidate]) -> Iterator[Evaluation]: ...

    def close(self) -> None: ...


def failed(
    candidate: Candidate, kind: str, message: str, elapsed_s: float | None = None
) -> Evaluation:
    timings = {"total_s": elapsed_s} if elapsed_s is not None else {}
    return Evaluation(
        candidate,
        error=message,
        error_kind=kind,
        feasible=False,
        timings_s=timings,
        fidelity=candidate.fidelity,
    )


def _exit_reason(exitcode: int | None) -> str:
    if exitcode is not None and exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
    return f"exit code {exitcode}"


# -- local process workers -----------------------------------------------------------------
def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (no-op elsewhere)."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG


def _worker_main(conn: Connection, parent_pid: int) -> None:
    """Loop in a spawned worker: receive (candidate, context), send back its Evaluation."""
    os.setsid()  # own process group: a timeout kills our subprocesses too; ^C goes to the parent
    _die_with_parent()
    if os.getppid() != parent_pid:
        return
    from petra_hw.search import evaluator

    # Tell the executor when this worker waits for a machine-wide lock: that time is not the
    # candidate's, so the per-candidate timeout does not count it.
    evaluator.lock_wait_listener = lambda waiting: conn.send((LOCK_MESSAGE, waiting))
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        ev = evaluate_candidate(*task)  # failures come back as data
        try:
            conn.send(ev)
        except (BrokenPipeError, OSError):
            return


@dataclass
class _Worker:
    process: Any  # multiprocessing.Process of the spawn context
    conn: Connection
    task: Candidate | None = None
    started: float = 0.0
    waited: float = 0.0  # seconds this task spent waiting for machine-wide locks
    waiting_since: float | None = None  # monotonic time the current lock wait began

    def start(self, task: Candidate) -> None:
        self.task, self.started, self.waited, self.waiting_since = task, time.monotonic(), 0.0, None

    def lock_wait(self, waiting: bool) -> None:
        now = time.monotonic()
        if waiting:
            self.waiting_since = now
        elif self.waiting_since is not None:
            self.waited += now - self.waiting_since
            self.waiting_since = None

    def own_elapsed(self, now: float) -> float:
        """Seconds of the task's own compute: lock waits excluded."""
        waiting = now - self.waiting_since if self.waiting_since is not None else 0.0
        return now - self.started - self.waited - waiting

    def deadline(self, timeout_s: float) -> float:
        """When this task times out (its compute) or its lock wait counts as an infra failure."""
        if self.waiting_since is not None:
            return self.waiting_since + LOCK_WAIT_LIMIT_S
        return self.started + self.waited + timeout_s


class LocalExecutor:
    """Evaluate candidates in ``workers`` spawned processes on this machine.

    Workers are daemonic (they may run subprocesses, not multiprocessing children) and each
    gets ``cores // workers`` torch threads for training.
    """

    def __init__(
        self,
        context: EvalContext,
        workers: int = 1,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        start_method: str = "spawn",
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        cores = os.cpu_count() or 1
        # Training threads per worker: share the cores instead of oversubscribing them.
        self.context = replace(
            context, train_threads=context.train_threads or max(1, cores // workers)
        )
        self.timeout_s = timeout_s
        self.budget: BudgetGate | None = None
        self._mp = mp.get_context(start_method)
        self._workers = [self._spawn() for _ in range(workers)]
        # trained candidate id -> the worker holding its model: its variants go there
        self._holder: dict[str, _Worker] = {}

    def _spawn(self) -> _Worker:
        parent, child = self._mp.Pipe(duplex=True)
        process = self._mp.Process(
            target=_worker_main, args=(child, os.getpid()), daemon=True, name="petra-hw-worker"
        )
        process.start()
        child.close()
        return _Worker(process, parent)

    def _kill(self, worker: _Worker) -> None:
        """Kill a worker and its process group; a later task starts a fresh one in its place."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(worker.process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            worker.process.kill()
        worker.process.join(timeout=10)
        worker.conn.close()
        worker.task = None

    def _replace(self, worker: _Worker) -> _Worker:
        """Kill a worker (and its process group) and put a fresh one in its place."""
        self._kill(worker)
        fresh = self._spawn()
        self._workers[self._workers.index(worker)] = fresh
        return fresh

    def submit(self, candidates: Iterable[Candidate]) -> Iterator[Evaluation]:
        pending = deque(candidates)
        while pending or any(w.task is not None for w in self._workers):
            for w in list(self._workers):
                while w.task is None and pending:
                    task = self._take(pending, w)
                    if task is None:  # only variants whose models a busy worker holds
                        break
                    why = self.budget and self.budget.refusal(task, time.monotonic())
                    if why:
                        yield failed(task, BUDGET, NOT_STARTED + why, 0.0)
                        continue
                    if not w.process.is_alive():
                        w = self._replace(w)
                    w.start(task)
                    w.conn.send((w.task, self.context))
            busy = [w for w in self._workers if w.task is not None]
            if not busy:
                continue
            deadline = min(w.deadline(self._timeout(w)) for w in busy)
            if self.budget is not None:
                deadline = min(deadline, self.budget.deadline)
            waitables = [o for w in busy for o in (w.conn, w.process.sentinel)]
            ready = set(wait(waitables, timeout=max(0.0, deadline - time.monotonic())))
            for w in busy:
                ev = self._collect(w, ready)
                if ev is not None:
                    yield ev

    def _take(self, pending: deque[Candidate], w: _Worker) -> Candidate | None:
        """The first pending task for ``w``: a variant waits for the worker that holds its
        trained model while that worker lives (``evaluator._TRAINED``)."""
        for i, task in enumerate(pending):
            holder = self._holder.get(task.trained_id) if task.variant else None
            if holder is None or holder is w or holder not in self._workers:
                del pending[i]
                return task
        return None

    def _timeout(self, w: _Worker) -> float:
        assert w.task is not None
        return timeout_for(w.task, self.timeout_s)

    def _collect(self, w: _Worker, ready: set) -> Evaluation | None:
        """The worker's Evaluation if it finished, a crash or timeout if it died or overran."""
        candidate = w.task
        assert candidate is not None
        broken = False
        if w.conn in ready:
            try:
                while w.conn.poll():
                    message = w.conn.recv()
                    if isinstance(message, tuple) and message[:1] == (LOCK_MESSAGE,):
                        w.lock_wait(bool(message[1]))
                        continue
                    w.task = None
                    if message.ok and not candidate.variant:
                        self._holder[candidate.id] = w
                    return message
            except (EOFError, OSError):
                broken = True
        now = time.monotonic()
        elapsed = now - w.started
        if broken or w.process.sentinel in ready:
            dead = w.process
            self._replace(w)  # kill its group before reaping it: the pgid cannot be reused yet
            reason = _exit_reason(dead.exitcode)
            log.info("worker evaluating %s died (%s)", candidate.id, reason)
            # SIGTERM/SIGHUP/SIGINT come from the machine or its operator, not the candidate
            kind = INFRA if dead.exitcode in _MACHINE_SIGNALS else "crash"
            return failed(candidate, kind, f"worker died: {reason}", elapsed)
        if self.budget is not None and now >= self.budget.deadline:
            log.info("candidate %s stopped at the time budget", candidate.id)
            self._kill(w)  # no fresh worker: nothing starts after the deadline
            return failed(candidate, BUDGET, self.budget.stopped(elapsed), elapsed)
        if w.waiting_since is not None and now - w.waiting_since >= LOCK_WAIT_LIMIT_S:
            self._replace(w)
            message = f"waited {LOCK_WAIT_LIMIT_S:g} s for the machine-wide lock"
            return failed(candidate, INFRA, message, elapsed)
        limit = self._timeout(w)
        if w.waiting_since is None and w.own_elapsed(now) >= limit:
            log.info("candidate %s timed out after %.0f s", candidate.id, elapsed)
            self._replace(w)
            return failed(
                candidate,
                "timeout",
                f"timed out after {limit:g} s of its own compute "
                f"({w.waited:.0f} s waiting for the machine lock not counted)",
                elapsed,
            )
        return None

    def close(self) -> None:
        for w in self._workers:
            with contextlib.suppress(OSError):
                w.conn.send(None)
        for w in self._workers:
            w.process.join(timeout=5)
            if w.process.is_alive():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(w.process.pid, signal.SIGKILL)
                w.process.join(timeout=5)
            w.conn.close()
        self._workers = []

    def __enter__(self) -> LocalExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- Ray -------------------------------------------------------------------------------------
def _ray_evaluate(
    candidate: Candidate, context: EvalContext, weights: bytes, timeout_s: float
) -> Evaluation:
    """Runs in a Ray worker: make sure the starting weights exist on this node, then evaluate in
    a one-worker ``LocalExecutor`` on the node, so the timeout counts the candidate's own compute
    (its worker reports waits for the node's machine-wide locks) and a crash stays its own."""
    path = context.baseline_weights
    if not path.is_file() or path.stat().st_size != len(weights):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(weights)
        os.replace(tmp, path)
    with LocalExecutor(context, workers=1, timeout_s=timeout_s) as executor:
        (ev,) = executor.submit([candidate])
    return ev


def device_resource(profile_name: str) -> str:
    """The custom Ray resource a node advertises when it hosts this profile's device."""
    return f"petra_device_{profile_name}"


class RayExecutor:
    """Evaluate candidates as Ray tasks on a cluster (``address``) or a local Ray instance.

    Placement: ``resources`` if given; else the custom resource ``petra_device_<profile>`` when
    the cluster advertises it (start device nodes with ``--resources '{"petra_device_h100": 1}'``);
    else one GPU per task on GPU profiles and one CPU on CPU profiles.  At most as many tasks as
    the cluster has slots are in flight.  Each task times its candidate on its node as the local
    executor does (own compute only, lock waits not counted); the driver only cancels a task that
    outlives that timeout plus the longest allowed lock wait.  Every node needs the same petra-hw environment; the starting weights travel
    through the object store; artifacts stay on the node that compiled them unless the run
    folder is on shared storage.
    """

    def __init__(
        self,
        context: EvalContext,
        address: str | None = None,
        resources: dict[str, float] | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        import ray

        from petra_hw.errors import UserError
        from petra_hw.profiles import load_profile

        self._owns_ray = not ray.is_initialized()
        if self._owns_ray:
            # Ray 2.60's driver keeps its OpenTelemetry metric exporter running after
            # ray.shutdown() (ray-project/ray#58952): a thread every 10 s for the rest of the
            # process.  petra-hw reads no Ray metrics; a user who wants them sets the variable.
            os.environ.setdefault(RAY_METRICS_ENV, "0")
            ray.init(address=address, include_dashboard=False, logging_level=logging.WARNING)
        self.context = context
        self.timeout_s = timeout_s
        self.budget: BudgetGate | None = None
        profile = load_profile(context.profile)
        cluster = ray.cluster_resources()
        options: dict[str, Any] = {"max_retries": 0, "num_cpus": 1}
        if resources:
            options["resources"] = dict(resources)
            slot, per_task = next(iter(resources.items()))
        elif device_resource(profile.name) in cluster:
            slot, per_task = device_resource(profile.name), 1.0
            options["resources"] = {slot: per_task}
        else:
            slot, per_task = ("GPU" if profile.is_gpu else "CPU"), 1.0
        if profile.is_gpu:
            options["num_gpus"] = 1
            if cluster.get("GPU", 0) < 1:
                raise UserError(f"the Ray cluster has no GPU for device '{profile.name}'")
        if cluster.get(slot, 0) < per_task:
            raise UserError(
                f"the Ray cluster has no resource '{slot}' (it has {', '.join(sorted(cluster))})"
            )
        self.max_in_flight = max(1, int(cluster[slot] // per_task))
        self._remote = ray.remote(_ray_evaluate).options(**options)
        self._weights = ray.put(context.baseline_weights.read_bytes())
        log.info("ray executor: %s, up to %d tasks in flight", options, self.max_in_flight)

    def submit(self, candidates: Iterable[Candidate]) -> Iterator[Evaluation]:
        import ray

        pending = deque(candidates)
        running: dict[Any, tuple[Candidate, float]] = {}
        while pending or running:
            while pending and len(running) < self.max_in_flight:
                c = pending.popleft()
                why = self.budget and self.budget.refusal(c, time.monotonic())
                if why:
                    yield failed(c, BUDGET, NOT_STARTED + why, 0.0)
                    continue
                ref = self._remote.remote(
                    c, self.context, self._weights, timeout_for(c, self.timeout_s)
                )
                running[ref] = (c, time.monotonic())
            if not running:
                continue
            deadline = min(t + self._outer_timeout_s(c) for c, t in running.values())
            if self.budget is not None:
                deadline = min(deadline, self.budget.deadline)
            ready, _ = ray.wait(
                list(running), num_returns=1, timeout=max(0.0, deadline - time.monotonic())
            )
            for ref in ready:
                c, started = running.pop(ref)
                yield self._result(ref, c, time.monotonic() - started)
            now = time.monotonic()
            for ref, (c, started) in list(running.items()):
                if self.budget is not None and now >= self.budget.deadline:
                    ray.cancel(ref, force=True)
                    del running[ref]
                    yield failed(c, BUDGET, self.budget.stopped(now - started), now - started)
                elif now - started >= self._outer_timeout_s(c):
                    ray.cancel(ref, force=True)
                    del running[ref]
                    yield failed(
                        c, "timeout", f"the Ray task ran {now - started:.0f} s", now - started
                    )

    def _outer_timeout_s(self, candidate: Candidate) -> float:
        """The driver's safety net: the task's own timeout, plus the longest lock wait it may
        legitimately spend, plus a minute to start its worker."""
        return timeout_for(candidate, self.timeout_s) + LOCK_WAIT_LIMIT_S + 60.0

    @staticmethod
    def _result(ref: Any, candidate: Candidate, elapsed: float) -> Evaluation:
        import ray

        try:
            return ray.get(ref)
        except ray.exceptions.TaskCancelledError:
            return failed(candidate, "timeout", "cancelled", elapsed)
        except ray.exceptions.RayError as exc:
            message = str(exc).strip().splitlines()
            return failed(
                candidate,
                "crash",
                f"{type(exc).__name__}: {message[0] if message else ''}",
                elapsed,
            )

    def close(self) -> None:
        """Shut Ray down only if this executor started it (a cluster or the caller's stays)."""
        import ray

        if self._owns_ray:
            ray.shutdown()

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the registry ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ExecutorOptions:
    """How a run asks to execute: what every executor factory receives besides the context."""

    workers: int = 1
    timeout_s: float = DEFAULT_TIMEOUT_S
    address: str | None = None
    resources: dict[str, float] | None = None


ExecutorFactory = Callable[[EvalContext, ExecutorOptions], Executor]
EXECUTORS: dict[str, ExecutorFactory] = {}


def register_executor(name: str) -> Callable[[ExecutorFactory], ExecutorFactory]:
    """Make a factory ``(context, options) -> Executor`` available as ``tune --executor NAME``."""

    def deco(factory: ExecutorFactory) -> ExecutorFactory:
        EXECUTORS[name] = factory
        return factory

    return deco


@register_executor("local")
def _local(context: EvalContext, options: ExecutorOptions) -> Executor:
    return LocalExecutor(context, workers=options.workers, timeout_s=options.timeout_s)


@register_executor("ray")
def _ray(context: EvalContext, options: ExecutorOptions) -> Executor:
    if importlib.util.find_spec("ray") is None:
        from petra_hw.errors import UserError

        raise UserError("--executor ray needs Ray: pip install 'petra-hw[ray]'")
    return RayExecutor(
        context, address=options.address, resources=options.resources, timeout_s=options.timeout_s
    )


def make_executor(
    kind: str,
    context: EvalContext,
    *,
    workers: int = 1,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    address: str | None = None,
    resources: dict[str, float] | None = None,
) -> Executor:
    """A registered executor by name."""
    if kind not in EXECUTORS:
        from petra_hw.errors import UserError

        raise UserError(f"unknown executor {kind!r} (known: {', '.join(EXECUTORS)})")
    return EXECUTORS[kind](context, ExecutorOptions(workers, timeout_s, address, resources))
