"""The JSON schema of ``report.json``: the contract that ``reproduce`` and other tools read.

Strict where readers depend on a field (ids, pipelines, objectives, measurement summaries, the
front and hypervolume); open (``additionalProperties``) where the content is the machine's or the
run's own (fingerprint, settings, stats), so adding a setting does not break old readers.
"""

from __future__ import annotations

import logging
from typing import Any

from petra_hw.errors import UserError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: references, quality budget, value comparisons; 3: value_figures
_NUM = {"type": ["number", "null"]}
_STR = {"type": ["string", "null"]}
_NUM_MAP = {"type": "object", "additionalProperties": _NUM}

_TIMING = {
    "type": "object",
    "required": ["batch_size", "p50_ms", "p90_ms", "p99_ms", "iqr_ms", "n", "throughput_ips"],
    "properties": {
        "batch_size": {"type": "integer", "minimum": 1},
        "n": {"type": ["integer", "null"]},
        **{
            k: _NUM
            for k in (
                "p25_ms",
                "p50_ms",
                "p75_ms",
                "p90_ms",
                "p99_ms",
                "iqr_ms",
                "mean_ms",
                "stdev_ms",
                "min_ms",
                "cv",
                "throughput_ips",
            )
        },
    },
}

_MEASUREMENT = {
    "type": ["object", "null"],
    "required": ["latency", "throughput", "size_bytes", "noisy", "threads", "settings"],
    "properties": {
        "device": _STR,
        "threads": {"type": ["integer", "null"]},
        "latency": _TIMING,
        "throughput": {"type": "array", "items": _TIMING},
        "size_bytes": _NUM,
        "peak_rss_bytes": _NUM,
        "energy_j": _NUM,
        "noisy": {"type": "boolean"},
        "repeats": {"type": "integer"},
        "fresh_process": {"type": "boolean"},
        "settings": {"type": "object"},
        "samples_path": _STR,
    },
}

_EVALUATION = {
    "type": "object",
    "required": [
        "seq",
        "id",
        "pipeline",
        "pipeline_json",
        "ok",
        "error",
        "error_kind",
        "feasible",
        "on_front",
        "backend",
        "precision",
        "quality",
        "objectives",
        "measurement",
        "artifact",
    ],
    "properties": {
        "seq": {"type": "integer", "minimum": 1},
        # a backend variant's id names its backend: <hash>.<backend> (search.variants)
        "id": {"type": "string", "pattern": "^[0-9a-f]{16}([.][A-Za-z0-9_-]+)?$"},
        "pipeline": {"type": "string"},
        "pipeline_json": {
            "type": "object",
            "required": ["steps", "settings"],
            "properties": {"steps": {"type": "array"}, "settings": {"type": "object"}},
        },
        "steps": {"type": "integer", "minimum": 0},
        "generation": {"type": "integer"},
        "parent": _STR,
        "operator": _STR,
        "ok": {"type": "boolean"},
        "error": _STR,
        "error_kind": _STR,
        "feasible": {"type": "boolean"},
        "on_front": {"type": "boolean"},
        "backend": {"type": "string"},
        "precision": {"type": "string"},
        "variant": {"type": "string"},
        "quality": _NUM_MAP,
        "parity": _NUM_MAP,
        "objectives": _NUM_MAP,
        "normalized": _NUM_MAP,
        "measurement": _MEASUREMENT,
        "artifact": _STR,
        "timings_s": _NUM_MAP,
        "cache_hit_steps": {"type": "integer"},
        "step_notes": {"type": "array", "items": {"type": "string"}},
        "warnings": {"type": "array", "items": {"type": "string"}},
        "over_budget": {"type": ["boolean", "null"]},
    },
    # an evaluation either has an error or measured objectives, never neither
    "if": {"properties": {"ok": {"const": True}}},
    "then": {"properties": {"error": {"type": "null"}, "measurement": {"type": "object"}}},
    "else": {"properties": {"error": {"type": "string"}}},
}

# A reference point (a one-shot peer recipe or the training control): an evaluation named by its
# recipe, never on a front.
_REFERENCE = {
    **_EVALUATION,
    "required": [*_EVALUATION["required"], "reference", "recipe"],
    "properties": {
        **_EVALUATION["properties"],
        "id": {"type": "string", "pattern": "^ref-[A-Za-z0-9+._-]+$"},
        "reference": {"type": "string"},
        "recipe": {"type": "string"},
        "on_front": {"const": False},
    },
}

