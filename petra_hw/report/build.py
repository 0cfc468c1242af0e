"""Report data from a run's journal: one JSON-able dict per run, nothing rendered here.

The front is recomputed from the journal with the run's own objective configuration (the same
``pareto_front`` the tune loop returns), so a report of an interrupted or resumed run is as
honest as one of a finished run.  Raw timing samples stay in each candidate's
``measurement.json``; the report carries their summary, with the interquartile range that
``petra-hw reproduce`` uses as the recorded dispersion.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import math
from pathlib import Path
from typing import Any

import numpy as np

from petra_hw import __version__
from petra_hw.errors import UserError
from petra_hw.references import get_recipe
from petra_hw.report.schema import SCHEMA_VERSION
from petra_hw.search.budget import BUDGET
from petra_hw.search.objectives import Objectives
from petra_hw.search.selection import pareto_front
from petra_hw.search.store import Store, run_journal
from petra_hw.search.tune import TuneSettings
from petra_hw.search.types import Evaluation
from petra_hw.value import (
    JOURNALED,
    compare,
    final_figures,
    quality_budget,
    slower_than_original,
    undertrained,
    within_budget,
)

log = logging.getLogger(__name__)

SELECTION_SPLIT = "val"  # the search ranks on val ...
REPORT_SPLIT = "test"  # ... and reports give test (ARCHITECTURE: splits contract)


def finite(value: Any) -> Any:
    """The value with every non-finite float replaced by None (JSON has no NaN or inf)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite(v) for v in value]
    return value


def _samples_summary(path: str | None) -> dict[int, dict[str, float | int]]:
    """Quartiles of the raw samples per batch size (empty when the samples file is gone)."""
    if not path or not Path(path).is_file():
        return {}
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        log.warning("cannot read timing samples %s: %s", path, exc)
        return {}
    out = {}
    for stats in [data.get("latency", {}), *data.get("throughput", [])]:
        ms = np.asarray(stats.get("samples_ms", ()), dtype=np.float64)
        if ms.size:
            q1, q3 = np.percentile(ms, [25, 75])
            out[int(stats["batch_size"])] = {
                "n": int(ms.size),
                "p25_ms": float(q1),
                "p75_ms": float(q3),
                "iqr_ms": float(q3 - q1),
            }
    return out


def _timing(stats: dict[str, Any], quartiles: dict[int, dict]) -> dict[str, Any]:
    q = quartiles.get(int(stats["batch_size"]), {})
    keep = ("batch_size", "p50_ms", "p90_ms", "p99_ms", "mean_ms", "stdev_ms", "min_ms", "cv")
    return {
        **{k: stats.get(k) for k in keep},
        "throughput_ips": stats.get("throughput_ips"),
        "n": q.get("n"),
        "p25_ms": q.get("p25_ms"),
        "p75_ms": q.get("p75_ms"),
        "iqr_ms": q.get("iqr_ms"),
    }


def measurement_summary(m: dict[str, Any] | None) -> dict[str, Any] | None:
    """The journal's measurement summary plus quartiles from the raw samples."""
    if not m:
        return None
    quartiles = _samples_summary(m.get("samples_path"))
    return {
        "device": m.get("device"),
        "threads": m.get("threads"),
        "latency": _timing(m["latency"], quartiles),
        "throughput": [_timing(t, quartiles) for t in m.get("throughput", [])],
        "size_bytes": m.get("size_bytes"),
        "peak_rss_bytes": m.get("peak_rss_bytes"),
        "energy_j": m.get("energy_j"),
        "noisy": bool(m.get("noisy", False)),
        "repeats": m.get("repeats", 0),
        "fresh_process": bool(m.get("fresh_process", False)),
        "settings": m.get("settings", {}),
        "samples_path": m.get("samples_path"),
    }


def _evaluation(
    seq: int,
    ev: Evaluation,
    objectives: Objectives | None,
    names: tuple[str, ...],
    front: set[str],
    budget: float,
    original_ms: float | None = None,
) -> dict[str, Any]:
    c = ev.candidate
    slower = None
    if ev.ok and original_ms is not None and c.pipeline.steps:
        slower = slower_than_original(ev.objectives.get("latency_ms", 0.0), original_ms)
    normalized = {}
    over_budget = None
    if objectives is not None and ev.ok:
        normalized = {n: objectives.normalized(ev, n) for n in names}
        over_budget = not within_budget(ev, objectives, budget)
    return {
        "seq": seq,
        "id": c.id,
        "pipeline": str(c.pipeline),
        "pipeline_json": c.pipeline.to_json(),
        "steps": len(c.pipeline),
        "generation": c.generation,
        "parent": c.parent,
        "operator": c.operator,
        "ok": ev.ok,
        "error": ev.error,
        "error_kind": ev.error_kind,
        "feasible": bool(ev.feasible),
        "on_front": c.id in front,
        "over_budget": over_budget,
        "backend": ev.backend,
        "precision": ev.precision,
        "variant": ev.variant,  # "backend/precision" of a backend variant, else ""
        "quality": dict(ev.quality),
        "parity": dict(ev.parity),
        "objectives": dict(ev.objectives),
        "normalized": normalized,
        "measurement": measurement_summary(ev.measurement),
        "artifact": ev.artifact,
        "timings_s": dict(ev.timings_s),
        "cache_hit_steps": ev.cache_hit_steps,
        "step_notes": list(ev.step_notes),
        "warnings": [slower] if slower else [],
    }


