"""Search benchmark: hypervolume versus evaluations for evolution, random and NSGA-II on
cifar10-resnet20 over 3 seeds, and wall time per evaluation with and without prefix reuse.

Run with ``pytest suites/test_bench_search.py --benchmark`` on a quiet machine: each run takes
7-20 minutes on 2 cores at the default 16 evaluations (``PETRA_BENCH_EVALUATIONS`` changes it), so
the strategies take about two and a half hours and ``-k prefix_reuse`` (both modes) half an hour;
``-k evolution`` etc. split it over sessions (final hypervolumes persist in pytest's cache).
Expected: evolution reaches >= 1.15x random's mean final hypervolume at equal evaluations, and
evaluating the children of an evaluated parent is >= 2x faster per evaluation with prefix reuse
than without, in pretrained and in untrained mode.  Measured figures are in README.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from petra_hw.pipeline import parse_pipeline

SUITE = "cifar10-resnet20"
SEEDS = (0, 1, 2)
STRATEGIES = ("evolution", "random", "nsga2")
EVALUATIONS = int(os.environ.get("PETRA_BENCH_EVALUATIONS", "16"))
# Final hypervolumes persist in pytest's cache, so the runs may be split over several sessions
# (``-k evolution``, then ``-k random``) and the comparison still sees all of them.
CACHE_KEY = f"petra_hw/search_hv/{SUITE}/{EVALUATIONS}"


def _final_hv(config: pytest.Config) -> dict[str, float]:
    return dict(config.cache.get(CACHE_KEY, {})) if config.cache is not None else {}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_hypervolume_per_strategy(
    benchmark, request: pytest.FixtureRequest, strategy: str, seed: int, tmp_path: Path
) -> None:
    from petra_hw.search.store import JOURNAL_NAME, Store
    from petra_hw.search.tune import TuneSettings, tune

    settings = TuneSettings(
        suite=SUITE,
        device="auto",
        seed=seed,
        strategy=strategy,
        evaluations=EVALUATIONS,
        population=4,
        references=False,  # comparison runs: the peers do not change a hypervolume
    )
    result = benchmark.pedantic(lambda: tune(settings, out=tmp_path), rounds=1, iterations=1)
    with Store(result.run_dir / JOURNAL_NAME) as store:
        curve = [(p.evaluations, p.value) for p in store.hypervolume(result.run_id)]
    final = curve[-1][1] if curve else 0.0
    # In the search itself: what the cache saved on the children it evaluated (the time the reused
    # steps took when they were first computed), next to what those children cost.
    children = [e for e in result.evaluations if e.candidate.parent is not None and e.ok]
    n = len(children) or None  # NSGA-II and random candidates have no parent: no figure, not 0 s
    spent = sum(e.timings_s.get("total_s", 0.0) for e in children)
    saved = sum(e.timings_s.get("cache_saved_s", 0.0) for e in children)
    if request.config.cache is not None:
        request.config.cache.set(
            CACHE_KEY, {**_final_hv(request.config), f"{strategy}-{seed}": final}
        )
    benchmark.extra_info.update(
        {
            "strategy": strategy,
            "seed": seed,
            "hypervolume": final,
            "hv_curve": curve,
            "evaluations": len(result.evaluations),
            "front": [str(e.candidate.pipeline) for e in result.front],
            "children": len(children),
            "children_reusing_a_prefix": sum(e.cache_hit_steps > 0 for e in children),
            "children_seconds_per_evaluation": spent / n if n else None,
            "children_seconds_saved_per_evaluation": saved / n if n else None,
        }
    )
    assert len(result.evaluations) >= EVALUATIONS


def test_evolution_beats_random(request: pytest.FixtureRequest) -> None:
    final = _final_hv(request.config)
    runs = {
        s: [final[f"{s}-{seed}"] for seed in SEEDS if f"{s}-{seed}" in final] for s in STRATEGIES
    }
    if len(runs["evolution"]) < len(SEEDS) or len(runs["random"]) < len(SEEDS):
        pytest.skip(f"needs the per-strategy runs of this module at {EVALUATIONS} evaluations")
    evo, rnd = (sum(runs[s]) / len(runs[s]) for s in ("evolution", "random"))
    assert evo >= 1.15 * rnd, f"evolution HV {evo:.4f} vs random {rnd:.4f} (nsga2 {runs['nsga2']})"


PARENT = "LR - Reg - Pr"
N_CHILDREN = int(os.environ.get("PETRA_BENCH_CHILDREN", "6"))
SHARE_DRAWS = 2000  # children drawn to estimate how many keep a trained prefix (no training)
EVAL_SECONDS: dict[tuple[str, bool], float] = {}


def _draw_children(n: int, *, distinct: bool) -> list[str]:
    """Children of ``PARENT`` as the evolution makes them: its mutator, operators uniform (the
    bandit's prior), on this host's profile space; seeded, so both arms evaluate the same ones."""
    import numpy as np

    from petra_hw.profiles import load_profile
    from petra_hw.search.mutation import Mutator
    from petra_hw.search.space import SearchSpace

    space = SearchSpace.for_profile(load_profile("auto"))
    rng = np.random.default_rng(0)
    parent = space.repair(parse_pipeline(PARENT), rng)
    mutator = Mutator(space)
    out: list[str] = []
    while len(out) < n:
        child, _ = mutator.mutate(parent, rng)
        if not distinct or str(child) not in out:
            out.append(str(child))
    return out


def _share_keeping_training(children: list[str], ctx) -> float:
    """The share of ``children`` whose prefix restored from the cache (once ``PARENT`` was applied)
    holds a training step, with pipelines as the evaluator applies them in ``ctx``'s mode."""
    from petra_hw.apply import shared_prefix
    from petra_hw.canonical import canonicalize
    from petra_hw.search.evaluator import applied_pipeline
    from petra_hw.suite import load_suite

    suite = load_suite(SUITE)

    def applied(text: str):
        return canonicalize(applied_pipeline(ctx, suite, parse_pipeline(text)))

    parent = applied(PARENT)
    kept = 0
    for text in children:
        child = applied(text)
        kept += any(s.spec.trains for s in child.steps[: shared_prefix(parent, child)])
    return kept / len(children)


@pytest.mark.parametrize(
    ("mode", "reuse"),
    [
        ("pretrained", False),
        ("pretrained", True),
        ("untrained", False),
        ("untrained", True),
    ],
    ids=[
        "pretrained-no-reuse",
        "pretrained-prefix-reuse",
        "untrained-no-reuse",
        "untrained-prefix-reuse",
    ],
)
def test_prefix_reuse_time_per_evaluation(
    benchmark, mode: str, reuse: bool, tmp_path: Path
) -> None:
    """Whole evaluations (apply, compile, quality and timing through the artifact) of the
    parent's children, after the parent itself was evaluated (as in a real search).  In
    untrained mode every candidate first trains the suite's freshly initialised model."""
    import torch

    from petra_hw.baseline import get_baseline, seed_everything
    from petra_hw.search.evaluator import EvalContext, evaluate_candidate
    from petra_hw.search.types import Candidate
    from petra_hw.suite import load_suite

    suite = load_suite(SUITE)
    if mode == "pretrained":
        model = get_baseline(suite, 0).model
    else:  # as ``tune`` starts an untrained run
        seed_everything(0)
        model = suite.build_model()
    weights = tmp_path / "baseline.pt"
    torch.save(model.state_dict(), weights)
    ctx = EvalContext(
        suite=SUITE,
        profile="auto",
        run_dir=tmp_path / "run",
        baseline_weights=weights,
        mode=mode,
        prefix_reuse=reuse,
    )
    parent = evaluate_candidate(Candidate(parse_pipeline(PARENT), 0, None, "seed"), ctx)
    assert parent.ok, parent.error
    texts = _draw_children(N_CHILDREN, distinct=True)
    children = [Candidate(parse_pipeline(t), 1, parent.candidate.id, "mutation") for t in texts]

    def evaluate_children() -> list:
        return [evaluate_candidate(c, ctx) for c in children]

    evaluations = benchmark.pedantic(evaluate_children, rounds=1, iterations=1)
    per_evaluation = sum(e.timings_s["total_s"] for e in evaluations) / len(evaluations)
    EVAL_SECONDS[(mode, reuse)] = per_evaluation
    # How representative the timed children are: the share of the mutator's children (many
    # draws, duplicates kept) whose restored prefix holds a training step, vs the timed sample.
    draws = _draw_children(SHARE_DRAWS, distinct=False)
    benchmark.extra_info.update(
        {
            "mode": mode,
            "reuse": reuse,
            "seconds_per_evaluation": per_evaluation,
            "share_keeping_training_drawn": _share_keeping_training(draws, ctx),
            "share_keeping_training_timed": _share_keeping_training(texts, ctx),
            "children": [
                {
                    "pipeline": str(e.candidate.pipeline),
                    "total_s": e.timings_s.get("total_s"),
                    "apply_s": e.timings_s.get("apply_s"),
                    "cache_hit_steps": e.cache_hit_steps,
                    "error": e.error,
                }
                for e in evaluations
            ],
        }
    )
    assert all(e.ok for e in evaluations), [e.error for e in evaluations if not e.ok]
    if reuse:
        assert any(e.cache_hit_steps for e in evaluations)
        if (mode, False) in EVAL_SECONDS:
            assert EVAL_SECONDS[(mode, False)] >= 2.0 * per_evaluation, EVAL_SECONDS
