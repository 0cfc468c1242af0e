"""The Python API: ``tune``, ``compile`` and ``profile`` from a training script or a notebook.

The CLI is a thin layer over these functions (``petra_hw.commands``): it parses arguments, prints
with rich, and calls the same code.  A suite argument is a ``Suite`` object (``Suite.from_torch``,
or any suite), a bundled suite name, a path to a suite file, or a reference ``module:NAME``.

A suite object reaches worker processes as a reference (``petra_hw.suite_ref``), never pickled.
With ``workers=1`` (the default) and no executor named, a suite object is evaluated in this
process (``petra_hw.search.inprocess``): that path works for any suite, a notebook's included.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from petra_hw.errors import UserError
from petra_hw.suite import Suite

if TYPE_CHECKING:
    from petra_hw.assess import Assessment
    from petra_hw.baseline import Baseline
    from petra_hw.deploy import Exported
    from petra_hw.pipeline import Pipeline
    from petra_hw.precision import PrecisionIntent
    from petra_hw.profiler import Measurement
    from petra_hw.profiles import DeviceProfile
    from petra_hw.search.tune import TuneProgress, TuneResult, TuneSettings
    from petra_hw.search.types import Evaluation
    from petra_hw.value import Figures

log = logging.getLogger(__name__)

SuiteLike = Suite | str | Path
DEFAULT_BUDGET_S = 180.0  # a tune with no stopping rule given
_BUDGET = re.compile(r"(\d+(?:\.\d+)?)([hms]?)")
_UNIT_S = {"h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
# Friendly names of TuneSettings fields (the CLI's --budget and --timeout)
_ALIASES = {"budget": "budget_s", "timeout": "timeout_s"}


def budget_seconds(budget: str | float) -> float:
    """Seconds from a number or ``600``, ``600s``, ``10m``, ``1h``, ``1h30m``."""
    if isinstance(budget, (int, float)) and not isinstance(budget, bool):
        seconds = float(budget)
    else:
        text = str(budget).strip().lower()
        parts = _BUDGET.findall(text)
        if not text or "".join(n + u for n, u in parts) != text:
            raise UserError(f"bad budget {budget!r}: use e.g. 600s, 10m, 1h or 1h30m")
        seconds = sum(float(n) * _UNIT_S[u] for n, u in parts)
    if not seconds > 0:
        raise UserError(f"bad budget {budget!r}: must be positive")
    return seconds


# -- suites and devices ------------------------------------------------------------------------
def resolve_suite(suite: SuiteLike) -> tuple[Suite, str, str | None]:
    """(the suite, the string workers load it by, why it cannot travel or None)."""
    from petra_hw import suite_ref
    from petra_hw.suite import load_suite

    if isinstance(suite, Suite):
        if suite.origin is None and suite.source.endswith(".py") and Path(suite.source).is_file():
            return suite, suite.source, None  # a suite file's own SUITE
        ref, problem = suite_ref.reference(suite)
        return suite, ref, problem
    if not isinstance(suite, (str, Path)):
        raise UserError(
            f"suite must be a Suite, a bundled name or a path, not {type(suite).__name__}"
        )
    return load_suite(str(suite)), str(suite), None


def resolve_device(device: str | DeviceProfile) -> DeviceProfile:
    """A profile object as is; a name, path or ``auto`` loaded and checked against this host
    (notes are logged as warnings)."""
    from petra_hw.profiles import DeviceProfile, check_host, load_profile

    if isinstance(device, DeviceProfile):
        return device
    profile = load_profile(str(device))
    for note in check_host(profile):
        log.warning("%s", note)
    return profile


def _device_text(device: str | DeviceProfile) -> str:
    from petra_hw.profiles import DeviceProfile

    if isinstance(device, DeviceProfile):
        return device.source or device.name
    return str(device)


# -- tune ----------------------------------------------------------------------------------------
@dataclass
class Run:
    """One finished search: its front, its best artifacts within the quality budget, its report
    and its deployment folders.  ``result`` holds everything the search returned."""

    result: TuneResult

    @property
    def run_dir(self) -> Path:
        return self.result.run_dir

    @property
    def front(self) -> list[Evaluation]:
        """The Pareto front (the Original included), lowest latency first."""
        return sorted(self.result.front, key=lambda e: e.objectives.get("latency_ms", 0.0))

    @property
    def evaluations(self) -> list[Evaluation]:
        return self.result.evaluations

    @property
    def original(self) -> Evaluation:
        return self.result.original

    @property
    def references(self) -> list[Evaluation]:
        return self.result.references

    @property
    def figures(self) -> Figures:
        """The timed figures ``best`` and the value lines rank on: the run's final interleaved
        re-measurement, or the journaled figures with the reason (``Figures.note``)."""
        from petra_hw.value import final_figures

        record = self.result.stats.get("remeasured_final")
        return final_figures(record, self.result.front, self.result.references)

    def best(
        self, objective: str = "latency_ms", max_quality_drop: float | None = None
    ) -> Evaluation | None:
        """The front point with the best ``objective`` (latency, size, throughput) whose val
        quality drop is within ``max_quality_drop`` (default: the run's quality budget), ranked
        on ``figures`` as ``petra-hw export --best`` ranks; the journaled evaluation is returned."""
        from petra_hw.value import best_within, objective_name, quality_budget

        try:
            name = objective_name(objective)
        except ValueError as exc:
            raise UserError(f"best({objective!r}): {exc}") from None
        if max_quality_drop is not None and not max_quality_drop >= 0:
            raise UserError("max_quality_drop must be >= 0")
        config = self.result.objectives.config
        budget = quality_budget(
            config.max_quality_drop if max_quality_drop is None else max_quality_drop
        )
        pool = self.figures.apply(self.result.front)
        chosen = best_within(pool, name, self.result.objectives, budget)
        if chosen is None:
            return None
        return next(e for e in self.result.front if e.candidate.id == chosen.candidate.id)

    def report(self, path: str | Path | None = None) -> dict[str, Path]:
        """Write report.json / report.md / report.html (default: into the run folder)."""
        from petra_hw.report import write_report, write_reports

        return write_report(self.run_dir) if path is None else write_reports([self.run_dir], path)

    def export(
        self,
        path: str | Path,
        *,
        best: str | None = None,
        candidates: list[str] | None = None,
    ) -> list[Exported]:
        """Deployment folders under ``path`` (new or empty): the front, the given candidate ids,
        or the best artifact within the run's quality budget for ``best`` (latency, size,
        throughput)."""
        from petra_hw.deploy import export_runs
        from petra_hw.value import objective_name

        try:
            name = objective_name(best) if best else None
        except ValueError as exc:
            raise UserError(f"export(best={best!r}): {exc}") from None
        return export_runs([self.run_dir], path, candidates, name)


def tune_settings(suite: str, device: str, options: dict[str, Any]) -> TuneSettings:
    """``TuneSettings`` from the user's options (field names, or ``budget`` / ``timeout``)."""
    from petra_hw.search.tune import TuneSettings

    fields = {f.name for f in dataclasses.fields(TuneSettings)} - {"suite", "device"}
    given: dict[str, Any] = {}
    for key, value in options.items():
        name = _ALIASES.get(key, key)
        if name not in fields:
            known = sorted((fields - set(_ALIASES.values())) | set(_ALIASES))
            raise UserError(f"unknown tune option '{key}' (known: {', '.join(known)})")
        if value is not None:
            given[name] = value
    if "budget_s" in given:
        given["budget_s"] = budget_seconds(given["budget_s"])
    for flag in ("max_quality_drop", "target_quality_drop"):
        if flag in given and not given[flag] >= 0:
            raise UserError(f"{flag} must be >= 0")
    if isinstance(given.get("data_dir"), Path):
        given["data_dir"] = str(given["data_dir"])
    if not {"budget_s", "generations", "evaluations"} & set(given):
        given["budget_s"] = DEFAULT_BUDGET_S
    return TuneSettings(suite=suite, device=device, **given)


