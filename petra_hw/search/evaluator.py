"""Evaluate one candidate pipeline on one profile: apply, compile, judge, score.

``evaluate_candidate`` never raises and never substitutes the original model: every failure
becomes an ``Evaluation`` with ``error`` and ``error_kind``:

- ``no-op``: a step changed nothing (LR decomposed no layer, Pr removed no channel, a criterion
  needs layers the model lacks): the candidate is the shorter pipeline again, so it is neither
  compiled nor timed (``petra_hw.steps.effects``);
- ``step``: a compression step raised; ``nan``: training diverged or the model/artifact outputs
  non-finite values; ``cut``: a training step was hopeless after its first epoch (see ``CutRule``);
- ``compile``: no backend of the profile compiles the pipeline's precision, or compiling failed;
- ``measure``: loading, scoring or timing the artifact failed; ``setup``: the worker could not
  load the suite or baseline.  (``timeout`` and ``crash`` are recorded by the executors.)
- ``infra``: the environment failed, not the candidate (a full disk, a machine lock that cannot be
  taken, NNCF's extension set-up); its message starts with ``disk full: `` for a full disk.  Tune
  stops the run as ``interrupted`` and a resume evaluates the candidate again.

A backend variant (``Candidate.variant``, ``petra_hw.search.variants``) skips the steps: it
compiles the model its parent's evaluation trained, held in this worker's memory (the last
``TRAINED_KEPT``) or restored from the prefix cache, and is never trained again; a model held in
neither is the variant's ``compile`` error.

Phases and locks: applying steps and compiling run under a *shared* compute lock; judging
(quality through the runner, then the profiler's timing) runs under the *exclusive* one, so a
measurement never overlaps training or compiling in another worker on this machine (see
``computing`` / ``measuring``).  Time spent waiting for these locks is reported to
``lock_wait_listener`` so that a local executor's timeout counts only the candidate's compute.

Fault injection for tests: ``PETRA_HW_FAULT`` (read only by ``fault_from_env``, into
``EvalContext.fault``) makes every candidate with at least one step fail on purpose:
``step`` (raises while applying), ``export`` (raises while compiling), ``nan`` (NaN weights, so a
training step meets a NaN loss), ``timeout`` (hangs), ``crash`` (the worker is SIGKILLed, as by the
OOM killer), ``segfault`` (dereferences NULL), ``diskfull`` (raises ENOSPC, as a full disk
does).  ``KIND@Step`` limits it to pipelines containing that step kind, e.g. ``nan@Tr``, and
``KIND@backend`` to the backend variants compiled for that backend, e.g. ``timeout@openvino``.  The
Original is never faulted: every objective is normalised against it.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import errno
import fcntl
import json
import logging
import math
import os
import shutil
import signal
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petra_hw.assess import compile_model, judge
from petra_hw.backend import choose_backend as _choose_backend
from petra_hw.baseline import Baseline, predict, predict_split
from petra_hw.errors import UserError
from petra_hw.fsutil import disk_full
from petra_hw.nncf_extension import ExtensionBuildError
from petra_hw.pipeline import Pipeline, Step
from petra_hw.plugins import load_plugins
from petra_hw.precision import PrecisionIntent, deployed_intent
from petra_hw.profiler import LOCK_PATH
from petra_hw.profiles import DeviceProfile, load_profile
from petra_hw.references import get_recipe
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.types import Candidate, Evaluation
from petra_hw.steps.effects import NoOpStep
from petra_hw.suite import DataContext, Splits, Suite, load_suite
from petra_hw.training import (
    SuiteLoss,
    TrainingError,
    compute_loss,
    evaluate_loss,
    make_loss,
)

log = logging.getLogger(__name__)

FAULT_ENV = "PETRA_HW_FAULT"
FAULTS = ("step", "export", "nan", "timeout", "crash", "segfault", "diskfull")
INFRA = "infra"
NO_OP = "no-op"  # a step changed nothing (``steps.effects``)
DISK_FULL = "disk full: "  # how an infra error caused by a full disk begins
MODES = ("pretrained", "untrained")
COMPUTE_LOCK = LOCK_PATH.with_name("petra-hw-compute.lock")
GATE_LOCK = LOCK_PATH.with_name("petra-hw-gate.lock")
SAMPLES_FILE = "measurement.json"


class InjectedFault(RuntimeError):
    """Raised by the ``PETRA_HW_FAULT`` hook."""


class CandidateCut(TrainingError):
    """A training step whose monitor loss after its first epoch is hopeless."""


class _Failed(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True)
class CutRule:
    """A training step is hopeless when its monitor loss after epoch 1 exceeds both
    ``factor`` x the starting model's loss and ``chance_fraction`` x a constant predictor's loss
    (the second keeps a low-loss baseline from cutting every candidate that pruned hard)."""

    factor: float = 3.0
    chance_fraction: float = 0.5


@dataclass(frozen=True)
class EvalContext:
    """What a worker needs to evaluate candidates of one run; picklable, paths absolute."""

    suite: str  # bundled name or path to suite.py
    profile: str  # profile name or path to its TOML
    run_dir: Path
    baseline_weights: Path  # state dict every candidate starts from
    seed: int = 0
    data_dir: Path | None = None
    mode: str = "pretrained"  # "untrained": each candidate trains the model first (see below)
    backend: str | None = None  # pin one backend of the profile
    objectives: ObjectiveConfig = field(default_factory=ObjectiveConfig)  # holds the constraints
    original: Evaluation | None = None  # the Original's evaluation, once known
    cut: CutRule | None = field(default_factory=CutRule)
    cache_bytes: int = 1 << 30  # prefix cache size under run_dir/prefix-cache
    prefix_reuse: bool = True  # False: every candidate recomputes its whole pipeline
    train_threads: int = 0  # torch threads for training in this worker (0: leave as is)
    fault: str | None = None
    plugins: tuple[str, ...] = ()  # imported first in every process (petra_hw.plugins)


def fault_from_env() -> str | None:
    """The one place ``PETRA_HW_FAULT`` is read; unknown values are refused."""
    spec = os.environ.get(FAULT_ENV, "").strip()
    if not spec:
        return None
    kind = spec.partition("@")[0]
    if kind not in FAULTS:
        raise UserError(
            f"{FAULT_ENV}={spec!r}: choose one of {', '.join(FAULTS)} (optionally KIND@Step)"
        )
    return spec


def _active_fault(spec: str | None, candidate: Candidate) -> str | None:
    pipeline = candidate.pipeline
    if not spec or not pipeline.steps:
        return None
    kind, _, only = spec.partition("@")
    if candidate.variant:  # ``KIND@<backend>`` strikes that backend's variants only
        return kind if only in ("", candidate.variant) else None
    if only and all(s.kind != only for s in pipeline.steps):
        return None
    return kind


def _fire(fault: str | None) -> None:
    """Faults that strike while steps are applied."""
    if fault == "step":
        raise InjectedFault(f"injected step failure ({FAULT_ENV}=step)")
    if fault == "timeout":
        time.sleep(24 * 3600)  # the executor's per-candidate timeout kills us first
    if fault == "crash":
        os.kill(os.getpid(), signal.SIGKILL)
    if fault == "segfault":
        ctypes.string_at(0)
    if fault == "diskfull":
        raise OSError(errno.ENOSPC, "No space left on device (injected)")


# -- locks ---------------------------------------------------------------------------------
class LockWait(OSError):
    """A machine-wide lock could not be taken: the environment, not the candidate."""


# Called with True when this process starts waiting for a machine-wide lock and False once it
# holds it; a local worker forwards both to the executor, whose timeout then counts only the
# candidate's own compute.
lock_wait_listener: Callable[[bool], None] | None = None


@contextlib.contextmanager
def _flock(path: Path, mode: int) -> Iterator[None]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        f = open(path, "a+")  # noqa: SIM115 - closed below, after the lock is released
    except OSError as exc:
        raise LockWait(exc.errno, f"cannot open the machine lock {path}: {exc.strerror}") from exc
    with f:
        try:
            fcntl.flock(f, mode | fcntl.LOCK_NB)
        except BlockingIOError:
            if lock_wait_listener is not None:
                lock_wait_listener(True)
            try:
                fcntl.flock(f, mode)
            finally:
                if lock_wait_listener is not None:
                    lock_wait_listener(False)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def computing() -> Iterator[None]:
    """Shared hold on the compute lock while training or compiling.

    New holders first pass a turnstile (the gate lock) that a waiting measurement keeps closed,
    so measurements are not starved by workers that keep starting new work.
    """
    stack = contextlib.ExitStack()
    with _flock(GATE_LOCK, fcntl.LOCK_EX):
        stack.enter_context(_flock(COMPUTE_LOCK, fcntl.LOCK_SH))
    with stack:
        yield


@contextlib.contextmanager
def measuring() -> Iterator[None]:
    """Exclusive hold: waits until no worker on this machine trains or compiles."""
    with _flock(GATE_LOCK, fcntl.LOCK_EX), _flock(COMPUTE_LOCK, fcntl.LOCK_EX):
        yield


# -- per-worker state ----------------------------------------------------------------------
@dataclass
class _Env:
    suite: Suite
    profile: DeviceProfile
    baseline: Baseline
    original_outputs: dict[str, np.ndarray] | None  # the Original's FP32 outputs, for parity
    # loss setting -> (starting model loss, constant predictor loss) on calib
    base_losses: dict[str, tuple[float, float]] = field(default_factory=dict)
    caches: dict[Path, object] = field(default_factory=dict)  # run folder -> its PrefixCache


_ENVS: dict[tuple, _Env] = {}
# (run folder, candidate id) -> the trained model of a full-fidelity candidate this worker
# evaluated, kept for its backend variants (``petra_hw.search.variants``); the most recent
# ``TRAINED_KEPT`` (a generation's worth) stay.
_TRAINED: OrderedDict[tuple[Path, str], nn.Module] = OrderedDict()
TRAINED_KEPT = 16


def _load_env(ctx: EvalContext) -> _Env:
    """Suite, profile, splits and the starting model, loaded once per worker process."""
    key = (ctx.suite, ctx.profile, str(ctx.baseline_weights), ctx.seed, str(ctx.data_dir), ctx.mode)
    if key in _ENVS:
        return _ENVS[key]
    suite = load_suite(ctx.suite)
    profile = load_profile(ctx.profile)
    splits = suite.read_splits(DataContext(ctx.data_dir, ctx.seed))
    model = suite.build_model()
    model.load_state_dict(torch.load(ctx.baseline_weights, weights_only=True, map_location="cpu"))
    model.eval()
    baseline = Baseline(suite, model, splits, ctx.seed, {}, cached=True)
    original_outputs = None
    if ctx.mode == "pretrained":
        original_outputs = {n: predict_split(model, splits.by_name(n)) for n in ("val", "test")}
    env = _Env(suite, profile, baseline, original_outputs)
    _ENVS[key] = env
    return env


def _prefix_cache(env: _Env, ctx: EvalContext, fault: str | None):
    """The run's prefix cache (one per run folder: a Ray worker may serve several runs), or None
    when reuse is off or a fault is injected (a faulted model must not enter the cache)."""
    if fault or not ctx.prefix_reuse:
        return None
    if ctx.run_dir not in env.caches:
        from petra_hw.apply import PrefixCache

        env.caches[ctx.run_dir] = PrefixCache(ctx.run_dir / "prefix-cache", ctx.cache_bytes)
    return env.caches[ctx.run_dir]


def choose_backend(
    profile: DeviceProfile, intent: PrecisionIntent, pinned: str | None = None
) -> str:
    """``petra_hw.backend.choose_backend``, with the refusal recorded as a compile error."""
    try:
        return _choose_backend(profile, intent, pinned)
    except UserError as exc:
        raise _Failed("compile", str(exc)) from None


def deployable_precisions(profile: DeviceProfile, pinned: str | None = None) -> tuple[str, ...]:
    """The profile's precisions that an available backend (or the pinned one) compiles here."""
    usable = []
    for precision in profile.precisions:
        try:
            choose_backend(profile, PrecisionIntent(precision), pinned)
        except _Failed:
            continue
        usable.append(precision)
    return tuple(usable)


