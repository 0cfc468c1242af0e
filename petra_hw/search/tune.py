"""The tune loop: evaluate the Original, then ask/tell a strategy until a stopping rule holds.

``TuneSettings`` is a run's whole configuration, journaled at creation: the search space included
(``space``, the full spec the run searches), so ``resume`` searches what the run searched whichever
host it resumes on, and ``plugins`` (modules that register kinds, backends, strategies, executors),
which every process of the run imports first.  Its methods build what tune, report and reproduce
share: the objective config, the evaluation context and the search space.

A run lives in its folder ``<out>/<run_id>/``: ``journal.sqlite`` (the store), ``baseline.pt``
(the weights every candidate starts from), ``candidates/<id>/`` (artifacts) and
``prefix-cache/``.  Every evaluation is journaled the moment it finishes; the strategy is
snapshotted after each ask (with its pending candidates) and after each tell.  ``resume`` rebuilds
the run from its journal: journaled evaluations are reused, never re-run, pending candidates
are re-submitted, and the time budget counts the time already spent.

Untrained mode (``mode="untrained"``): the run starts from the suite's freshly initialised model
(seeded) and each candidate trains it first, as a ``Tr`` of the suite's epochs prepended to its
pipeline (``evaluator.applied_pipeline``); the Original is then "train from scratch, no
compression".
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import logging
import math
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from petra_hw.errors import DiskFull, UserError
from petra_hw.fsutil import disk_full
from petra_hw.pipeline import Pipeline
from petra_hw.precision import float_precision
from petra_hw.search.budget import BUDGET, NOT_STARTED, BudgetGate, expected_seconds
from petra_hw.search.evaluator import (
    DISK_FULL,
    INFRA,
    MODES,
    CutRule,
    EvalContext,
    deployable_precisions,
    fault_from_env,
)
from petra_hw.search.executors import DEFAULT_TIMEOUT_S, Executor, make_executor
from petra_hw.search.fidelity import DEFAULT_RUNGS, SuccessiveHalving, check_rungs, fidelity_stats
from petra_hw.search.objectives import KNOWN_OBJECTIVES, QUALITY, ObjectiveConfig, Objectives
from petra_hw.search.runlock import RunLock
from petra_hw.search.selection import pareto_front
from petra_hw.search.store import JOURNAL_NAME, RETRIED_KINDS, Store
from petra_hw.search.types import Candidate, Evaluation

if TYPE_CHECKING:
    from petra_hw.profiles import DeviceProfile
    from petra_hw.search.guide import Guide
    from petra_hw.search.space import SearchSpace
    from petra_hw.search.strategy import Target

log = logging.getLogger(__name__)

BASELINE_WEIGHTS = "baseline.pt"


class _InfraStop(Exception):
    """An evaluation failed for a reason of the environment (``infra``): the run stops."""


class _BudgetStop(Exception):
    """The time budget refused or stopped a candidate: the run ends here (see search.budget)."""


ORIGINAL = Pipeline.make()


@dataclass(frozen=True)
class TuneSettings:
    """Everything that defines a run (journaled, so that ``resume`` needs only the run id)."""

    suite: str = "digits"
    device: str = "auto"
    data_dir: str | None = None
    seed: int = 0
    budget_s: float | None = None
    generations: int | None = None
    evaluations: int | None = None  # candidates beyond the Original
    population: int = 4
    strategy: str = "evolution"
    executor: str = "local"
    address: str | None = None
    workers: int = 1
    timeout_s: float | None = None  # per candidate; default: 600 s, at most the time budget
    max_latency_ms: float | None = None
    max_size_mb: float | None = None
    max_quality_drop: float | None = None  # relative to the Original's val metric (0.01 = 1%)
    # Stop as soon as one feasible candidate is this good (any subset of the three).
    target_latency_ms: float | None = None
    target_size_mb: float | None = None
    target_quality_drop: float | None = None
    stagnation: int | None = None  # stop when the hypervolume has not grown for N generations
    # None: quality, latency_ms, size_bytes (+ energy_j where the device reports energy)
    objectives: tuple[str, ...] | None = None
    mode: str = "pretrained"
    backend: str | None = None  # pin one backend of the profile
    # A SearchSpace spec (see petra_hw.search.space); None: the suite's ``space``, else the
    # profile's default.  A new run journals the full spec it searches here.
    space: dict[str, Any] | None = None
    plugins: tuple[str, ...] = ()  # module names or .py paths imported before anything else
    # Build the device's one-shot peers and the training control (``petra_hw.references``) after
    # the Original; their time is reported apart and not charged to ``budget_s``.
    references: bool = True
    # Successive-halving rungs (shares of the training epochs) a training candidate passes
    # before full epochs; () evaluates every candidate at full fidelity (petra_hw.search.fidelity)
    fidelity_rungs: tuple[float, ...] = DEFAULT_RUNGS
    # Re-time the Original with the front, interleaved, after each generation and before the
    # report (petra_hw.search.remeasure)
    remeasure: bool = True
    # Children certainly dominated on cheap objectives are screened, not trained, and a learned
    # cost model picks one of ``mutants`` children per slot (``petra_hw.search.guide``); both
    # off for an ablation.
    screening: bool = True
    cost_model: bool = True
    mutants: int = 8
    # Compile each trained full-fidelity candidate for every other backend of the profile that
    # supports its precision, each its own point (``petra_hw.search.variants``); off: one
    # backend per candidate (an ablation, and what runs journaled before variants do).
    variants: bool = True

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"unknown mode '{self.mode}' (choose {', '.join(MODES)})")
        if self.population < 1 or self.workers < 1 or self.mutants < 1:
            raise UserError("--population, --workers and --mutants must be at least 1")
        object.__setattr__(self, "plugins", tuple(self.plugins))  # a JSON list after a resume
        object.__setattr__(self, "fidelity_rungs", check_rungs(self.fidelity_rungs))
        if self.stagnation is not None and self.stagnation < 1:
            raise UserError("--stagnation must be at least 1 generation")
        if self.objectives is not None:
            names = tuple(self.objectives)  # a JSON list after a resume
            unknown = [n for n in names if n not in KNOWN_OBJECTIVES]
            if unknown or QUALITY not in names or len(set(names)) != len(names):
                raise UserError(
                    f"bad --objectives {','.join(names)}: list distinct names among "
                    f"{', '.join(KNOWN_OBJECTIVES)}, quality included"
                )
            object.__setattr__(self, "objectives", names)

    def target(self) -> Target | None:
        """The 'good enough' rule, or None when no target bound is set."""
        from petra_hw.search.strategy import Target

        bounds = (self.target_quality_drop, self.target_latency_ms, self.target_size_mb)
        if all(b is None for b in bounds):
            return None
        return Target(*bounds)

    def candidate_timeout_s(self) -> float:
        if self.timeout_s is not None:
            return self.timeout_s
        if self.budget_s is not None:
            return max(60.0, min(DEFAULT_TIMEOUT_S, self.budget_s))
        return DEFAULT_TIMEOUT_S

    def check_registered(self) -> None:
        """The strategy and executor exist (after the plug-ins are loaded)."""
        from petra_hw.search.executors import EXECUTORS
        from petra_hw.search.strategy import STRATEGIES

        if self.strategy not in STRATEGIES:
            raise UserError(
                f"unknown search strategy '{self.strategy}' (known: {', '.join(STRATEGIES)})"
            )
        if self.executor not in EXECUTORS:
            raise UserError(f"unknown executor '{self.executor}' (known: {', '.join(EXECUTORS)})")

    def objective_names(self, energy: bool) -> tuple[str, ...]:
        """The user's objectives, else the defaults plus ``energy_j`` where the device reports
        energy (``energy``)."""
        if self.objectives is None:
            defaults = ObjectiveConfig().names
            return (*defaults, "energy_j") if energy else defaults
        if "energy_j" in self.objectives and not energy:
            raise UserError("energy_j is no objective on this device: it reports no energy")
        return self.objectives

    def objective_config(
        self, higher_is_better: bool, energy: bool, split: str = "val"
    ) -> ObjectiveConfig:
        """Objectives and constraints of the run (tune, report and reproduce build it here)."""
        return ObjectiveConfig(
            names=self.objective_names(energy),
            higher_is_better=higher_is_better,
            split=split,
            max_latency_ms=self.max_latency_ms,
            max_size_mb=self.max_size_mb,
            max_quality_drop=self.max_quality_drop,
        )

    def eval_context(
        self,
        run_dir: Path,
        objectives: ObjectiveConfig,
        baseline_weights: Path | None = None,
        backend: str | None = None,
    ) -> EvalContext:
        """What a worker needs to evaluate this run's candidates (``backend`` overrides the pin).

        The loop adds the Original's evaluation (``original``) once it is measured."""
        return EvalContext(
            suite=self.suite,
            profile=self.device,
            run_dir=run_dir,
            baseline_weights=baseline_weights or run_dir / BASELINE_WEIGHTS,
            seed=self.seed,
            data_dir=Path(self.data_dir) if self.data_dir else None,
            mode=self.mode,
            backend=backend or self.backend,
            objectives=objectives,
            cut=CutRule(),
            fault=fault_from_env(),
            plugins=self.plugins,
        )

    def search_space(
        self, profile: DeviceProfile, suite_space: dict[str, Any] | None = None
    ) -> SearchSpace:
        """The run's space: the journaled spec as is; for a new run the given spec (``space``,
        else the suite's) on the kinds whose precision an available backend compiles here."""
        from petra_hw.search.space import SearchSpace

        if self.space is not None and _is_full(self.space):
            return SearchSpace.from_spec(self.space, gpu=profile.is_gpu)
        usable = dataclasses.replace(
            profile, precisions=deployable_precisions(profile, self.backend)
        )
        return SearchSpace.for_profile(usable, self.space or suite_space)

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @staticmethod
    def from_json(d: dict[str, Any]) -> TuneSettings:
        names = {f.name for f in dataclasses.fields(TuneSettings)}
        older = {"fidelity_rungs": (), "variants": False}  # runs journaled before either
        return TuneSettings(**{**older, **{k: v for k, v in d.items() if k in names}})


