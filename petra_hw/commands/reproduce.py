"""``petra-hw reproduce REPORT --candidate ID``: rebuild a reported pipeline and re-measure it.

The candidate is evaluated again exactly as the run did (same suite, seed, profile, mode, settings,
starting weights, and the backend it was compiled with), through ``evaluate_candidate``.  It is
reproduced when its quality on val and test lies within ``--tolerance`` percentage points of the
recorded values and its p50 latency at batch 1 within the recorded dispersion:
``max(--iqr-factor x recorded IQR, --latency-tolerance x recorded p50)`` (3 x IQR or 15% by
default).  Exit 0 when reproduced, 1 when not, 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from petra_hw.commands.common import new_out_dir
from petra_hw.console import console, errors
from petra_hw.errors import UserError
from petra_hw.gate import parse_percent

IQR_PER_STDEV = 1.349  # IQR of a normal distribution, when the raw samples are gone


def add_parser(sub) -> None:
    p = sub.add_parser("reproduce", help="rebuild a reported candidate and check its numbers")
    p.add_argument("report", type=Path, help="report.json, or the folder that holds it")
    p.add_argument("--candidate", required=True, metavar="ID", help="candidate id (or prefix)")
    p.add_argument("--run", default=None, help="run id, when the report merges several runs")
    p.add_argument(
        "--tolerance", type=float, default=0.5, help="quality band, percentage points (0.5)"
    )
    p.add_argument(
        "--latency-tolerance", default="15%", help="smallest latency band, relative (15%%)"
    )
    p.add_argument(
        "--iqr-factor", type=float, default=3.0, help="latency band in recorded IQRs (3)"
    )
    p.add_argument("--out", type=Path, default=None, help="keep the rebuilt artifact here")
    p.set_defaults(func=run)


def load_report(path: Path) -> dict[str, Any]:
    from petra_hw.report import REPORT_JSON
    from petra_hw.report.schema import validate

    path = path / REPORT_JSON if path.is_dir() else path
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no report at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a report.json: {exc}") from None
    validate(document)
    return document


def find_candidate(
    document: dict[str, Any], candidate: str, run_id: str | None
) -> tuple[dict[str, Any], dict[str, Any]]:
    hits = [
        (run, ev)
        for run in document["runs"]
        if run_id is None or run["id"] == run_id
        for ev in run["evaluations"]
        if ev["id"].startswith(candidate)
    ]
    if not hits:
        where = f"run {run_id}" if run_id else "the report"
        raise UserError(f"no candidate '{candidate}' in {where}")
    if len(hits) > 1:
        found = ", ".join(f"{ev['id']} in {run['id']}" for run, ev in hits)
        raise UserError(f"candidate '{candidate}' is ambiguous ({found}); use --run or a longer id")
    run, ev = hits[0]
    if not ev["ok"]:
        raise UserError(
            f"candidate {ev['id']} was recorded as failed ({ev['error_kind']}): nothing to compare"
        )
    return run, ev


def _baseline_weights(run: dict[str, Any], work: Path) -> Path:
    """The run's starting weights when its folder is still there, else rebuilt from the suite
    and seed exactly as ``tune`` made them."""
    import torch

    from petra_hw.baseline import get_baseline, seed_everything
    from petra_hw.search.tune import BASELINE_WEIGHTS
    from petra_hw.suite import load_suite

    recorded = Path(run["dir"]) / BASELINE_WEIGHTS
    if recorded.is_file():
        return recorded
    s = run["settings"]
    suite = load_suite(s["suite"])
    if s["mode"] == "pretrained":
        data_dir = Path(s["data_dir"]) if s.get("data_dir") else None
        model = get_baseline(suite, s["seed"], data_dir).model
    else:
        seed_everything(s["seed"])
        model = suite.build_model()
    path = work / BASELINE_WEIGHTS
    torch.save(model.state_dict(), path)
    return path


def rebuild(run: dict[str, Any], ev: dict[str, Any], work: Path):
    """Evaluate the candidate again, as its run did; returns the new ``Evaluation``."""
    from petra_hw.pipeline import Pipeline
    from petra_hw.plugins import load_plugins
    from petra_hw.profiles import check_host, load_profile
    from petra_hw.search.evaluator import evaluate_candidate
    from petra_hw.search.tune import TuneSettings
    from petra_hw.search.types import Candidate

    settings = TuneSettings.from_json(run["settings"])
    load_plugins(settings.plugins)
    profile = load_profile(settings.device)
    for note in check_host(profile):
        errors.print(f"note: {note}")
    objectives = settings.objective_config(run["metric"]["higher_is_better"], profile.nvml)
    context = settings.eval_context(
        work, objectives, baseline_weights=_baseline_weights(run, work), backend=ev["backend"]
    )
    pipeline = Pipeline.from_json(ev["pipeline_json"])
    return evaluate_candidate(Candidate(pipeline, ev["generation"]), context)


def _checks(ev: dict[str, Any], new, args: argparse.Namespace) -> list[list[str]]:
    """Rows: what, recorded, reproduced, band, within (yes/no)."""
    rows = []
    for split in ("val", "test"):
        old, cur = ev["quality"].get(split), new.quality.get(split)
        if old is None:
            continue
        ok = cur is not None and abs(cur - old) * 100 <= args.tolerance + 1e-9
        rows.append(
            [
                f"quality {split}",
                f"{old:.4f}",
                "-" if cur is None else f"{cur:.4f}",
                f"±{args.tolerance:g} pp",
                "yes" if ok else "no",
            ]
        )
    lat = ev["measurement"]["latency"]
    iqr = lat.get("iqr_ms")
    if iqr is None:  # raw samples gone: estimate the IQR from the standard deviation
        iqr = IQR_PER_STDEV * (lat.get("stdev_ms") or 0.0)
    band = max(args.iqr_factor * iqr, parse_percent(args.latency_tolerance) * lat["p50_ms"])
    cur = new.measurement["latency"]["p50_ms"]
    ok = abs(cur - lat["p50_ms"]) <= band
    rows.append(
        [
            "latency p50 ms (batch 1)",
            f"{lat['p50_ms']:.4f}",
            f"{cur:.4f}",
            f"±{band:.4f}",
            "yes" if ok else "no",
        ]
    )
    size = ev["objectives"].get("size_bytes")
    rows.append(
        [
            "size bytes (not judged)",
            f"{size:.0f}" if size is not None else "-",
            f"{new.objectives['size_bytes']:.0f}",
            "-",
            "-",
        ]
    )
    return rows


def run(args: argparse.Namespace) -> int:
    from petra_hw.console import table
    from petra_hw.fingerprint import fingerprint

    if args.tolerance < 0 or args.iqr_factor < 0:
        raise UserError("--tolerance and --iqr-factor must be >= 0")
    parse_percent(args.latency_tolerance)
    document = load_report(args.report)
    run_record, ev = find_candidate(document, args.candidate, args.run)
    recorded_on = run_record["environment"].get("cpu_model")
    if recorded_on != fingerprint()["cpu_model"]:
        errors.print(
            f"note: recorded on {recorded_on!r}, reproducing on "
            f"{fingerprint()['cpu_model']!r}: latency is compared across machines"
        )
    with tempfile.TemporaryDirectory(prefix="petra-reproduce-") as tmp:
        work = new_out_dir(args.out, Path(tmp), "reproduce") if args.out else Path(tmp)
        with console.status(f"rebuilding {ev['pipeline']} ({ev['backend']} {ev['precision']})"):
            new = rebuild(run_record, ev, work)
        if not new.ok:
            console.print(
                f"not reproduced: {ev['pipeline']} now fails ({new.error_kind}): {new.error}",
                markup=False,
            )
            return 1
        rows = _checks(ev, new, args)
    title = f"{ev['pipeline']} ({ev['id']}) from run {run_record['id']}: recorded vs reproduced"
    console.print(table(title, ["check", "recorded", "reproduced", "band", "within"], rows))
    off = [r[0] for r in rows if r[-1] == "no"]
    if off:
        console.print(f"not reproduced: {', '.join(off)} outside the recorded band")
        return 1
    console.print("reproduced: quality and latency within the recorded band")
    return 0
