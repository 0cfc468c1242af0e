"""``petra-hw suites``: the bundled suites with their baseline metric (where already trained)."""

from __future__ import annotations

import argparse
import json

from petra_hw.console import console, table


def add_parser(sub) -> None:
    p = sub.add_parser("suites", help="list bundled suites and their cached baseline metric")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from petra_hw.baseline import cache_dir
    from petra_hw.suite import bundled_names, load_suite

    rows = []
    for name in bundled_names():
        s = load_suite(name)
        meta = cache_dir() / "baselines" / f"{s.name}-s{args.seed}-{s.code_version()}.json"
        test = json.loads(meta.read_text())["test"] if meta.exists() else None
        rows.append(
            [
                name,
                s.task,
                f"{s.metric.name} ({'higher' if s.metric.higher_is_better else 'lower'} is better)",
                test if test is not None else "not trained yet",
                s.description,
            ]
        )
    console.print(
        table(
            "bundled suites (baseline = test split, eager torch)",
            ["name", "task", "metric", "baseline", "description"],
            rows,
        )
    )
    return 0