def tune(
    suite: SuiteLike = "digits",
    device: str | DeviceProfile = "auto",
    budget: str | float | None = None,
    *,
    out: str | Path = "runs",
    progress: Callable[[TuneProgress], None] | None = None,
    **options: Any,
) -> Run:
    """Search compression pipelines for ``suite`` on ``device``; returns the finished ``Run``.

    ``options`` are the CLI's (``TuneSettings`` fields): ``evaluations``, ``generations``,
    ``workers``, ``executor`` ("local", "ray", "inprocess"), ``address``, ``strategy``,
    ``max_quality_drop``, ``objectives``, ``space`` (a dict), ``mode``, ``seed``, ...
    ``budget`` is a time ("10m"; default 3 minutes when no other stopping rule is given).
    """
    from petra_hw.search import inprocess  # noqa: F401 - registers the in-process executor
    from petra_hw.search.tune import tune as run_tune

    loaded, ref, problem = resolve_suite(suite)
    if budget is not None:
        options["budget_s"] = budget
    settings = tune_settings(ref, _device_text(device), options)
    if loaded.pretrained and settings.mode == "untrained":
        raise UserError(
            f"suite {loaded.name} brings its trained model: mode 'untrained' needs a suite that "
            "trains its model (a suite file with build_model and a TrainConfig)"
        )
    executor = options.get("executor")
    if executor is None and isinstance(suite, Suite) and settings.workers == 1:
        executor = inprocess.NAME  # nothing travels: works for every suite object
    settings = dataclasses.replace(settings, executor=executor or settings.executor)
    if problem and settings.executor != inprocess.NAME:
        raise UserError(
            f"suite {loaded.name} cannot travel to worker processes: {problem}. Define it in a "
            ".py module (a module-level variable, or a function without arguments that returns "
            "it), or use workers=1 (evaluated in this process)"
        )
    return Run(run_tune(settings, Path(out), progress))


