"""``petra-hw profile``: measure a suite's baseline on each backend of a device, or re-measure an
existing artifact folder."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from petra_hw.commands.common import add_suite_args, new_out_dir, setup
from petra_hw.console import console, errors, mb, table

COLUMNS = [
    "backend",
    "precision",
    "batch",
    "p50 ms",
    "p90 ms",
    "p99 ms",
    "throughput ips",
    "size MB",
    "quality (test)",
    "noisy",
]


def add_parser(sub) -> None:
    p = sub.add_parser(
        "profile", help="measure a suite's model per backend, or re-measure ARTIFACT"
    )
    p.add_argument("artifact", nargs="?", type=Path, help="an artifact folder to re-measure")
    add_suite_args(p, default_suite="digits")
    p.add_argument("--backend", action="append", help="limit to these backends (repeatable)")
    p.add_argument("--precision", action="append", help="limit to these precisions (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="folder for the artifacts (new)")
    p.add_argument("--json", type=Path, default=None, help="write the results as JSON here")
    p.add_argument("--fresh-process", action="store_true", help="measure each in a new process")
    p.set_defaults(func=run)


def _rows(m, quality_test: float | None) -> list[list[object]]:
    """One table row per batch size of a measurement (latency at 1, then throughput)."""
    return [
        [
            m.backend,
            m.precision,
            s.batch_size,
            s.p50_ms,
            s.p90_ms,
            s.p99_ms,
            s.throughput_ips,
            mb(m.size_bytes),
            quality_test,
            m.noisy,
        ]
        for s in (m.latency, *[t for t in m.throughput if t.batch_size != 1])
    ]


def _remeasure(args: argparse.Namespace) -> int:
    from petra_hw.api import remeasure
    from petra_hw.artifact import read_artifact
    from petra_hw.profiles import check_host, load_profile

    artifact = read_artifact(args.artifact)
    profile = load_profile(args.device)
    check_host(profile)
    m = remeasure(artifact.path, profile, args.fresh_process)
    recorded = artifact.manifest.get("metrics", {}).get("quality", {})
    rows = _rows(m, recorded.get("test"))
    console.print(table(f"{artifact.path} on {profile.name}", COLUMNS, rows))
    if args.json:
        args.json.write_text(
            json.dumps({"artifact": str(artifact.path), "measurement": m.to_json()}, indent=2)
        )
    return 0


def run(args: argparse.Namespace) -> int:
    """The CLI face of ``petra_hw.profile``: the same plan and measurements, printed."""
    if args.artifact is not None:
        return _remeasure(args)
    from petra_hw.api import profile_baseline, profile_plan

    suite, profile, baseline = setup(args)
    plan, skipped = profile_plan(profile, args.backend, args.precision)
    for line in skipped:
        errors.print(line, markup=False, soft_wrap=True)
    out = new_out_dir(args.out, Path("reports"), f"profile-{suite.name}")
    status = console.status("")

    def starting(name: str, precision: str) -> None:
        status.update(f"{name} {precision}: compile, measure, score")

    with status:
        compiled = profile_baseline(
            baseline, profile, plan, out, args.fresh_process, on_start=starting
        )
    results = [c.assessment for c in compiled]
    console.print(
        table(
            f"{suite.name} on {profile.name} ({profile.effective_threads()} threads); quality = test {suite.metric.name} through the artifact",
            COLUMNS,
            [r for a in results for r in _rows(a.measurement, a.quality.get("test"))],
        )
    )
    console.print(f"artifacts: {out}")
    if args.json:
        payload = {
            "suite": suite.name,
            "profile": profile.name,
            "baseline_metrics": baseline.metrics,
            "results": [{**a.row(), "measurement": a.measurement.to_json()} for a in results],
        }
        args.json.write_text(json.dumps(payload, indent=2))
    return 0