# -- early cut -----------------------------------------------------------------------------
def _losses(env: _Env, loss_name: str) -> tuple[float, float]:
    """(starting model's calib loss, a constant predictor's calib loss) for one loss setting."""
    if loss_name not in env.base_losses:
        suite, splits = env.suite, env.baseline.splits
        loss_fn = make_loss(loss_name, suite.default_loss)
        start = evaluate_loss(env.baseline.model, splits.calib, loss_fn)
        y = splits.calib.targets()
        if isinstance(loss_fn, SuiteLoss):  # a suite's own objective has no constant predictor
            env.base_losses[loss_name] = (start, 0.0)
            return env.base_losses[loss_name]
        if isinstance(loss_fn, nn.CrossEntropyLoss):
            classes = suite.num_outputs or int(splits.train.targets().max()) + 1
            constant = torch.zeros(len(y), classes)
        else:
            constant = torch.full(y.shape, float(splits.train.targets().float().mean()))
        with torch.no_grad():
            chance = float(compute_loss(loss_fn, constant, y))
        env.base_losses[loss_name] = (start, chance)
    return env.base_losses[loss_name]


def _cut_callback(
    env: _Env, rule: CutRule | None, pipeline: Pipeline, fidelity: float = 1.0
) -> Callable[[int, float], None] | None:
    """The early cut, judged once a step has trained on one full epoch's worth of batches: at a
    reduced fidelity each epoch sees only a share of them, so epoch 1 of a 0.34 rung would judge
    a pruned model after a third of the recovery the rule was set for (and cut most of them)."""
    if rule is None:
        return None
    start, chance = _losses(env, str(pipeline.setting("loss")))
    threshold = max(rule.factor * start, rule.chance_fraction * chance)
    judged = max(1, math.ceil(1.0 / fidelity - 1e-9))

    def callback(epoch: int, loss: float) -> None:
        if epoch == judged and loss > threshold:
            at = f" (one epoch of batches at fidelity {fidelity:g})" if fidelity < 1.0 else ""
            raise CandidateCut(
                f"cut after epoch {epoch}{at}: monitor loss {loss:.4g} > {threshold:.4g} (start {start:.4g}, chance {chance:.4g})"
            )

    return callback


