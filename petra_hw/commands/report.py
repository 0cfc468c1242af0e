"""``petra-hw report RUN [RUN...]``: report.json, report.md, report.html and plots.

One run: written into ``<run>/report/`` (rewritten, it is derived data) unless ``--out`` is
given.  Several runs (one suite on CPU and GPU, say) are merged into one report, written to
``--out`` or a fresh ``reports/report-<time>/``; ``--out`` must be new or empty.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from petra_hw.commands.common import new_out_dir
from petra_hw.console import console


def add_parser(sub) -> None:
    p = sub.add_parser("report", help="write the report of one run, or merge several runs")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run folder, or run id under --runs")
    p.add_argument("--runs", dest="base", type=Path, default=Path("runs"), help="base of run ids")
    p.add_argument("--out", type=Path, default=None, help="folder for the report (new or empty)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from petra_hw.report import REPORT_DIR, write_reports
    from petra_hw.search.tune import find_run

    run_dirs = [find_run(r, args.base) for r in args.runs]
    if args.out is None and len(run_dirs) == 1:
        out = run_dirs[0] / REPORT_DIR
    else:
        out = new_out_dir(args.out, Path("reports"), "report")
    with console.status(f"report of {len(run_dirs)} run(s)"):
        paths = write_reports(run_dirs, out)
    console.print(paths["markdown"].read_text(), markup=False, soft_wrap=True)
    for kind in ("json", "html", "plots"):
        console.print(f"{kind}: {paths[kind]}")
    return 0