@dataclass(frozen=True)
class TuneProgress:
    """What the CLI shows after each evaluation and generation."""

    run_id: str
    generation: int
    evaluations: int  # journaled, the Original included, backend variants not (they are points)
    max_evaluations: int | None
    elapsed_s: float
    budget_s: float | None
    hypervolume: float | None
    best: Evaluation | None  # lowest-latency feasible candidate
    last: Evaluation | None
    original: Evaluation | None
    reused: bool = False  # ``last`` came from the journal


@dataclass
class TuneResult:
    run_id: str
    run_dir: Path
    original: Evaluation
    evaluations: list[Evaluation]
    front: list[Evaluation]
    objectives: Objectives
    stop_reason: str
    stats: dict[str, Any] = field(default_factory=dict)
    references: list[Evaluation] = field(default_factory=list)  # peers and the training control


Callback = Callable[[TuneProgress], None]


def _is_full(spec: dict[str, Any]) -> bool:
    """A spec as ``SearchSpace.to_spec`` writes it (every field), i.e. one a run journaled."""
    return {"kinds", "max_len", "min_len", "params"} <= set(spec)


def _absolute(value: str | None) -> str | None:
    """Paths the user gave become absolute, so workers (and Ray nodes) resolve them alike."""
    if value is None:
        return None
    p = Path(value)
    return str(p.resolve()) if p.exists() else value


