"""``petra-hw compile``: apply one pipeline to a suite's baseline and compile it for a device.

Everything that can be refused is refused before any work: the pipeline text, the device, the
precision the pipeline deploys at (``petra_hw.precision.resolve``), and whether the backend can
compile it on this profile and host.  Then the steps run, the backend compiles, the artifact is
judged (quality on val and test through the runner, parity against the FP32 baseline, latency and
throughput) and the results are written into the artifact's manifest.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from petra_hw.commands.common import add_suite_args, output_or_nothing
from petra_hw.console import console, errors, mb, table

if TYPE_CHECKING:
    from petra_hw.backend import Backend
    from petra_hw.pipeline import Pipeline
    from petra_hw.precision import PrecisionIntent
    from petra_hw.profiles import DeviceProfile
    from petra_hw.suite import Suite

COLUMNS = [
    "backend", "precision", "p50 ms", "throughput ips", "batch", "size MB", "int8 ops",
    "float ops", "val", "test", "top-1 agreement", "max abs diff",
]  # fmt: skip


def add_parser(sub) -> None:
    p = sub.add_parser(
        "compile", help="apply a pipeline to a suite's model and compile it for a device"
    )
    add_suite_args(p)
    p.add_argument("--pipeline", required=True, help='e.g. "LR - Pr - PTQ(calibration=entropy)"')
    p.add_argument("--backend", default=None, help="default: the device's first backend that can")
    p.add_argument("--out", type=Path, default=None, help="folder for the artifact (new or empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from petra_hw.backend import choose_backend, get_backend
    from petra_hw.pipeline import parse_pipeline
    from petra_hw.precision import deployed_intent
    from petra_hw.profiles import check_host, load_profile
    from petra_hw.suite import load_suite

    pipeline = parse_pipeline(args.pipeline)
    profile = load_profile(args.device)
    for note in check_host(profile):
        errors.print(f"note: {note}")
    intent = deployed_intent(pipeline, profile)
    backend = get_backend(choose_backend(profile, intent, args.backend))
    suite = load_suite(args.suite)
    with output_or_nothing(args.out, Path("reports"), f"compile-{suite.name}") as out:
        return _compile(args, pipeline, profile, intent, backend, suite, out)


def _compile(
    args: argparse.Namespace,
    pipeline: Pipeline,
    profile: DeviceProfile,
    intent: PrecisionIntent,
    backend: Backend,
    suite: Suite,
    out: Path,
) -> int:
    """Everything that writes into ``out`` (removed by the caller when this fails): the work is
    ``petra_hw.api.compile_pipeline``, what ``petra_hw.compile`` runs."""
    from petra_hw.api import compile_pipeline
    from petra_hw.baseline import get_baseline

    with console.status(f"baseline for {suite.name} (trained once, then cached)"):
        baseline = get_baseline(suite, args.seed, args.data_dir)
    with console.status(f"{pipeline}: apply; {backend.name} {intent.label()}: compile, measure"):
        compiled = compile_pipeline(
            pipeline, profile, intent, backend.name, baseline, out, seed=args.seed
        )
    result = compiled.assessment
    m, ops, par = result.measurement, result.artifact.manifest.get("op_counts", {}), result.parity
    row = [
        m.backend, intent.label(), m.latency.p50_ms, m.throughput_ips,
        max((s.batch_size for s in m.throughput), default=1), mb(m.size_bytes), ops.get("int8"),
        ops.get("float"), result.quality.get("val"), result.quality.get("test"),
        par.get("top1_agreement"), par.get("max_abs_diff"),
    ]  # fmt: skip
    title = (
        f"{pipeline} on {profile.name} ({profile.effective_threads()} threads); quality = "
        f"{suite.metric.name} through the artifact (baseline test {baseline.metrics['test']:.4f})"
    )
    console.print(table(title, COLUMNS, [row]))
    for note in compiled.step_notes:
        console.print(f"note: {note}")
    for warning in compiled.warnings:
        console.print(f"warning: {warning}")
    console.print(f"artifact: {out}")
    return 0