_COMPARISON = {
    "type": "object",
    "required": [
        "objective",
        "best",
        "peer",
        "peer_within_budget",
        "best_value",
        "peer_value",
        "ratio",
        "line",
    ],
    "properties": {
        "objective": {"enum": ["latency_ms", "size_bytes", "throughput_ips"]},
        "best": _STR,
        "peer": _STR,
        "peer_within_budget": {"type": "boolean"},
        "best_value": _NUM,
        "peer_value": _NUM,
        "ratio": _NUM,
        "line": {"type": "string"},
    },
}

_RUN = {
    "type": "object",
    "required": [
        "id",
        "dir",
        "status",
        "suite",
        "seed",
        "strategy",
        "settings",
        "stats",
        "profile",
        "metric",
        "environment",
        "packages",
        "git_commit",
        "objective_names",
        "original",
        "front",
        "evaluations",
        "references",
        "quality_budget",
        "best",
        "value",
        "value_figures",
        "warnings",
        "hypervolume",
    ],
    "properties": {
        "id": {"type": "string"},
        "dir": {"type": "string"},
        "status": {"enum": ["running", "finished", "failed", "interrupted"]},
        "created": {"type": "number"},
        "updated": {"type": "number"},
        "suite": {"type": "string"},
        "seed": {"type": "integer"},
        "strategy": {"type": "string"},
        "settings": {"type": "object", "required": ["suite", "device", "seed", "mode"]},
        "stats": {"type": "object"},
        "profile": {"type": "object", "required": ["name"]},
        "metric": {
            "type": "object",
            "required": ["name", "higher_is_better", "selection_split", "report_split"],
            "properties": {
                "name": {"type": "string"},
                "higher_is_better": {"type": "boolean"},
                "selection_split": {"type": "string"},
                "report_split": {"type": "string"},
            },
        },
        "environment": {"type": "object"},
        "packages": {"type": "object", "additionalProperties": {"type": "string"}},
        "git_commit": {"type": "string"},
        "objective_names": {"type": "array", "items": {"type": "string"}},
        "reference_point": {"type": "array", "items": {"type": "number"}},
        "original": _STR,
        "front": {"type": "array", "items": {"type": "string"}, "uniqueItems": True},
        "evaluations": {"type": "array", "items": _EVALUATION},
        "references": {"type": "array", "items": _REFERENCE},
        "quality_budget": {"type": "number", "minimum": 0},
        "best": {"type": "object", "additionalProperties": {"type": "string"}},
        "value": {"type": "array", "items": _COMPARISON},
        # which timed figures the value lines and "best" compare, and why
        "value_figures": {
            "type": "object",
            "required": ["source", "note"],
            "properties": {
                "source": {"enum": ["re-measured", "journaled"]},
                "note": {"type": "string"},
            },
        },
        "warnings": {"type": "array", "items": {"type": "string"}},
        "hypervolume": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["evaluations", "generation", "value", "elapsed_s"],
                "properties": {
                    "evaluations": {"type": "integer"},
                    "generation": {"type": "integer"},
                    "value": {"type": "number"},
                    "elapsed_s": {"type": "number"},
                },
            },
        },
    },
}

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "$id": "petra-hw/report.schema.json",
    "title": "petra-hw report",
    "type": "object",
    "required": ["schema_version", "generated", "petra_hw_version", "runs"],
    "properties": {
        "schema_version": {"const": SCHEMA_VERSION},
        "generated": {"type": "string"},
        "petra_hw_version": {"type": "string"},
        "runs": {"type": "array", "minItems": 1, "items": _RUN},
    },
}


def validate(document: dict[str, Any]) -> bool:
    """Raise ``UserError`` naming the first place where ``document`` breaks the schema.

    Returns False when jsonschema (a dev extra, not a runtime dependency) is not installed.
    """
    try:
        import jsonschema
    except ImportError:
        log.info("jsonschema is not installed: report not validated against its schema")
        return False

    validator = jsonschema.Draft202012Validator(SCHEMA)
    error = jsonschema.exceptions.best_match(validator.iter_errors(document))
    if error is not None:
        where = "/".join(str(p) for p in error.absolute_path) or "(top)"
        raise UserError(f"report does not match its schema at {where}: {error.message}")
    return True