def _new_run_dir(base: Path, stem: str) -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    base.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = base / (f"{stem}-{stamp}" if i == 0 else f"{stem}-{stamp}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise UserError(f"cannot create a run folder under {base}")


def find_run(run: str, out: Path) -> Path:
    """A run folder by path, or by id under ``out``."""
    tried = list(dict.fromkeys((Path(run), out / run)))  # one, for an absolute path
    for path in tried:
        if (path / JOURNAL_NAME).is_file():
            return path.resolve()
    where = " nor ".join(str(p) for p in tried)
    raise UserError(
        f"no run '{run}': {'neither ' if len(tried) > 1 else ''}{where} holds a {JOURNAL_NAME}"
    )


def tune(
    settings: TuneSettings, out: Path = Path("runs"), progress: Callback | None = None
) -> TuneResult:
    """Start a new run under ``out`` and search until a stopping rule holds."""
    from petra_hw.baseline import get_baseline, seed_everything
    from petra_hw.fingerprint import fingerprint
    from petra_hw.plugins import load_plugins
    from petra_hw.profiles import check_host, load_profile
    from petra_hw.search.applicable import dense_backends, fit_space
    from petra_hw.suite import load_suite

    settings = dataclasses.replace(
        settings, plugins=tuple(_absolute(p) or p for p in settings.plugins)
    )
    load_plugins(settings.plugins)
    settings.check_registered()
    profile = load_profile(settings.device)
    check_host(profile)
    suite = load_suite(settings.suite)
    space = fit_space(  # what cannot change the model leaves the space (logged)
        settings.search_space(profile, suite.space),
        suite.build_model(),
        suite.example_input(1),
        profile.channel_multiple,
        dense_backends(profile),
    )
    settings = dataclasses.replace(
        settings,
        suite=_absolute(settings.suite) or settings.suite,
        device=profile.source or profile.name,
        data_dir=_absolute(settings.data_dir),
        space=space.to_spec(),  # journaled: a resume searches exactly this
    )
    data_dir = Path(settings.data_dir) if settings.data_dir else None
    if settings.mode == "pretrained":
        model = get_baseline(suite, settings.seed, data_dir).model
    else:
        seed_everything(settings.seed)
        model = suite.build_model()
    run_dir = _new_run_dir(Path(out), f"{suite.name}-{profile.name}").resolve()
    try:  # a run folder is complete (weights + journal) or not there at all
        torch.save(model.state_dict(), run_dir / BASELINE_WEIGHTS)
        with Store(run_dir / JOURNAL_NAME) as store:
            store.create_run(
                run_dir.name,
                suite=suite.name,
                profile=profile.name,
                strategy=settings.strategy,
                seed=settings.seed,
                settings=settings.to_json(),
                fingerprint=fingerprint(),
            )
    except BaseException as exc:
        shutil.rmtree(run_dir, ignore_errors=True)
        if isinstance(exc, Exception) and disk_full(exc, run_dir.parent):
            raise DiskFull(
                f"the disk holding {out} is full: free space and run tune again"
            ) from exc
        raise
    return _Session(run_dir, progress).run()


def resume(
    run: str, out: Path = Path("runs"), progress: Callback | None = None, **overrides: Any
) -> TuneResult:
    """Continue a run from its journal; ``overrides`` may change how it executes (executor,
    workers, address), never what it searches."""
    allowed = {"executor", "workers", "address"}
    if set(overrides) - allowed:
        raise UserError(
            f"a resumed run keeps its settings; only {', '.join(sorted(allowed))} may change"
        )
    return _Session(
        find_run(run, out), progress, {k: v for k, v in overrides.items() if v is not None}
    ).run()


class _Session:
    """One process working on a run (a new run, or a resume of an interrupted one)."""

    def __init__(
        self, run_dir: Path, progress: Callback | None, overrides: dict | None = None
    ) -> None:
        self._overrides = overrides
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.progress = progress
        self.lock = RunLock(run_dir)  # one process per run: a second one is refused here
        try:
            self.store = Store(run_dir / JOURNAL_NAME)
        except BaseException:
            self.lock.release()
            raise
        try:
            self._load()
        except BaseException:
            self.store.close()
            self.lock.release()
            raise
        self.lock.reserve()  # room to record "interrupted" should the disk fill up

    def _load(self) -> None:
        """The run's settings and journal; ``infra`` failures are not kept: resume retries them."""
        overrides = self._overrides
        record = self.store.get_run(self.run_id)
        self.settings = dataclasses.replace(
            TuneSettings.from_json(record.settings), **(overrides or {})
        )
        self.prior_elapsed = float(record.stats.get("elapsed_s", 0.0))
        self.references_s = float(record.stats.get("references_s", 0.0))
        self.original_s = float(record.stats.get("original_s", 0.0))
        self.references = {e.candidate.reference: e for e in self.store.references(self.run_id)}
        self.sessions = list(record.stats.get("sessions", []))
        self.journal = {
            e.candidate.id: e
            for e in self.store.evaluations(self.run_id)
            if e.error_kind not in RETRIED_KINDS
        }
        self.budget_stops = dict(record.stats.get("budget_stops", {}))
        self.remeasured = list(record.stats.get("remeasured", []))
        self.remeasured_final: dict[str, Any] | None = record.stats.get("remeasured_final")
        self._calib: np.ndarray | None = None
        self.started = time.monotonic()
        self.started_at = time.time()
        self.evaluated = 0
        self.generation = 0
        self.hv: float | None = None
        self.original: Evaluation | None = None
        self.objectives: Objectives | None = None
        self.guide: Guide | None = None

    # -- bookkeeping ------------------------------------------------------------------------
    def elapsed(self) -> float:
        """Wall time of the run so far, every session and the references included."""
        return self.prior_elapsed + time.monotonic() - self.started

    def search_elapsed(self) -> float:
        """What the time budget counts: the run's wall time less the Original's evaluation and
        the references' (set apart: every strategy spends them alike, and on a large model the
        Original alone can take longer than the budget)."""
        return self.elapsed() - self.references_s - self.original_s

    def _stats(self) -> dict[str, Any]:
        evs = [e for e in self.journal.values() if e.candidate.pipeline.steps]
        applied = [e for e in evs if "apply_s" in e.timings_s]
        hits = [e for e in applied if e.cache_hit_steps > 0]
        errors: dict[str, int] = {}
        for e in self.journal.values():
            if e.error_kind:
                errors[e.error_kind] = errors.get(e.error_kind, 0) + 1
        return {
            "elapsed_s": self.elapsed(),
            "references_s": self.references_s,
            "original_s": self.original_s,
            "evaluations": len(self.journal),
            "errors": errors,
            "fidelity": fidelity_stats(self.journal.values()),
            "budget_stops": self.budget_stops,
            "remeasured": self.remeasured,
            "remeasured_final": self.remeasured_final,
            "prefix_cache": {
                "hits": len(hits),
                "applied": len(applied),
                "hit_rate": len(hits) / len(applied) if applied else 0.0,
                "steps_reused": sum(e.cache_hit_steps for e in applied),
                "seconds_saved": sum(e.timings_s.get("cache_saved_s", 0.0) for e in applied),
            },
            "sessions": [*self.sessions, {"started": self.started_at, "evaluated": self.evaluated}],
            **self._guide_stats(),
        }

    def _guide_stats(self) -> dict[str, Any]:
        """Screened children per hour and the cost model's held-out accuracy."""
        if self.guide is None:
            return {"screening": {"enabled": False}, "cost_model": {"enabled": False}}
        screened = len(self.store.screened(self.run_id))
        return self.guide.summary(self.search_elapsed(), screened)

    def _make_guide(self, strategy, objectives: Objectives, ctx: EvalContext) -> Guide | None:
        """The guide a breeding strategy consults (None when both parts are off), its cost
        model refitted from the journal, in journal order (a resumed run's included)."""
        s = self.settings
        if not (s.screening or s.cost_model) or not type(strategy).uses_guide:
            return None
        from petra_hw.search.costmodel import CostModel
        from petra_hw.search.features import StructureProbe
        from petra_hw.search.guide import Guide

        guide = Guide(
            StructureProbe.from_context(ctx),
            objectives,
            mutants=s.mutants,
            screening=s.screening,
            cost_model=CostModel(seed=s.seed) if s.cost_model else None,
            record=lambda c, reason: self.store.add_screened(self.run_id, c, reason),
        )
        guide.observe(self.journal.values())
        return guide

    def _best(self) -> Evaluation | None:
        ok = [
            e
            for e in self.journal.values()
            if e.ok and e.feasible and e.full_fidelity and e.candidate.pipeline.steps
        ]
        return min(ok, key=lambda e: e.objectives.get("latency_ms", math.inf), default=None)

    def _report(self, last: Evaluation | None, reused: bool = False) -> None:
        if self.progress is None:
            return
        s = self.settings
        self.progress(
            TuneProgress(
                run_id=self.run_id,
                generation=self.generation,
                evaluations=sum(1 for e in self.journal.values() if not e.candidate.variant),
                max_evaluations=None if s.evaluations is None else s.evaluations + 1,
                elapsed_s=self.search_elapsed(),
                budget_s=s.budget_s,
                hypervolume=self.hv,
                best=self._best(),
                last=last,
                original=self.original,
                reused=reused,
            )
        )

    # -- evaluation -------------------------------------------------------------------------

    def _evaluate(self, executor: Executor, batch: list[Candidate]) -> list[Evaluation]:
        """Journaled results for known candidates, the executor for the rest; each new one is
        committed to the journal as soon as it finishes."""
        out = []
        for c in batch:
            if c.id in self.journal:
                out.append(self.journal[c.id])
                self._report(self.journal[c.id], reused=True)
        todo = [c for c in batch if c.id not in self.journal]
        stopped: list[Evaluation] = []
        for ev in executor.submit(todo):
            if ev.error_kind == BUDGET:  # not the candidate's doing: never told, resume retries
                stopped.append(ev)
                if not (ev.error or "").startswith(NOT_STARTED):
                    self.store.add_evaluation(self.run_id, ev)
                continue
            if not self.store.add_evaluation(self.run_id, ev):
                log.warning("candidate %s was already journaled", ev.candidate.id)
            if ev.error_kind == INFRA:  # the environment failed, not the candidate: stop here
                if (ev.error or "").startswith(DISK_FULL):
                    raise DiskFull(ev.error)
                raise _InfraStop(f"{ev.candidate.pipeline}: {ev.error}")
            self.journal[ev.candidate.id] = ev
            self.evaluated += 1
            self.store.update_stats(self.run_id, **self._stats())
            out.append(ev)
            self._report(ev)
        if stopped:
            self._budget_stop(stopped)
        return out

    def _budget_stop(self, stopped: list[Evaluation]) -> None:
        """Count what the time budget stopped or did not start, and end the run."""
        started = [e for e in stopped if not (e.error or "").startswith(NOT_STARTED)]
        for key, n in (("stopped", len(started)), ("not_started", len(stopped) - len(started))):
            self.budget_stops[key] = self.budget_stops.get(key, 0) + n
        self.store.update_stats(self.run_id, **self._stats())
        first = stopped[0]
        raise _BudgetStop(
            f"time budget spent ({self.search_elapsed():.0f} s; {len(started)} candidate(s) "
            f"stopped at the bound, {len(stopped) - len(started)} not started: "
            f"{first.candidate.pipeline}: {first.error})"
        )

    def _remeasure(self, profile: DeviceProfile, front: list[Evaluation], *, final: bool) -> None:
        """Re-time the Original with ``front`` (and, when ``final``, every reference)
        interleaved (``search.remeasure``) and record it; a failure is recorded with its reason,
        never the run's end, and so is a final re-measurement that is off."""
        from petra_hw.search.remeasure import SAMPLES_NAME, remeasure

        if not self.settings.remeasure:
            if final:  # the value lines then say why they compare journaled figures
                self.remeasured_final = {"skipped": "the run was made with --no-remeasure"}
            return
        if self.original is None:
            return
        t = time.monotonic()
        try:
            record = remeasure(
                self.original,
                front,
                profile,
                self._calib_inputs(),
                final=final,
                references=list(self.references.values()) if final else (),
                samples_path=self.run_dir / SAMPLES_NAME if final else None,
            )
        except Exception as exc:
            log.warning("interleaved re-measurement failed: %s", exc)
            record = {"error": f"{type(exc).__name__}: {exc}"}
        record.update(
            generation=self.generation,
            elapsed_s=self.search_elapsed(),
            seconds=time.monotonic() - t,
        )
        if final:
            self.remeasured_final = record
        else:
            self.remeasured.append(record)

    def _calib_inputs(self) -> np.ndarray:
        """Real inputs to time on: the first calib samples (loaded once per session)."""
        if self._calib is None:
            from petra_hw.suite import DataContext, load_suite

            s = self.settings
            data_dir = Path(s.data_dir) if s.data_dir else None
            splits = load_suite(s.suite).read_splits(DataContext(data_dir, s.seed))
            self._calib = splits.calib.inputs(64).numpy()
        return self._calib

    def _evaluate_batch(self, executor: Executor, batch: list[Candidate]) -> list[Evaluation]:
        """One evaluation per candidate: rung by rung (``search.fidelity``) where the run has
        reduced rungs, else straight at full fidelity."""
        rungs = self.settings.fidelity_rungs
        if not rungs:
            return self._evaluate(executor, batch)
        assert self.objectives is not None
        mode = self.settings.mode
        halving = SuccessiveHalving(
            rungs,
            self.objectives,
            lambda c: mode == "untrained" or any(s.spec.trains for s in c.pipeline.steps),
        )
        # The front before this batch (its own rows excluded): a resume decides the same.
        hashes = {c.pipeline.hash for c in batch}
        before = [e for e in self.journal.values() if e.candidate.pipeline.hash not in hashes]
        front = pareto_front(before, self.objectives)
        return halving.run(batch, front, lambda todo: self._evaluate(executor, todo))

    def _evaluate_variants(
        self, executor: Executor, profile: DeviceProfile, evaluations: list[Evaluation]
    ) -> list[Evaluation]:
        """The backend variants of the batch's trained candidates (``search.variants``), each
        admitted by the time budget and timed out on its own, journaled as it finishes."""
        from petra_hw.search.variants import variant_candidates

        if not self.settings.variants:
            return []
        todo = variant_candidates(evaluations, profile, self.settings.backend)
        return self._evaluate(executor, todo) if todo else []

    def _arm_budget(self, executor: Executor, profile: DeviceProfile) -> None:
        """Give the executor the run's deadline and admission rule (a hard time budget), less
        a reserve for the final interleaved re-measurement of the front."""
        s = self.settings
        if s.budget_s is None or not hasattr(executor, "budget"):
            return
        reserve = 0.0
        if s.remeasure:  # the Original, a population's worth of front and every reference
            per_artifact = 2 * profile.measurement.min_time_s  # batch 1 and the largest batch
            artifacts = 1 + s.population + len(self.references)
            reserve = min(0.05 * s.budget_s, artifacts * per_artifact)
        deadline = time.monotonic() + s.budget_s - reserve - self.search_elapsed()
        executor.budget = BudgetGate(deadline, lambda c: expected_seconds(c, self.journal))

    def _build_references(self, executor: Executor, profile, space) -> None:
        """Peers and the training control, each journaled as it finishes; those already in the
        journal (a resumed run) are not rebuilt.  A failed one is kept with its reason, unless
        the environment failed (``infra``): then the run stops and resume builds it again."""
        from petra_hw.references import control_epochs, reference_candidates

        todo = [
            c
            for c in reference_candidates(profile.is_gpu, control_epochs(space))
            if c.reference not in self.references
        ]
        if not todo:
            return
        t = time.monotonic()
        try:
            for ev in executor.submit(todo):
                if ev.error_kind == INFRA:  # the environment's failure: rebuilt on resume
                    if (ev.error or "").startswith(DISK_FULL):
                        raise DiskFull(ev.error)
                    raise _InfraStop(f"reference {ev.candidate.reference}: {ev.error}")
                self.store.add_reference(self.run_id, ev)
                self.references[ev.candidate.reference] = ev
                self._report(ev)
        finally:
            self.references_s += time.monotonic() - t
            self.store.update_stats(self.run_id, **self._stats())

    # -- the loop -----------------------------------------------------------------------------
    def run(self) -> TuneResult:
        try:
            return self._run()
        except (_InfraStop, DiskFull) as exc:
            raise self._interrupted(exc) from None
        finally:
            self.store.close()
            self.lock.release()

    def _run(self) -> TuneResult:
        from petra_hw.plugins import load_plugins
        from petra_hw.profiles import check_host, load_profile
        from petra_hw.suite import load_suite

        s = self.settings
        load_plugins(s.plugins)
        s.check_registered()
        profile = load_profile(s.device)
        check_host(profile)
        suite = load_suite(s.suite)
        # energy is an objective wherever the device reports it (NVML on GPU profiles)
        self.objective_config = s.objective_config(suite.metric.higher_is_better, profile.nvml)
        if s.backend:
            from petra_hw.backend import check_supported, get_backend

            device_float = float_precision(profile.device_kind, profile.precisions)
            check_supported(get_backend(s.backend), profile, device_float)
        self.store.set_status(self.run_id, "running")
        executor = make_executor(
            s.executor,
            s.eval_context(self.run_dir, self.objective_config),
            workers=s.workers,
            timeout_s=s.candidate_timeout_s(),
            address=s.address,
        )
        try:
            result = self._search(executor, profile)
        except KeyboardInterrupt:
            self.store.set_status(self.run_id, "interrupted")
            raise
        except (_InfraStop, DiskFull):
            raise  # the environment failed: interrupted (see run), never "failed"
        except BaseException:
            self.store.set_status(self.run_id, "failed")
            raise
        finally:
            executor.close()
            try:
                self.store.update_stats(self.run_id, **self._stats())
            except DiskFull:
                log.info("run %s: stats not updated (disk full)", self.run_id)
        return result

    def _interrupted(self, exc: Exception) -> UserError:
        """Mark the run interrupted after a failure of the environment and say how to go on."""
        full = isinstance(exc, DiskFull) or disk_full(exc, self.run_dir)
        try:
            if full:  # room for the status update, on a fresh connection (SQLite gave up on this)
                self.lock.release_reserve()
                self.store.close()
                self.store = Store(self.run_dir / JOURNAL_NAME)
            self.store.set_status(self.run_id, "interrupted")
        except DiskFull:
            log.info("run %s: status not updated (disk full)", self.run_id)
        fix = "free space" if full else "fix it"
        what = f"the disk holding {self.run_dir} is full" if full else f"environment failure: {exc}"
        return (DiskFull if full else UserError)(
            f"{what}; run {self.run_id} is interrupted: {fix}, then "
            f"petra-hw tune --resume {self.run_dir}"
        )

    def _search(self, executor: Executor, profile) -> TuneResult:
        from petra_hw.search.strategy import STRATEGIES, Stopper, get_strategy

        s = self.settings
        original = Candidate(ORIGINAL, 0, None, "original")
        done = self.journal.get(original.id)
        t = time.monotonic()
        self.original = self._evaluate(executor, [original])[0]
        if done is None:  # a resumed run read it from the journal: no time spent now
            self.original_s += time.monotonic() - t
            self.store.update_stats(self.run_id, **self._stats())
        if not self.original.ok:
            raise UserError(
                f"the Original (uncompressed) model failed on {profile.name}: "
                f"{self.original.error_kind}: {self.original.error}"
            )
        objectives = Objectives(self.objective_config, self.original)
        self.objectives = objectives
        executor.context = dataclasses.replace(executor.context, original=self.original)
        space = s.search_space(profile)  # the journaled spec (older runs: recomputed here)
        if s.references:
            self._build_references(executor, profile, space)
        self._arm_budget(executor, profile)  # the Original and references are not charged
        kwargs: dict[str, Any] = {"objectives": objectives}
        if STRATEGIES[s.strategy].uses_population:
            kwargs["population_size"] = max(2, s.population)
        strategy = get_strategy(s.strategy, space, s.seed, **kwargs)
        snapshot = self.store.load_state(self.run_id)
        if snapshot is not None:
            strategy.load_state_dict(snapshot[1])
        self.guide = strategy.guide = self._make_guide(strategy, objectives, executor.context)
        self.generation = strategy.generation
        self.hv = strategy.hv_history[-1] if strategy.hv_history else None
        stopper = Stopper(
            max_generations=s.generations,
            max_evaluations=s.evaluations,
            time_budget_s=s.budget_s,
            target=s.target(),
            hv_stagnation_generations=s.stagnation,
        )
        batch = strategy.pending  # asked before an interruption: re-submit (journal first)
        last: list[Evaluation] = []
        while True:
            if not batch:
                reason = stopper.reason(strategy, self.search_elapsed(), last)
                if reason:
                    break
                n = s.population
                remaining = stopper.remaining_evaluations(strategy)
                if remaining is not None:
                    n = min(n, remaining)
                batch = strategy.ask(n)
                if not batch:
                    reason = (
                        stopper.reason(strategy, self.search_elapsed(), last)
                        or "the strategy asked nothing"
                    )
                    break
                self.store.save_state(self.run_id, strategy.generation, strategy.state_dict())
            try:
                last = self._evaluate_batch(executor, batch)
                last += self._evaluate_variants(executor, profile, last)
            except _BudgetStop as stop:
                reason = str(stop)
                break
            if self.guide is not None:  # every journaled row, reduced rungs included, in the
                self.guide.observe(self.journal.values())  # order a resume reads them back
            strategy.tell(last)
            self.generation = strategy.generation
            self.hv = strategy.hv_history[-1] if strategy.hv_history else None
            self.store.save_state(self.run_id, strategy.generation, strategy.state_dict())
            if self.hv is not None:
                self.store.add_hypervolume(
                    self.run_id,
                    evaluations=len(self.journal),
                    generation=strategy.generation,
                    value=self.hv,
                    elapsed_s=self.search_elapsed(),
                )
            if stopper.reason(strategy, self.search_elapsed(), last) is None:
                self._remeasure(profile, strategy.archive, final=False)
            self._report(None)
            batch = []
        log.info("run %s stops: %s", self.run_id, reason)
        self.store.update_stats(self.run_id, **self._stats(), stop_reason=reason)
        self.store.set_status(self.run_id, "finished")
        # full-fidelity rows only (reduced rungs and budget stops are in the journal and stats)
        evaluations = [
            e
            for e in self.store.evaluations(self.run_id)
            if e.full_fidelity and e.error_kind != BUDGET
        ]
        front = pareto_front(
            [e for e in evaluations if e.candidate.pipeline.steps] + [self.original], objectives
        )
        self._remeasure(profile, front, final=True)
        self.store.update_stats(self.run_id, **self._stats())
        return TuneResult(
            run_id=self.run_id,
            run_dir=self.run_dir,
            original=self.original,
            evaluations=evaluations,
            references=list(self.references.values()),
            front=front,
            objectives=objectives,
            stop_reason=reason,
            stats=self.store.get_run(self.run_id).stats,
        )