# -- phases --------------------------------------------------------------------------------
def _kind(exc: BaseException, phase: str, where: Path | None = None) -> str:
    """The error kind: ``infra`` for a failure of the environment (full disk, a machine lock, the
    NNCF extension build), which resume retries; else cut, nan or the phase that failed."""
    if disk_full(exc, where):
        return INFRA
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, (LockWait, ExtensionBuildError)):
            return INFRA
        if isinstance(e, CandidateCut):
            return "cut"
        if isinstance(e, TrainingError):
            return "nan"
        e = e.__cause__ or e.__context__
    return phase


@contextlib.contextmanager
def _phase(phase: str, where: Path | None = None) -> Iterator[None]:
    """Turn any exception into ``_Failed`` with its kind (keeping ours as they are); ``where``
    is the folder whose file system a full disk is checked on."""
    try:
        yield
    except _Failed:
        raise
    except Exception as exc:
        log.info("%s failed: %s", phase, exc, exc_info=log.isEnabledFor(logging.DEBUG))
        full = DISK_FULL if disk_full(exc, where) else ""
        raise _Failed(_kind(exc, phase, where), f"{full}{type(exc).__name__}: {exc}") from exc


def applied_pipeline(ctx: EvalContext, suite: Suite, pipeline: Pipeline) -> Pipeline:
    """In untrained mode the suite's model is trained first, as a ``Tr`` step of the suite's
    epochs with the candidate's settings: the prefix cache then shares that training between
    candidates with the same settings."""
    if ctx.mode != "untrained":
        return pipeline
    return pipeline.replace_steps((Step.make("Tr", epochs=suite.train.epochs), *pipeline.steps))


