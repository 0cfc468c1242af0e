"""``petra-hw gate``: fail CI on a latency or quality regression against a committed baseline.

Exit 0 when every baseline benchmark passes, 1 on a regression (with a one-line reason), 2 on
bad input.  The last line is always ``gate: N passed, M failed``, bad input included.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petra_hw.console import console, errors
from petra_hw.errors import UserError
from petra_hw.gate import (
    DEFAULT_ALPHA,
    DEFAULT_LATENCY_TOLERANCE,
    DEFAULT_QUALITY_TOLERANCE_PP,
    GateResult,
    GateSettings,
    compare,
    fmt_seconds,
    load_results,
    parse_percent,
)

_STYLE = {"pass": "green", "fail": "red", "missing": "red", "new": "yellow"}


def add_parser(sub) -> None:
    p = sub.add_parser("gate", help="compare benchmark results with a baseline (CI gating)")
    # checked in run(), not by argparse, so that bad input still ends with the summary line
    p.add_argument("--baseline", type=Path, help="pytest-benchmark JSON baseline (required)")
    p.add_argument("--current", type=Path, help="pytest-benchmark JSON results (required)")
    p.add_argument(
        "--latency-tolerance",
        default=f"{DEFAULT_LATENCY_TOLERANCE:.0%}",
        help="allowed growth of the median latency (default %(default)s)",
    )
    p.add_argument(
        "--quality-tolerance",
        type=float,
        default=DEFAULT_QUALITY_TOLERANCE_PP,
        help="allowed quality drop in percentage points (default %(default)s)",
    )
    p.add_argument(
        "--alpha",
        type=float,
        default=DEFAULT_ALPHA,
        help="significance of the one-sided Mann-Whitney U test (default %(default)s)",
    )
    p.set_defaults(func=run)


def _quality(v) -> str:
    return "; ".join(
        f"{k} {b:.4f} -> {'-' if c is None else f'{c:.4f}'}" for k, (b, c) in v.quality.items()
    )


def _print(result: GateResult, settings: GateSettings) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(
        title=f"gate: a regression is p50 and p10 latency +{settings.latency_tolerance:.0%} with "
        f"U test p < {settings.alpha:g}, or quality -{settings.quality_tolerance_pp:g} pp",
        title_justify="left",
    )
    columns = (
        "benchmark",
        "baseline p50",
        "current p50",
        "p50",
        "p10",
        "p (U)",
        "quality",
        "verdict",
    )
    for c in columns:
        t.add_column(c, justify="left" if c in ("benchmark", "quality", "verdict") else "right")
    for v in result.verdicts:
        t.add_row(
            escape(v.name),
            fmt_seconds(v.base_median_s),
            fmt_seconds(v.current_median_s),
            "-" if v.change is None else f"{v.change:+.1%}",
            "-" if v.tail_change is None else f"{v.tail_change:+.1%}",
            "-" if v.p_value is None else f"{v.p_value:.2g}",
            escape(_quality(v)),
            f"[{_STYLE[v.status]}]{v.status}[/]",
        )
    console.print(t)
    for note in result.notes:
        console.print(note, markup=False)


def run(args: argparse.Namespace) -> int:
    try:
        if args.baseline is None or args.current is None:
            raise UserError("gate needs --baseline FILE and --current FILE")
        if args.quality_tolerance < 0 or not 0 < args.alpha < 1:
            raise UserError("--quality-tolerance must be >= 0 and --alpha within (0, 1)")
        settings = GateSettings(
            latency_tolerance=parse_percent(args.latency_tolerance),
            quality_tolerance_pp=args.quality_tolerance,
            alpha=args.alpha,
        )
        result = compare(load_results(args.baseline), load_results(args.current), settings)
    except UserError as exc:
        errors.print(f"petra-hw: error: {exc}", markup=False, soft_wrap=True)
        console.print("gate: 0 passed, 0 failed")
        return 2
    _print(result, settings)
    failed = [v for v in result.verdicts if v.failed]
    if failed:
        reasons = "; ".join(f"{v.name}: {', '.join(v.reasons)}" for v in failed)
        console.print(f"gate: regression: {reasons}", markup=False, soft_wrap=True)
    console.print(result.summary())
    return 1 if failed else 0
