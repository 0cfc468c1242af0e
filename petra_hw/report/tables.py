"""The paper's results table as plain cells, shared by the Markdown and HTML renderings.

Layout: ``Pipeline | quality | latency ms | throughput ips | size MB`` (plus the backend and
precision that were measured), rows = the Original, the reference points (``ref: <recipe>``: the
device's one-shot peers and the training control), then the Pareto-optimal pipelines, each
value as ``value (±x%)`` relative to the Original *on the same device*.  Runs of one suite on
several devices become column groups side by side (CPU and GPU columns); a pipeline that has no
result on a device says why: ``not runnable`` when its precision cannot be deployed there (its
compile failed, or the device does not run that precision), ``failed (kind)`` for any other
error, ``not measured`` when that run never evaluated it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from petra_hw.pipeline import Pipeline
from petra_hw.precision import float_precision, resolve

COLUMNS = ("quality", "latency ms", "throughput ips", "size MB", "backend, precision")
NOT_RUNNABLE_KINDS = ("compile",)
ERROR_CHARS = 90


@dataclass
class PaperTable:
    """One suite: column headers, rows of cell strings, and notes saying what was measured."""

    suite: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def _pct(value: float, ref: float | None) -> str:
    if ref is None or ref == 0 or not math.isfinite(ref):
        return ""
    return f" ({(value - ref) / abs(ref) * 100:+.1f}%)"


def fmt_cell(value: float | None, ref: float | None, digits: int, scale: float = 1.0) -> str:
    """``value (±x%)``; no percentage for the Original's row itself (``ref`` None)."""
    if value is None:
        return "-"
    v = value / scale
    return f"{v:.{digits}f}" + ("" if ref is None else _pct(v, ref / scale))


def _values(ev: dict[str, Any], split: str) -> tuple[float | None, ...]:
    o = ev["objectives"]
    return (
        ev["quality"].get(split),
        o.get("latency_ms"),
        o.get("throughput_ips"),
        o.get("size_bytes"),
    )


FORMATS = ((4, 1.0), (4, 1.0), (0, 1.0), (3, 1e6))  # digits, scale of each value column


def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= ERROR_CHARS else text[: ERROR_CHARS - 1] + "…"


def _missing(run: dict[str, Any], pipeline_json: dict[str, Any]) -> str:
    """Why a run has no value for a pipeline it never evaluated."""
    profile = run["profile"]
    precisions = profile.get("precisions")
    if precisions:
        device_float = float_precision(str(profile.get("device_kind")), precisions)
        intent = resolve(Pipeline.from_json(pipeline_json), device_float)
        if intent.precision not in precisions:
            return f"not runnable ({profile['name']} has no {intent.precision})"
    return "not measured"


def _group_cells(run: dict[str, Any], ev: dict[str, Any] | None, pipeline_json: dict) -> list[str]:
    blank = ["—"] * (len(COLUMNS) - 1)
    if ev is None:
        return [_missing(run, pipeline_json), *blank]
    if not ev["ok"]:
        kind = ev["error_kind"] or "error"
        head = "not runnable" if kind in NOT_RUNNABLE_KINDS else f"failed ({kind})"
        return [f"{head}: {_clip(ev['error'] or '')}", *blank]
    split = run["metric"]["report_split"]
    by_id = {e["id"]: e for e in run["evaluations"]}
    original = by_id.get(run["original"])
    refs: tuple[float | None, ...] = (None,) * 4
    if original is not None and original["ok"] and ev["id"] != original["id"]:
        refs = _values(original, split)
    cells = [
        fmt_cell(v, r, digits, scale)
        for v, r, (digits, scale) in zip(_values(ev, split), refs, FORMATS, strict=True)
    ]
    if ev.get("over_budget") and not ev.get("reference"):
        cells[0] += " over budget"
    return [*cells, f"{ev['backend']} {ev['precision']}"]