def resume(
    run: str | Path,
    *,
    out: str | Path = "runs",
    progress: Callable[[TuneProgress], None] | None = None,
    suite: Suite | None = None,
    **overrides: Any,
) -> Run:
    """Continue an interrupted run (``overrides``: executor, workers, address).  A run of a suite
    made in a notebook resumes in Python with that suite given again (``suite=``)."""
    from petra_hw import suite_ref
    from petra_hw.search import inprocess  # noqa: F401 - a run may use the in-process executor
    from petra_hw.search.store import JOURNAL_NAME, Store
    from petra_hw.search.tune import find_run
    from petra_hw.search.tune import resume as run_resume

    folder = find_run(str(run), Path(out))
    if suite is not None:
        with Store(folder / JOURNAL_NAME) as store:
            journaled = store.get_run(folder.name).settings["suite"]
        suite_ref.remember(journaled, suite)
    return Run(run_resume(str(folder), Path(out), progress, **overrides))


# -- compile -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompiledArtifact:
    """A compiled, measured artifact folder: ``metrics`` (quality through the artifact, latency,
    throughput, size, parity), ``path``, and ``runner()`` to run it."""

    path: Path
    pipeline: Pipeline
    intent: PrecisionIntent
    assessment: Assessment
    baseline_metrics: dict[str, float]
    step_notes: list[str] = field(default_factory=list)  # what steps skipped, and why
    warnings: list[str] = field(default_factory=list)  # e.g. slower than the Original

    @property
    def metrics(self) -> dict[str, Any]:
        row = self.assessment.row()
        row.pop("artifact", None)
        return row

    @property
    def measurement(self) -> Measurement:
        return self.assessment.measurement

    def runner(self):
        """The loaded artifact (hashes verified): ``runner(batch) -> outputs``."""
        from petra_hw.backend import load_runner

        return load_runner(self.path)