def _finite_outputs(model: nn.Module, splits: Splits) -> bool:
    return bool(np.isfinite(predict(model, splits.calib.inputs(64))).all())


def objectives_of(assessment, pipeline: Pipeline) -> dict[str, float]:
    """Raw objective values, units in names; ``complexity`` is the number of steps."""
    m = assessment.measurement
    out = {
        "quality_val": float(assessment.quality["val"]),
        "latency_ms": float(m.latency_ms),
        "throughput_ips": float(m.throughput_ips),
        "size_bytes": float(m.size_bytes),
        "complexity": float(len(pipeline)),
    }
    if m.energy_j is not None:
        out["energy_j"] = float(m.energy_j)
    return out


def feasible(ev: Evaluation, config: ObjectiveConfig, original: Evaluation | None) -> bool:
    """Whether ``ev`` meets the run's constraints, by the same rule the search ranks with
    (``petra_hw.search.objectives``); the Original is measured against itself."""
    return Objectives(config, original or ev).violation(ev) <= 0


def evaluate_candidate(candidate: Candidate, context: EvalContext) -> Evaluation:
    """Apply, compile and judge one candidate; failures come back as data."""
    start = time.perf_counter()
    timings: dict[str, float] = {}
    state: dict[str, object] = {}
    try:
        return _evaluate(candidate, context, timings, state)
    except _Failed as failure:
        kind, message = failure.kind, str(failure)
    except Exception as exc:  # a bug outside every phase: still data, never a crashed search
        log.exception("evaluating %s", candidate.pipeline)
        kind, message = "crash", f"{type(exc).__name__}: {exc}"
    timings["total_s"] = time.perf_counter() - start
    return Evaluation(
        candidate,
        error=message,
        error_kind=kind,
        timings_s=timings,
        feasible=False,
        precision=str(state.get("precision", "")),
        backend=str(state.get("backend", "")),
        cache_hit_steps=int(state.get("cache_hits", 0)),
        fidelity=candidate.fidelity,
    )


