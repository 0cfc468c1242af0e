"""The search algorithm on synthetic evaluations: no models, no devices, fast.

A toy "device" (``toy_evaluation``) turns a pipeline into made-up but structured objectives, so
that strategies can be compared and resumed without compiling anything.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from petra_hw.errors import UserError
from petra_hw.pipeline import Pipeline, parse_pipeline
from petra_hw.search.mutation import (
    MAX_STEP_SIGMAS,
    OPERATORS,
    SIGMA,
    Mutator,
    OperatorBandit,
    neighbour,
)
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.selection import front_ranks, hypervolume, pareto_front, survive
from petra_hw.search.space import SearchSpace
from petra_hw.search.strategy import (
    STRATEGIES,
    PipelineCodec,
    Stopper,
    Target,
    canonical_key,
    get_strategy,
)
from petra_hw.search.types import Candidate, Evaluation

PAPER = [
    "Reg - LR - Tr - Pr", "Pr - QAT", "Pr - Tr - Pr - PDQ", "LR - Reg - Pr - LR", "LR - QAT - Pr - QS",
    "QD - Pr - QS - LR", "Pr - QS - LR - QD", "LR - Reg - Pr - QAT", "LR - PTQ", "Pr - PDQ",
]  # fmt: skip

BASELINE = Evaluation(
    Candidate(Pipeline.make()),
    objectives={"latency_ms": 10.0, "throughput_ips": 1000.0, "size_bytes": 4e6},
    quality={"val": 0.9},
)


def objectives(**config: object) -> Objectives:
    return Objectives(ObjectiveConfig(**config), BASELINE)  # type: ignore[arg-type]


def ev(
    q: float,
    lat: float,
    size: float = 4e6,
    error: str | None = None,
    text: str = "LR",
    **extra: float,
) -> Evaluation:
    cand = Candidate(parse_pipeline(text))
    return Evaluation(
        cand, {"latency_ms": lat, "size_bytes": size, **extra}, {"val": q}, error=error
    )


def toy_evaluation(c: Candidate) -> Evaluation:
    """A made-up device and model: pruning and low rank trade quality for speed and size,
    quantization shrinks at a small cost, training recovers part of the drop (best near lr=1e-3)."""
    lat, size, drop, quantized = 1.0, 1.0, 0.0, False
    for s in c.pipeline.steps:
        if s.kind == "Pr":
            r = float(s["ratio"])
            lat, size = lat * (1 - 0.8 * r), size * (1 - r)
            drop += 0.5 * r**2 * (0.6 if s["criterion"] == "taylor" else 1.0)
        elif s.kind == "LR":
            t = float(s["threshold"])
            lat, size = lat * (0.4 + 0.6 * t), size * (0.3 + 0.7 * t)
            drop += 0.4 * (1 - t) ** 1.5
        elif s.kind in ("PTQ", "PDQ", "QAT") and not quantized:
            quantized = True
            lat, size = lat * (0.5 if s.kind != "PDQ" else 0.8), size * 0.27
            drop += (
                0.01 / int(s["epochs"]) if s.kind == "QAT" else {"PTQ": 0.03, "PDQ": 0.02}[s.kind]
            )
        elif s.kind in ("Tr", "Reg"):
            lr_fit = math.exp(-((math.log10(float(c.pipeline.setting("lr"))) + 3) ** 2))
            drop *= 1 - 0.5 * lr_fit * int(s["epochs"]) / 3
        lat *= 1.02  # every step costs a little (layout changes, extra ops)
    quality = 0.9 * (1 - min(drop, 0.9))
    return Evaluation(c, {"latency_ms": 10 * lat, "size_bytes": 4e6 * size}, {"val": quality})


# -- space -----------------------------------------------------------------------------------
def test_default_space_holds_paper_pipelines_and_random_draws() -> None:
    space = SearchSpace.default()
    for text in PAPER:
        assert space.contains(parse_pipeline(text)), (text, space.validate(parse_pipeline(text)))
    rng = np.random.default_rng(0)
    for _ in range(300):
        p = space.random_pipeline(rng)
        assert space.contains(p) and 1 <= len(p) <= 4 and "FP16" not in {s.kind for s in p}
    assert "FP16" in SearchSpace.default(gpu=True).kinds
    assert not space.contains(parse_pipeline("Tr(epochs=10)"))  # epochs stay cheap by default


def test_space_spec_narrows_and_round_trips() -> None:
    space = SearchSpace.from_spec(
        {
            "kinds": ["LR", "Pr", "QS"],
            "max_len": 3,
            "params": {"Pr.ratio": [0.1, 0.6], "Pr.criterion": ["l1", "l2"], "lr": 1e-3},
        }
    )
    assert space.kinds == ("LR", "Pr", "PTQ") and space.max_len == 3
    assert space.contains(parse_pipeline("Pr(ratio=0.5) - PTQ"))
    assert not space.contains(parse_pipeline("Pr(ratio=0.7)"))
    assert not space.contains(parse_pipeline("Pr(criterion=taylor)"))
    assert not space.contains(parse_pipeline("Tr"))
    assert not space.contains(parse_pipeline("LR - LR - LR - LR"))
    assert space.searchable_params("Pr") == ["criterion", "ratio", "scope", "structured"]
    assert SearchSpace.from_spec(json.loads(json.dumps(space.to_spec()))) == space
    with pytest.raises(UserError, match="GPU"):
        SearchSpace.from_spec({"kinds": ["FP16"]})
    with pytest.raises(UserError):
        SearchSpace.from_spec({"params": {"Pr.ratio": [0.5, 0.95]}})  # beyond the kind's limit
    with pytest.raises(UserError):
        SearchSpace.from_spec({"kinds": ["LR"], "params": {"Pr.ratio": [0.1, 0.2]}})
    with pytest.raises(UserError):
        SearchSpace.from_spec({"colours": 3})


def test_profile_space_follows_its_precisions() -> None:
    class Prof:
        is_gpu, precisions = True, ("fp16", "fp32")

    assert SearchSpace.for_profile(Prof()).kinds == ("Tr", "Reg", "LR", "Pr", "FP16")


# -- mutation --------------------------------------------------------------------------------
NARROW = SearchSpace.from_spec(
    {"kinds": ["Tr", "LR", "Pr", "PTQ"], "max_len": 3, "params": {"Pr.ratio": [0.1, 0.4]}}
)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), narrow=st.booleans())
def test_mutations_stay_valid_and_in_space(seed: int, narrow: bool) -> None:
    space = NARROW if narrow else SearchSpace.default()
    rng = np.random.default_rng(seed)
    mutator = Mutator(space)
    p = space.random_pipeline(rng)
    for _ in range(25):
        child, op = mutator.mutate(p, rng)
        assert op in OPERATORS and child != p
        assert space.contains(child), (op, str(p), str(child), space.validate(child))
        assert Pipeline.from_json(child.to_json()) == child
        p = child


def test_mutation_repairs_a_parent_outside_the_space() -> None:
    rng = np.random.default_rng(1)
    child, _ = Mutator(NARROW).mutate(parse_pipeline("Pr(ratio=0.8) - Reg - QD - LR - LR"), rng)
    assert NARROW.contains(child)


def test_local_mutation_is_a_bounded_neighbourhood_step() -> None:
    space = SearchSpace.from_spec(
        {
            "kinds": ["Pr"],
            "max_len": 1,
            "params": {"Pr.criterion": "l1", "Pr.scope": "uniform", "Pr.structured": True},
        }
    )
    mutator = Mutator(space, OperatorBandit(("tweak",), p_min=0.0))
    r = space.param_range("Pr", "ratio")
    rng = np.random.default_rng(0)
    steps = []
    for _ in range(300):
        parent = space.random_pipeline(rng)
        child, op = mutator.mutate(parent, rng)
        assert op == "tweak"
        du = abs(r.to_unit(child.steps[0]["ratio"]) - r.to_unit(parent.steps[0]["ratio"]))
        assert 0 < du <= MAX_STEP_SIGMAS * SIGMA + 1e-2  # bounded, up to 3-digit rounding
        steps.append(du)
    assert np.mean(steps) < 0.15  # uniform resampling would average 1/3
    # integers move by 1 or 2, choices to another value
    epochs = SearchSpace.from_spec({"params": {"Tr.epochs": [1, 10]}}).param_range("Tr", "epochs")
    moves = {neighbour(epochs, 5, rng) - 5 for _ in range(200)}
    assert moves <= {-2, -1, 1, 2} and {-1, 1} <= moves
    calib = (
        space.param_range("PTQ", "calibration")
        if "PTQ" in space.kinds
        else SearchSpace.default().param_range("PTQ", "calibration")
    )
    assert all(neighbour(calib, "entropy", rng) != "entropy" for _ in range(50))


def test_bandit_moves_toward_rewarded_operator_and_keeps_the_floor() -> None:
    bandit = OperatorBandit(OPERATORS, p_min=0.05)
    p0 = bandit.probabilities()
    assert math.isclose(sum(p0.values()), 1.0) and len(set(round(v, 9) for v in p0.values())) == 1
    for _ in range(100):
        bandit.reward("insert", True)
        for op in OPERATORS:
            if op != "insert":
                bandit.reward(op, False)
        p = bandit.probabilities()
        assert math.isclose(sum(p.values()), 1.0)
        assert min(p.values()) >= 0.05 - 1e-12
    assert p["insert"] > 0.6 and p["insert"] > p0["insert"]
    assert all(math.isclose(p[op], 0.05, abs_tol=1e-6) for op in OPERATORS if op != "insert")
    # probabilities restricted to the operators that apply still sum to one
    sub = bandit.probabilities(["delete", "swap"])
    assert math.isclose(sum(sub.values()), 1.0)
    rng = np.random.default_rng(0)
    picks = [bandit.choose(rng, list(OPERATORS)) for _ in range(2000)]
    assert picks.count("insert") > picks.count("delete") * 5
    assert picks.count("delete") > 0


# -- objectives and selection ----------------------------------------------------------------
def test_normalization_against_baseline() -> None:
    obj = objectives(names=("quality", "latency_ms", "throughput_ips", "size_bytes"))
    m = obj.matrix([BASELINE, ev(0.81, 5.0, 1e6, throughput_ips=2000.0)])
    np.testing.assert_allclose(m.F[0], [0.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(m.F[1], [0.1, 0.5, 0.5, 0.25])
    lower = Objectives(ObjectiveConfig(higher_is_better=False), BASELINE)
    assert lower.quality_drop(ev(0.99, 1.0)) == pytest.approx(0.1)  # an error metric that grew
    # energy only counts when every evaluation has it
    energy = Objectives(
        ObjectiveConfig(names=("quality", "energy_j")),
        Evaluation(**{**BASELINE.__dict__, "objectives": {**BASELINE.objectives, "energy_j": 2.0}}),
    )
    assert energy.matrix([ev(0.9, 1.0, energy_j=1.0)]).names == ("quality", "energy_j")
    assert energy.matrix([ev(0.9, 1.0, energy_j=1.0), ev(0.9, 1.0)]).names == ("quality",)
    ref = objectives(max_latency_ms=20.0, max_quality_drop=0.02).reference_point()
    np.testing.assert_allclose(ref, [0.022, 2.2, 1.1])


def test_hv_survival_keeps_the_known_front() -> None:
    obj = objectives(names=("quality", "latency_ms"))
    # a linear front: every 1% of quality drop buys 5% of latency
    front = [ev(0.9 * (1 - d), 10 * (1 - 5 * d)) for d in np.linspace(0.0, 0.09, 7)]
    rng = np.random.default_rng(0)
    dominated = [  # each one worse than some front point in both objectives
        ev(0.9 * (1 - d) - 0.01 * rng.random() - 0.001, 10 * (1 - 5 * d) + rng.random() + 0.01)
        for d in rng.choice(np.linspace(0.0, 0.09, 7), 12)
    ]
    pool = dominated[:6] + front + dominated[6:]
    m = obj.matrix(pool)
    s = survive(m, 9, obj.reference_point(m.names), rng, n_random=2)
    kept = {id(pool[i]) for i in s.survivors}
    assert {id(e) for e in front} <= kept and len(s.survivors) == 9 and len(s.diverse) == 2
    assert all(s.rank[pool.index(e)] == 0 for e in front)
    # thinning a front keeps its extremes (they hold the most exclusive hypervolume)
    s = survive(obj.matrix(front), 4, obj.reference_point(m.names), rng)
    assert {0, 6} <= set(s.elite)
    assert {id(e) for e in pareto_front(pool, obj)} == {id(e) for e in front}
    assert hypervolume(front, obj) > hypervolume(front[::2], obj) > hypervolume(dominated, obj) > 0


def test_constrained_domination_and_failures_rank_last() -> None:
    obj = objectives(max_latency_ms=8.0)
    great_but_slow = ev(0.9, 9.0, 1e5)  # dominates everything, breaks the latency limit
    slower = ev(0.9, 12.0, 1e5)
    feasible = [ev(0.8, 7.0, 3e6), ev(0.85, 7.9, 3.9e6), ev(0.7, 1.0, 4e6)]
    failed = ev(0.9, 1.0, 1e5, error="compile failed")
    flagged = Evaluation(**{**feasible[0].__dict__, "feasible": False})  # the evaluator said so
    pool = [great_but_slow, failed, *feasible, slower, flagged]
    m = obj.matrix(pool)
    rank = front_ranks(m)
    assert m.feasible.tolist() == [False, False, True, True, True, False, False]
    assert max(rank[2:5]) < min(rank[0], rank[5], rank[6])
    assert rank[0] < rank[5]  # less violation ranks higher
    assert rank[1] == rank.max() and (rank == rank.max()).sum() == 1
    s = survive(m, 4, obj.reference_point(), np.random.default_rng(0))
    assert 1 not in s.survivors and set(s.elite) >= {2, 3, 4}
    assert pareto_front(pool, obj) and all(e.feasible and e.ok for e in pareto_front(pool, obj))


# -- strategies ------------------------------------------------------------------------------
def _run(strategy, rounds: int, batch: int = 8) -> list[Candidate]:
    asked = []
    for _ in range(rounds):
        cands = strategy.ask(batch)
        asked += cands
        strategy.tell([toy_evaluation(c) for c in cands])
    return asked


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_strategies_ask_valid_unique_candidates(name: str) -> None:
    space = SearchSpace.default()
    s = get_strategy(name, space, seed=3, objectives=objectives())
    asked = []
    for _ in range(6):
        cands = s.ask(8)
        assert 0 < len(cands) <= 8
        assert all(space.contains(c.pipeline) for c in cands)
        asked += cands
        evals = [toy_evaluation(c) for c in cands]
        evals[0] = Evaluation(cands[0], error="step crashed", error_kind="step")  # errors are data
        s.tell(evals)
        assert not s.pending
    assert s.generation >= 3  # nsga2 counts its own generations (16 members each)
    keys = [canonical_key(c.pipeline) for c in asked]
    assert len(set(keys)) == len(keys) == s.n_told == s.n_asked
    assert len(s.hv_history) == 6 and s.hv_history[-1] > 0 and s.front()
    assert all(e.ok and e.feasible for e in s.front())


def test_evolution_seeds_and_lineage() -> None:
    s = get_strategy(
        "evolution", SearchSpace.default(), seed=0, objectives=objectives(), population_size=8
    )
    first = s.ask(8)
    assert [str(c.pipeline).split("(")[0].split(" ")[0] for c in first[:4]] == [
        "PTQ",
        "Pr",
        "LR",
        "QAT",
    ]
    assert first[0].operator == "seed"
    s.tell([toy_evaluation(c) for c in first])
    children = s.ask(8)
    assert all(
        c.generation == 1 and c.parent in {p.id for p in first}
        for c in children
        if c.operator != "random"
    )
    assert {c.operator for c in children} <= set(OPERATORS) | {"random"}
    s.tell([toy_evaluation(c) for c in children])
    assert len(s.survivors) == 8


@pytest.mark.parametrize(("population", "n_random"), [(4, 0), (7, 0), (8, 1), (16, 2)])
def test_evolution_random_survivors_only_from_population_8(population: int, n_random: int) -> None:
    s = get_strategy(
        "evolution",
        SearchSpace.default(),
        seed=0,
        objectives=objectives(),
        population_size=population,
    )
    assert s.n_random == n_random
    for _ in range(3):  # enough candidates that survival has to choose
        s.tell([toy_evaluation(c) for c in s.ask(population * 2)])
    assert len(s.survivors) == population


def test_dedupe_by_canonical_form() -> None:
    assert canonical_key(parse_pipeline("LR ; lr=0.1")) == canonical_key(parse_pipeline("LR"))
    assert canonical_key(parse_pipeline("PTQ - PTQ")) == canonical_key(parse_pipeline("PTQ"))
    assert canonical_key(parse_pipeline("Tr ; lr=0.1")) != canonical_key(parse_pipeline("Tr"))


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_tiny_space_is_exhausted(name: str) -> None:
    space = SearchSpace.from_spec({"kinds": ["PDQ"], "max_len": 1})
    s = get_strategy(name, space, seed=0, objectives=objectives())
    first = s.ask(4)
    assert [str(c.pipeline) for c in first] == ["PDQ"] and not s.done
    s.tell([toy_evaluation(c) for c in first])
    assert s.ask(4) == [] and s.done
    assert Stopper().reason(s) == "search space exhausted"


@pytest.mark.parametrize("name", sorted(STRATEGIES))
def test_state_dict_round_trip_resumes_identically(name: str) -> None:
    space = SearchSpace.default()
    a = get_strategy(name, space, seed=7, objectives=objectives())
    _run(a, 3, batch=6)
    pending = a.ask(3)  # resume with candidates still out
    state = json.loads(json.dumps(a.state_dict()))
    b = get_strategy(name, space, seed=7, objectives=objectives())
    b.load_state_dict(state)
    assert [c.id for c in b.pending] == [c.id for c in pending]
    for _ in range(3):
        evals = [toy_evaluation(c) for c in a.pending]
        a.tell(evals)
        b.tell(evals)
        na, nb = a.ask(6), b.ask(6)
        assert [c.pipeline for c in na] == [c.pipeline for c in nb]
        assert [c.operator for c in na] == [c.operator for c in nb]
    assert a.hv_history == pytest.approx(b.hv_history)
    with pytest.raises(ValueError):
        get_strategy(
            "random" if name != "random" else "evolution", space, 7, objectives=objectives()
        ).load_state_dict(state)


def test_codec_decodes_every_point_into_the_space() -> None:
    space = SearchSpace.from_spec({"min_len": 2, "max_len": 3})
    codec = PipelineCodec(space)
    rng = np.random.default_rng(0)
    for _ in range(300):
        assert space.contains(codec.decode(rng.random(codec.n_var)))
    assert space.contains(codec.decode(np.zeros(codec.n_var))) and space.contains(
        codec.decode(np.ones(codec.n_var))
    )


def test_evolution_beats_random_at_equal_evaluations() -> None:
    """At 400 evaluations evolution's mean hypervolume beats random's on the toy by over 5%.

    Measured (docs/decisions.md, issue 20e): seeds 0-9 evolution 0.0792 vs random 0.0708
    (1.12x, 10 of 10 seeds); seeds 0-49 0.0791 vs 0.0719 (1.10x, 47 of 50; each block of 10 seeds
    1.07-1.12x).  At 200 evaluations the gap is real but thin next to seed noise (seeds 0-49:
    0.0712 vs 0.0694, 35 of 50; seeds 0-4 alone once put random ahead), and at ~100 the two tie:
    16 of them are the shared random start, and random sampling is strong on a small budget."""
    space = SearchSpace.default()
    obj = objectives(names=("quality", "latency_ms", "size_bytes"))
    hv: dict[str, list[float]] = {"evolution": [], "random": []}
    for seed in range(10):
        for name in hv:
            s = get_strategy(name, space, seed=seed, objectives=obj)
            _run(s, 50, batch=8)
            assert s.n_told == 400
            hv[name].append(s.hv_history[-1])
    assert np.mean(hv["evolution"]) > 1.05 * np.mean(hv["random"]), hv


def test_stopper_rules() -> None:
    s = get_strategy("random", SearchSpace.default(), seed=0, objectives=objectives())
    _run(s, 2, batch=4)
    assert Stopper().reason(s) is None
    assert "evaluation budget" in Stopper(max_evaluations=8).reason(s)
    assert Stopper(max_evaluations=10).remaining_evaluations(s) == 2
    assert "generation budget" in Stopper(max_generations=2).reason(s)
    assert "time budget" in Stopper(time_budget_s=5).reason(s, elapsed_s=6.0)
    hit = ev(0.899, 2.0, 1e6)
    assert Target(max_quality_drop=0.01, max_latency_ms=3.0).met_by(hit, s.objectives)
    assert "target met" in Stopper(target=Target(max_quality_drop=0.01, max_latency_ms=3.0)).reason(
        s, evaluations=[hit]
    )
    assert (
        Stopper(target=Target(max_quality_drop=0.0, max_latency_ms=0.1)).reason(
            s, evaluations=[hit]
        )
        is None
    )
    s.hv_history = [0.1, 0.2, 0.2, 0.2]
    assert "stagnated" in Stopper(hv_stagnation_generations=2).reason(s)
    assert Stopper(hv_stagnation_generations=3).reason(s) is None
