"""README's table of the wall-clock search benchmark (issue 20), from the raw run records.

Usage: python reports/bench/wallclock_table.py [SUITE]  (default cifar10-resnet20). Prints one
Markdown row per ``search-wallclock-<suite>-<arm>-<seed>.json`` next to this script, then each
arm's mean final hypervolume and evolution's ratio over it, so the README figures are regenerable.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ARMS = ("evolution", "evolution-ablation", "random", "nsga2")
AT_S = 600.0  # the "at 10 min" column


def _at(curve: list[dict], seconds: float) -> float:
    """Hypervolume after the last full evaluation that finished by ``seconds`` (0 before any)."""
    return max((p["hypervolume"] for p in curve if p["seconds"] <= seconds), default=0.0)


def _ratio(record: dict, field: str, key: str) -> str:
    """A speed-up as ``1.06×``; 'not recorded' where the record predates the field."""
    if field == "beat_peer":
        if "best_speedup" not in (record.get("beat_peer") or {}):
            return "not recorded"
        value, peer = record["beat_peer"]["best_speedup"], None
    else:
        if field not in record:
            return "not recorded"
        value, peer = record[field].get(key), record[field].get("peer")
    if value is None:
        return "none within 1 point"
    return f"{value:.2f}×" + (f" ({peer})" if peer else "")


def row(r: dict) -> str:
    beat = r["time_to_beat_peer_s"]
    return (
        f"| {r['arm']} | {r['seed']} | {r['final_hypervolume']:.4f} "
        f"| {_at(r['hypervolume_over_time'], AT_S):.4f} "
        f"| {r['full_evaluations']} ({r['full_evaluations_per_hour']:.0f}/h) "
        f"| {r['screened']} ({r['screened_per_hour']:.0f}/h) "
        f"| {'never' if beat is None else f'{beat:.0f} s'} "
        f"| {_ratio(r, 'beat_peer', 'best_speedup')} | {_ratio(r, 'final_peer', 'speedup')} |"
    )


def main(suite: str = "cifar10-resnet20") -> None:
    means: dict[str, float] = {}
    for arm in ARMS:
        hv = []
        for seed in (0, 1, 2):
            path = HERE / f"search-wallclock-{suite}-{arm}-{seed}.json"
            if path.is_file():
                record = json.loads(path.read_text())
                hv.append(record["final_hypervolume"])
                print(row(record))
        if hv:
            means[arm] = sum(hv) / len(hv)
            print(f"# {arm}: {len(hv)} seed(s), mean final hypervolume {means[arm]:.4f}")
    if not means:
        print(f"no search-wallclock-{suite}-<arm>-<seed>.json records in {HERE}", file=sys.stderr)
        sys.exit(2)
    for arm, mean in means.items():
        if arm != "evolution" and "evolution" in means and mean:
            print(f"# evolution / {arm}: {means['evolution'] / mean:.2f}x")


if __name__ == "__main__":
    main(*sys.argv[1:])