def compile(  # noqa: A001 - the API's verb, as petra_hw.compile
    suite: SuiteLike,
    pipeline: str | Pipeline,
    device: str | DeviceProfile = "auto",
    backend: str | None = None,
    *,
    out: str | Path | None = None,
    seed: int = 0,
    data_dir: str | Path | None = None,
    fidelity: float = 1.0,
) -> CompiledArtifact:
    """Apply ``pipeline`` to the suite's baseline, compile it for ``device`` (its first backend
    that can, or ``backend``), and measure it.  ``out``: a new or empty folder (default: a fresh
    one under reports/); nothing is left behind when it fails.  ``fidelity`` < 1 trains each
    training step's epochs on that share of their batches (a quick look at a large data set)."""
    from petra_hw.backend import choose_backend
    from petra_hw.baseline import get_baseline
    from petra_hw.commands.common import output_or_nothing
    from petra_hw.pipeline import Pipeline, parse_pipeline
    from petra_hw.precision import deployed_intent

    if not 0.0 < float(fidelity) <= 1.0:
        raise UserError(f"fidelity must be in (0, 1], not {fidelity!r}")
    pipe = pipeline if isinstance(pipeline, Pipeline) else parse_pipeline(str(pipeline))
    profile = resolve_device(device)
    intent = deployed_intent(pipe, profile)
    chosen = choose_backend(profile, intent, backend)
    loaded = resolve_suite(suite)[0]
    folder = Path(out) if out is not None else None
    with output_or_nothing(folder, Path("reports"), f"compile-{loaded.name}") as where:
        baseline = get_baseline(loaded, seed, Path(data_dir) if data_dir else None)
        return compile_pipeline(pipe, profile, intent, chosen, baseline, where, seed, fidelity)


def compile_pipeline(
    pipeline: Pipeline,
    profile: DeviceProfile,
    intent: PrecisionIntent,
    backend: str,
    baseline: Baseline,
    out: Path,
    seed: int = 0,
    fidelity: float = 1.0,
) -> CompiledArtifact:
    """``compile``'s work once everything is resolved (the CLI calls this too)."""
    from petra_hw.assess import compile_model, judge
    from petra_hw.baseline import predict_split
    from petra_hw.value import slower_than_original

    suite, splits, model = baseline.suite, baseline.splits, baseline.model
    notes: list[str] = []
    if pipeline.steps:  # apply leaves the deploying quantization step to the compiler
        from petra_hw.apply import apply

        applied = apply(
            pipeline,
            baseline,
            suite,
            channel_multiple=profile.channel_multiple,
            seed=seed,
            fidelity=fidelity,
        )
        model, notes = applied.model, applied.notes
    reference = {n: predict_split(baseline.model, splits.by_name(n)) for n in ("val", "test")}
    artifact = compile_model(
        model, suite, splits, profile, backend, intent, out, pipeline=pipeline.to_json()
    )
    assessment = judge(artifact, suite, splits, profile, reference)
    warnings: list[str] = []
    if pipeline.steps or intent.precision != "fp32":
        original_ms = original_latency_ms(baseline, profile, backend)
        slower = slower_than_original(assessment.measurement.latency_ms, original_ms)
        warnings = [slower] if slower else []
        extra = {"original": {"backend": backend, "precision": "fp32", "latency_ms": original_ms}}
        assessment.artifact = assessment.artifact.update(
            **extra, step_notes=notes, warnings=warnings
        )
    return CompiledArtifact(
        out, pipeline, intent, assessment, dict(baseline.metrics), notes, warnings
    )


def original_latency_ms(baseline: Baseline, profile: DeviceProfile, backend: str) -> float:
    """The Original's batch-1 p50 latency on ``backend`` at fp32, measured as every candidate is
    (its artifact is compiled into a temporary folder and dropped)."""
    import tempfile

    from petra_hw.assess import compile_model, judge

    with tempfile.TemporaryDirectory(prefix="petra-original-") as tmp:
        artifact = compile_model(
            baseline.model, baseline.suite, baseline.splits, profile, backend, "fp32", Path(tmp)
        )
        assessed = judge(artifact, baseline.suite, baseline.splits, profile, None, ("val",))
        return float(assessed.measurement.latency_ms)