def _profile(device: str, name: str) -> dict[str, Any]:
    from petra_hw.profiles import load_profile

    try:
        return load_profile(device).to_json()
    except UserError as exc:  # the profile file moved since the run: keep what the journal says
        log.warning("profile %s of the run cannot be loaded: %s", device, exc)
        return {"name": name}


def _metric(suite: str) -> dict[str, Any]:
    from petra_hw.suite import load_suite

    metric = load_suite(suite).metric
    return {
        "name": metric.name,
        "higher_is_better": metric.higher_is_better,
        "selection_split": SELECTION_SPLIT,
        "report_split": REPORT_SPLIT,
    }


def _value(
    original: Evaluation | None,
    front: list[Evaluation],
    references: list[Evaluation],
    objectives: Objectives | None,
    budget: float,
    metric: dict[str, Any],
    remeasured: dict[str, Any] | None,
) -> dict[str, Any]:
    """The best artifact within budget per objective, each beside the best peer, on the final
    interleaved re-measurement where it covers them (else journaled figures, said so), and the
    training control's verdict on the baseline."""
    if objectives is None or original is None:
        why = "no Original was measured: nothing to compare"
        return {
            "best": {},
            "value": [],
            "value_figures": {"source": JOURNALED, "note": why},
            "warnings": [],
        }
    figures = final_figures(remeasured, front, references)
    comparisons = compare(front, references, objectives, budget, figures=figures)
    warning = undertrained(original, references, metric["higher_is_better"])
    return {
        "best": {c.objective: c.best.candidate.id for c in comparisons if c.best is not None},
        "value": [
            {
                "objective": c.objective,
                "best": None if c.best is None else c.best.candidate.id,
                "peer": None if c.peer is None else c.peer.candidate.reference,
                "peer_within_budget": c.peer_within_budget,
                "best_value": None if c.best is None else c.best.objectives[c.objective],
                "peer_value": None if c.peer is None else c.peer.objectives[c.objective],
                "ratio": c.ratio,
                "line": c.line(),
            }
            for c in comparisons
        ],
        "value_figures": figures.to_json(),
        "warnings": [warning] if warning else [],
    }


def build_run(run_dir: str | Path) -> dict[str, Any]:
    """Everything a report says about one run, read from its journal."""
    run_dir = Path(run_dir).resolve()
    with Store(run_journal(run_dir)) as store:
        record = store.last_run()
        # full-fidelity rows only: a reduced rung of multi-fidelity search or a candidate the
        # time budget stopped is no result (the run's stats count them)
        evaluations = [
            e for e in store.evaluations(record.id) if e.full_fidelity and e.error_kind != BUDGET
        ]
        references = store.references(record.id)
        hv = store.hypervolume(record.id)
    settings = record.settings
    metric = _metric(settings.get("suite", record.suite))
    original = next((e for e in evaluations if not e.candidate.pipeline.steps), None)
    objectives = None
    names: tuple[str, ...] = ()
    front: list[Evaluation] = []
    if original is not None and original.ok:
        # the run's own objectives; older runs and defaults: quality, latency, size (+ energy
        # where measured: inactive objectives drop out below)
        config = TuneSettings.from_json(settings).objective_config(
            metric["higher_is_better"], energy=True, split=SELECTION_SPLIT
        )
        objectives = Objectives(config, original)
        names = objectives.active_names(evaluations)
        pool = [e for e in evaluations if e.candidate.pipeline.steps] + [original]
        front = pareto_front(pool, objectives)
    front.sort(key=lambda e: e.objectives.get("latency_ms", math.inf))
    front_ids = {e.candidate.id for e in front}
    budget = quality_budget(settings.get("max_quality_drop"))
    value = _value(
        original,
        front,
        references,
        objectives,
        budget,
        metric,
        record.stats.get("remeasured_final"),
    )
    original_ms = original.objectives.get("latency_ms") if original and original.ok else None
    fp = record.fingerprint
    return finite(
        {
            "id": record.id,
            "dir": str(run_dir),
            "status": record.status,
            "created": record.created,
            "updated": record.updated,
            "suite": record.suite,
            "seed": record.seed,
            "strategy": record.strategy,
            "settings": settings,
            "stats": record.stats,
            "profile": _profile(settings.get("device", record.profile), record.profile),
            "metric": metric,
            "environment": fp,
            "packages": fp.get("packages", {}),
            "git_commit": fp.get("git_commit", "unknown"),
            "objective_names": list(names),
            "reference_point": (
                [float(v) for v in objectives.reference_point(names)] if objectives else []
            ),
            "original": original.candidate.id if original is not None else None,
            "front": [e.candidate.id for e in front],
            "evaluations": [
                _evaluation(i + 1, e, objectives, names, front_ids, budget, original_ms)
                for i, e in enumerate(evaluations)
            ],
            "references": [
                {
                    **_evaluation(i + 1, e, objectives, names, set(), budget),
                    "reference": e.candidate.reference,
                    "recipe": get_recipe(e.candidate.reference).doc,
                }
                for i, e in enumerate(references)
            ],
            "quality_budget": budget,
            **value,
            "hypervolume": [
                {
                    "evaluations": p.evaluations,
                    "generation": p.generation,
                    "value": p.value,
                    "elapsed_s": p.elapsed_s,
                }
                for p in hv
            ],
        }
    )


def build_document(run_dirs: list[str | Path]) -> dict[str, Any]:
    """The report of one or more runs (several runs: one suite on several devices, say)."""
    if not run_dirs:
        raise UserError("no run to report")
    return {
        "schema_version": SCHEMA_VERSION,
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "petra_hw_version": __version__,
        "runs": [build_run(d) for d in run_dirs],
    }
