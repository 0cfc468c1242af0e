"""``petra-hw peers``: build only the reference points of a device (no search).

The same run folder, journal and report as ``tune`` with no candidate beyond the Original: the
device's one-shot recipes and the training control, measured in one process pool by the one
harness.  Useful to see what a device gives without petra-hw before spending a search on it.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petra_hw.commands.common import add_suite_args, setup
from petra_hw.console import console, mb, table


def add_parser(sub) -> None:
    p = sub.add_parser("peers", help="measure the one-shot peer recipes of a device (no search)")
    add_suite_args(p, default_suite="digits")
    p.add_argument("--out", type=Path, default=Path("runs"), help="base folder of run folders")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from petra_hw.commands.tune import _write_report
    from petra_hw.search.tune import TuneSettings, tune
    from petra_hw.value import undertrained

    setup(args)  # refuses a device this host lacks; trains the baseline once, up front
    settings = TuneSettings(
        suite=args.suite,
        device=args.device,
        data_dir=str(args.data_dir) if args.data_dir else None,
        seed=args.seed,
        evaluations=0,
    )
    with console.status("building the references"):
        result = tune(settings, args.out)
    o = result.original
    rows = []
    for ev in [o, *result.references]:
        name = f"ref: {ev.candidate.reference}" if ev.candidate.reference else "Original"
        if not ev.ok:
            rows.append([name, f"{ev.error_kind}: {ev.error}", "", "", "", ""])
            continue
        rows.append(
            [
                name,
                f"{ev.quality.get('test', float('nan')):.4f}",
                f"{ev.objectives['latency_ms']:.4f}",
                f"{ev.objectives['throughput_ips']:.0f}",
                mb(ev.objectives["size_bytes"]),
                f"{ev.backend} {ev.precision}",
            ]
        )
    console.print(
        table(
            f"references of {result.run_id}",
            ["reference", "quality test", "latency ms", "throughput ips", "size MB", "backend"],
            rows,
        )
    )
    warning = undertrained(o, result.references, result.objectives.config.higher_is_better)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    console.print(f"run folder: {result.run_dir}")
    _write_report(result.run_dir)
    return 0