def rows_of(run: dict[str, Any]) -> list[dict[str, Any]]:
    """Every evaluation of a run with a row: candidates and references."""
    return [*run["evaluations"], *run.get("references", [])]


def row_label(ev: dict[str, Any]) -> str:
    return f"ref: {ev['reference']}" if ev.get("reference") else ev["pipeline"]


def _labels(runs: list[dict[str, Any]]) -> list[str]:
    names = [r["profile"]["name"] for r in runs]
    return [
        n if names.count(n) == 1 else f"{n} ({r['id']})" for n, r in zip(names, runs, strict=True)
    ]


def _notes(runs: list[dict[str, Any]], labels: list[str]) -> list[str]:
    metric = runs[0]["metric"]
    batches = sorted(
        {
            t["batch_size"]
            for r in runs
            for e in r["evaluations"]
            if e["measurement"]
            for t in e["measurement"]["throughput"]
        }
    )
    notes = [
        f"quality: {metric['report_split']} {metric['name']} measured through each deployed "
        f"artifact; the Pareto front is chosen on {metric['selection_split']}.",
        "latency: p50 at batch 1; throughput: inputs/s at batch "
        f"{', '.join(map(str, batches)) or '1'}; size: artifact bytes on disk (MB = 10^6 B); "
        "(±x%) is relative to the Original on the same device.",
    ]
    for run, label in zip(runs, labels, strict=True):
        evs = run["evaluations"]
        ok = [e for e in evs if e["ok"]]
        noisy = sum(1 for e in ok if e["measurement"] and e["measurement"]["noisy"])
        env = run["environment"]
        gpus = ", ".join(g.get("name", "?") for g in env.get("gpus", [])) or "no GPU"
        threads = {e["measurement"]["threads"] for e in ok if e["measurement"]}
        measured = sorted({f"{e['backend']} {e['precision']}" for e in ok})
        notes.append(
            f"{label}: run {run['id']} on {env.get('cpu_model', '?')} ({gpus}), "
            f"{', '.join(map(str, sorted(threads))) or '?'} threads; measured with "
            f"{'; '.join(measured) or 'nothing'}; {len(ok)}/{len(evs)} evaluations ran"
            + (f", {noisy} flagged noisy" if noisy else "")
            + "."
        )
        if run.get("value"):
            figures = run.get("value_figures", {}).get("note", "journaled figures")
            notes.append(
                f"{label}: best within the quality budget ({run['quality_budget']:.1%} of the "
                f"Original's val metric) vs the best peer, on {figures}: "
                + "; ".join(v["line"] for v in run["value"])
            )
        notes += [f"{label}: warning: {w}" for w in run.get("warnings", [])]
    return notes


def paper_tables(document: dict[str, Any]) -> list[PaperTable]:
    """One table per suite; runs of that suite side by side in the order given."""
    by_suite: dict[str, list[dict[str, Any]]] = {}
    for run in document["runs"]:
        by_suite.setdefault(run["suite"], []).append(run)
    tables = []
    for suite, runs in by_suite.items():
        labels = _labels(runs)
        header = ["Pipeline"]
        for label in labels:
            header += [c if len(runs) == 1 else f"{label} {c}" for c in COLUMNS]
        order: dict[str, dict] = {}  # id -> first evaluation: Original, references, front
        for run in runs:
            by_id = {e["id"]: e for e in rows_of(run)}
            refs = [e["id"] for e in run.get("references", [])]
            for cid in [run["original"], *refs, *run["front"]]:
                if cid is not None and cid in by_id:
                    order.setdefault(cid, by_id[cid])
        rows = []
        for cid, first in order.items():
            row = [row_label(first)]
            for run in runs:
                ev = next((e for e in rows_of(run) if e["id"] == cid), None)
                row += _group_cells(run, ev, first["pipeline_json"])
            rows.append(row)
        tables.append(PaperTable(suite, header, rows, _notes(runs, labels)))
    return tables