def _evaluate(
    candidate: Candidate, ctx: EvalContext, timings: dict[str, float], state: dict
) -> Evaluation:
    start = time.perf_counter()
    with _phase("setup"):
        load_plugins(ctx.plugins)  # a spawned worker or Ray task has not imported them yet
        env = _load_env(ctx)
    if ctx.train_threads:
        torch.set_num_threads(ctx.train_threads)
    suite, profile, splits = env.suite, env.profile, env.baseline.splits
    pipeline = candidate.pipeline
    if candidate.variant:  # the trained model of ``parent`` on this other backend
        intent = deployed_intent(pipeline, profile)
        options = {}
        state["precision"] = intent.label()
        backend = choose_backend(profile, intent, candidate.variant)
    elif candidate.reference:  # a one-shot recipe: its own backend and options, never the pin
        recipe = get_recipe(candidate.reference)
        intent = recipe.intent(deployed_intent(Pipeline.make(), profile).precision)
        options = dict(recipe.options)
        state["precision"] = intent.label()
        backend = choose_backend(profile, intent, recipe.backend or ctx.backend)
    else:
        intent = deployed_intent(pipeline, profile)
        options = {}
        state["precision"] = intent.label()
        backend = choose_backend(profile, intent, ctx.backend)
    state["backend"] = backend
    fault = _active_fault(ctx.fault, candidate)
    out_dir = ctx.run_dir / ("references" if candidate.reference else "candidates") / candidate.id

    with _phase("step", ctx.run_dir), computing():
        t = time.perf_counter()
        cache_hits, notes = 0, []
        if candidate.variant:
            with _phase("compile", ctx.run_dir):
                _fire(fault)
                model = _trained_model(env, ctx, candidate)
                finite = True
        else:
            with _phase("step", ctx.run_dir):
                model, finite, cache_hits, notes = _train(env, ctx, candidate, fault, timings)
        state["cache_hits"] = cache_hits
        timings["apply_s"] = time.perf_counter() - t
        if not finite:
            raise _Failed("nan", "the compressed model outputs non-finite values")
        if _keeps_trained(candidate, ctx, fault):
            _keep_trained((ctx.run_dir, candidate.id), model)

        t = time.perf_counter()
        with _phase("compile", ctx.run_dir):
            if fault == "export":
                raise InjectedFault(f"injected export failure ({FAULT_ENV}=export)")
            if out_dir.exists():
                shutil.rmtree(out_dir)  # a half-written artifact of a killed attempt
            artifact = compile_model(
                model,
                suite,
                splits,
                profile,
                backend,
                intent,
                out_dir,
                pipeline=pipeline.to_json(),
                options=options,
            )
        timings["compile_s"] = time.perf_counter() - t
        expected = env.original_outputs
        if expected is None:  # untrained mode: parity against this candidate's own FP32 model
            expected = {n: predict_split(model, splits.by_name(n)) for n in ("val", "test")}

    with _phase("measure", ctx.run_dir), measuring():
        assessment = judge(artifact, suite, splits, profile, expected)
    timings.update(assessment.timings_s)
    values = [*assessment.quality.values(), assessment.parity.get("max_abs_diff", 0.0)]
    if not all(math.isfinite(v) for v in values):
        raise _Failed(
            "nan", f"the artifact outputs non-finite values (quality {assessment.quality})"
        )
    with _phase("measure", ctx.run_dir):
        objectives = objectives_of(assessment, pipeline)
        measurement = _keep_samples(assessment.measurement, assessment.artifact)
    timings["total_s"] = time.perf_counter() - start
    ev = Evaluation(
        candidate,
        objectives=objectives,
        quality=dict(assessment.quality),
        parity=dict(assessment.parity),
        measurement=measurement,
        artifact=str(assessment.artifact.path),
        precision=measured_label(intent.label(), assessment.artifact.manifest),
        backend=backend,
        timings_s=timings,
        cache_hit_steps=cache_hits,
        step_notes=notes,
        fidelity=candidate.fidelity,
    )
    return replace(ev, feasible=feasible(ev, ctx.objectives, ctx.original))


