"""Search benchmark: hypervolume versus evaluations for evolution, random and NSGA-II on
cifar10-resnet20 over 3 seeds, and the time prefix reuse saves per candidate.

Run with ``pytest suites/test_bench_search.py --benchmark`` on a quiet machine (about an hour on
2 cores at the default 16 evaluations per run; ``PETRA_BENCH_EVALUATIONS`` changes it).  Expected:
evolution reaches >= 1.15x random's final hypervolume at equal evaluations (mean over seeds), and
applying children of a cached parent is >= 2x faster than recomputing their prefix.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from petra_hw.pipeline import parse_pipeline

SUITE = "cifar10-resnet20"
SEEDS = (0, 1, 2)
STRATEGIES = ("evolution", "random", "nsga2")
EVALUATIONS = int(os.environ.get("PETRA_BENCH_EVALUATIONS", "16"))
FINAL_HV: dict[tuple[str, int], float] = {}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hypervolume_per_strategy(benchmark, strategy: str, seed: int, tmp_path: Path) -> None:
    from petra_hw.search.store import Store
    from petra_hw.search.tune import TuneSettings, tune

    settings = TuneSettings(
        suite=SUITE,
        device="auto",
        seed=seed,
        strategy=strategy,
        evaluations=EVALUATIONS,
        population=4,
    )
    result = benchmark.pedantic(lambda: tune(settings, out=tmp_path), rounds=1, iterations=1)
    store = Store(result.run_dir / "journal.sqlite")
    curve = [(p.evaluations, p.value) for p in store.hypervolume(result.run_id)]
    final = curve[-1][1] if curve else 0.0
    FINAL_HV[(strategy, seed)] = final
    benchmark.extra_info.update(
        {
            "strategy": strategy,
            "seed": seed,
            "hypervolume": final,
            "hv_curve": curve,
            "evaluations": len(result.evaluations),
            "front": [str(e.candidate.pipeline) for e in result.front],
        }
    )
    assert len(result.evaluations) >= EVALUATIONS


def test_evolution_beats_random() -> None:
    runs = {s: [FINAL_HV[(s, seed)] for seed in SEEDS if (s, seed) in FINAL_HV] for s in STRATEGIES}
    if len(runs["evolution"]) < len(SEEDS) or len(runs["random"]) < len(SEEDS):
        pytest.skip("needs the per-strategy runs of this module")
    evo, rnd = (sum(runs[s]) / len(runs[s]) for s in ("evolution", "random"))
    assert evo >= 1.15 * rnd, f"evolution HV {evo:.4f} vs random {rnd:.4f} (nsga2 {runs['nsga2']})"


CHILDREN = [
    "LR - Reg - Pr - Tr",
    "LR - Reg - Pr - PTQ",
    "LR - Reg - Pr(ratio=0.4) - Tr",
    "LR - Reg - Pr - Tr(epochs=1)",
]


@pytest.mark.parametrize("reuse", [False, True], ids=["no-reuse", "prefix-reuse"])
def test_prefix_reuse_time_per_candidate(benchmark, reuse: bool, tmp_path: Path) -> None:
    from petra_hw.apply import PrefixCache, apply
    from petra_hw.baseline import get_baseline
    from petra_hw.suite import load_suite

    baseline = get_baseline(load_suite(SUITE), 0)
    cache = PrefixCache(tmp_path / "cache", 1 << 30) if reuse else None
    if cache is not None:  # the parent, evaluated earlier in a real search
        apply(parse_pipeline("LR - Reg - Pr"), baseline, baseline.suite, cache=cache)

    def children() -> float:
        start = time.perf_counter()
        for text in CHILDREN:
            apply(parse_pipeline(text), baseline, baseline.suite, cache=cache)
        return (time.perf_counter() - start) / len(CHILDREN)

    per_candidate = benchmark.pedantic(children, rounds=1, iterations=1)
    benchmark.extra_info.update({"reuse": reuse, "seconds_per_candidate": per_candidate})
    TIMES[reuse] = per_candidate
    if reuse and False in TIMES:
        assert TIMES[False] >= 2.0 * per_candidate, TIMES


TIMES: dict[bool, float] = {}
