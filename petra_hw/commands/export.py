"""``petra-hw export RUN [RUN...] [--front | --candidate ID ...] --out DIR``: deployable folders.

One folder per device and pipeline under ``--out`` (which must be new or empty), each with the
artifact, its manifest and a README.md on how to load it.  ``--front`` (the default) exports the
Pareto front of each run; ``--candidate`` exports the given ids (a unique prefix is enough);
``--best latency|size|throughput`` the best artifact within the run's quality budget.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petra_hw.console import console, table


def add_parser(sub) -> None:
    p = sub.add_parser("export", help="export a run's Pareto front (or candidates) for deployment")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder, or run id under --runs")
    p.add_argument("--runs", dest="base", type=Path, default=Path("runs"), help="base of run ids")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--front", action="store_true", help="the Pareto front (default)")
    which.add_argument("--candidate", action="append", metavar="ID", help="a candidate id")
    which.add_argument(
        "--best",
        choices=("latency", "size", "throughput"),
        default=None,
        help="the best artifact within the run's quality budget for this objective",
    )
    p.add_argument("--out", type=Path, required=True, help="new or empty folder, e.g. deploy/")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from petra_hw.deploy import export_runs
    from petra_hw.search.tune import find_run
    from petra_hw.value import objective_name

    run_dirs = [find_run(r, args.base) for r in args.runs]
    best = objective_name(args.best) if args.best else None
    exported = export_runs(run_dirs, args.out, None if args.front else args.candidate, best)
    rows = [[e.profile, e.pipeline, e.backend, e.precision, str(e.path)] for e in exported]
    console.print(
        table(
            f"exported to {args.out}",
            ["device", "pipeline", "backend", "precision", "folder"],
            rows,
        )
    )
    for e in exported:
        if e.chosen_on:
            console.print(
                f"{e.candidate}: best {args.best} within the quality budget on {e.chosen_on}"
            )
    console.print('load with petra_hw.load("<folder>"); each folder\'s README.md shows how')
    return 0