def _train(
    env: _Env, ctx: EvalContext, candidate: Candidate, fault: str | None, timings: dict
) -> tuple[nn.Module, bool, int, list[str]]:
    """Apply the candidate's steps: (model, finite outputs, cached steps, step notes)."""
    from petra_hw.apply import apply

    suite, splits, pipeline = env.suite, env.baseline.splits, candidate.pipeline
    baseline = env.baseline
    if fault == "nan":
        baseline = Baseline(suite, _poisoned(baseline.model), splits, ctx.seed, {}, cached=True)
    _fire(fault)
    try:
        applied = apply(
            applied_pipeline(ctx, suite, pipeline),
            baseline,
            suite,
            channel_multiple=env.profile.channel_multiple,
            seed=ctx.seed,
            cache=_prefix_cache(env, ctx, fault),
            epoch_callback=_cut_callback(env, ctx.cut, pipeline, candidate.fidelity),
            stop_on_noop=True,
            fidelity=candidate.fidelity,
        )
    except NoOpStep as exc:  # the shorter pipeline again: not compiled, not timed
        raise _Failed(NO_OP, str(exc)) from None
    timings["cache_saved_s"] = applied.seconds_saved
    finite = _finite_outputs(applied.model, splits)
    return applied.model, finite, applied.cache_hit, applied.notes