# -- profile -----------------------------------------------------------------------------------
def profile_plan(
    profile: DeviceProfile,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
) -> tuple[list[tuple[str, str]], list[str]]:
    """(backend, precision) pairs to measure on ``profile`` and the reasons others are skipped.
    A backend or precision the user named that cannot run is refused instead."""
    from petra_hw.backend import check_supported, get_backend

    names = backends or list(profile.backends)
    unknown = [b for b in names if b not in profile.backends]
    if unknown:
        raise UserError(
            f"backend '{unknown[0]}' is not a backend of device '{profile.name}' "
            f"({', '.join(profile.backends)})"
        )
    plan, skipped = [], []
    for name in names:
        try:
            chosen = get_backend(name)
            reason = chosen.available(profile)
        except UserError as exc:
            chosen, reason = None, str(exc)
        if reason:
            if backends:
                raise UserError(f"backend '{name}' is not available here: {reason}")
            skipped.append(f"skip {name}: {reason}")
            continue
        wanted = precisions or [p for p in chosen.precisions if p in profile.precisions]
        for precision in wanted:
            try:
                check_supported(chosen, profile, precision)
            except UserError as exc:
                if precisions:
                    raise
                skipped.append(f"skip {name} {precision}: {exc}")
                continue
            plan.append((name, precision))
    if not plan:
        raise UserError(f"nothing to measure on device '{profile.name}'")
    return plan, skipped


def profile_baseline(
    baseline: Baseline,
    profile: DeviceProfile,
    plan: list[tuple[str, str]],
    out: Path,
    fresh_process: bool = False,
    on_start: Callable[[str, str], None] | None = None,
) -> list[CompiledArtifact]:
    """Compile and measure the baseline for each (backend, precision) of ``plan`` into
    ``out/<backend>-<precision>``."""
    from petra_hw.assess import compile_model, judge
    from petra_hw.baseline import predict_split
    from petra_hw.pipeline import Pipeline
    from petra_hw.precision import PrecisionIntent

    suite, splits = baseline.suite, baseline.splits
    reference = {n: predict_split(baseline.model, splits.by_name(n)) for n in ("val", "test")}
    results = []
    for name, precision in plan:
        if on_start is not None:
            on_start(name, precision)
        folder = out / f"{name}-{precision}"
        artifact = compile_model(
            baseline.model, suite, splits, profile, name, precision, folder,
            pipeline=Pipeline().to_json(),
        )  # fmt: skip
        assessment = judge(
            artifact, suite, splits, profile, reference, fresh_process=fresh_process or None
        )
        results.append(
            CompiledArtifact(
                folder, Pipeline(), PrecisionIntent(precision), assessment, dict(baseline.metrics)
            )
        )
    return results


def profile(
    target: SuiteLike = "digits",
    device: str | DeviceProfile = "auto",
    *,
    backends: list[str] | None = None,
    precisions: list[str] | None = None,
    out: str | Path | None = None,
    fresh_process: bool = False,
    seed: int = 0,
    data_dir: str | Path | None = None,
) -> list[CompiledArtifact] | Measurement:
    """Measure a suite's model on each backend and precision of ``device`` (one artifact each,
    under ``out``), or re-measure an artifact folder (``target`` a folder with a manifest)."""
    from petra_hw.artifact import MANIFEST
    from petra_hw.baseline import get_baseline
    from petra_hw.commands.common import new_out_dir

    prof = resolve_device(device)
    if not isinstance(target, Suite) and (Path(target) / MANIFEST).is_file():
        return remeasure(Path(target), prof, fresh_process)
    plan, skipped = profile_plan(prof, backends, precisions)
    for line in skipped:
        log.info("%s", line)
    loaded = resolve_suite(target)[0]
    baseline = get_baseline(loaded, seed, Path(data_dir) if data_dir else None)
    folder = new_out_dir(Path(out) if out else None, Path("reports"), f"profile-{loaded.name}")
    return profile_baseline(baseline, prof, plan, folder, fresh_process)


def remeasure(path: Path, profile: DeviceProfile, fresh_process: bool = False) -> Measurement:
    """Time an existing artifact folder again (hashes verified first)."""
    from petra_hw.artifact import read_artifact
    from petra_hw.profiler import measure_artifact, measure_fresh_process

    artifact = read_artifact(path)
    return (measure_fresh_process if fresh_process else measure_artifact)(artifact.path, profile)