def _keeps_trained(candidate: Candidate, ctx: EvalContext, fault: str | None) -> bool:
    """Whether this evaluation's model may get backend variants (``search.variants``)."""
    return (
        candidate.fidelity >= 1.0
        and bool(candidate.pipeline.steps)
        and not (candidate.reference or candidate.variant or ctx.backend or fault)
    )


def _keep_trained(key: tuple[Path, str], model: nn.Module) -> None:
    """Hold a copy of ``model`` for the candidate's variants (compiling may alter the model)."""
    try:
        _TRAINED[key] = copy.deepcopy(model)
    except Exception as exc:  # its variants then fall back to the prefix cache, or fail as data
        log.warning("cannot keep the trained model of %s for its variants: %s", key[1], exc)
        return
    while len(_TRAINED) > TRAINED_KEPT:
        _TRAINED.popitem(last=False)


def _trained_model(env: _Env, ctx: EvalContext, candidate: Candidate) -> nn.Module:
    """A variant's model: its parent's trained model, from this worker's memory or the prefix
    cache; never trained again (a model held in neither is the variant's compile error)."""
    held = _TRAINED.get((ctx.run_dir, candidate.trained_id))
    if held is not None:
        return copy.deepcopy(held)
    cached = _cached_trained(env, ctx, candidate.pipeline)
    if cached is None:
        raise _Failed(
            "compile",
            f"the trained model of {candidate.trained_id} is neither held by this worker nor in "
            "the prefix cache; a variant is never trained again",
        )
    return cached


def _cached_trained(env: _Env, ctx: EvalContext, pipeline: Pipeline) -> nn.Module | None:
    """The pipeline's model from the prefix cache when the cache holds its last computed step
    (the deferred steps after it cost nothing), else None."""
    from petra_hw.apply import DEFERRED, apply, canonicalize, prefix_keys, step_roles

    cache = _prefix_cache(env, ctx, None)
    if cache is None:
        return None
    full = applied_pipeline(ctx, env.suite, pipeline)
    canon = canonicalize(full)
    keys = prefix_keys(
        canon, env.suite.name, env.baseline.state_hash, env.profile.channel_multiple, ctx.seed
    )
    computed = [k for k, role in enumerate(step_roles(canon)) if role != DEFERRED]
    if computed:
        last = keys[computed[-1]]
        if last is None or not cache.path(last).exists():
            return None
    return apply(
        full,
        env.baseline,
        env.suite,
        channel_multiple=env.profile.channel_multiple,
        seed=ctx.seed,
        cache=cache,
    ).model


def measured_label(label: str, manifest: dict) -> str:
    """The precision label with what the runtime really ran the float parts at, where that
    differs from f32 (OpenVINO's default CPU configuration runs them in BF16 on a BF16 CPU)."""
    ran = manifest.get("openvino", {}).get("inference_precision")
    return f"{label}+{ran}" if ran and ran != "f32" and not label.startswith(ran) else label


def _keep_samples(m, artifact) -> dict:
    """Raw timing samples go to ``measurement.json`` beside the artifact's files (thousands of
    floats per batch size), listed in its manifest; the evaluation carries the summary and the
    file's path."""
    artifact.add_file(SAMPLES_FILE, json.dumps(m.to_json(samples=True)).encode())
    return {**m.to_json(samples=False), "samples_path": str(artifact.file(SAMPLES_FILE))}


def _poisoned(model: nn.Module) -> nn.Module:
    import copy

    bad = copy.deepcopy(model)
    with torch.no_grad():
        for p in bad.parameters():
            p.fill_(float("nan"))
    return bad
