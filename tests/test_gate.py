"""``petra-hw gate`` on synthetic pytest-benchmark files made with a seeded RNG.

The samples imitate a shared machine: log-normal rounds with a few preempted ones.  The gate must
pass identical results and a 10% jitter, and fail a planted 30% (and 20%) latency regression and
a planted quality drop, with its default settings; its last line is always the summary.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from petra_hw.cli import main
from petra_hw.gate import GateSettings, compare, load_results

MEDIANS_S = {
    "digits-onnxruntime-fp32": 60e-6,
    "digits-onnxruntime-int8": 55e-6,
    "digits-torch-fp32": 520e-6,
}
ROUNDS = 60
SUMMARY = re.compile(r"^gate: (\d+) passed, (\d+) failed$")


def _samples(rng: np.random.Generator, median: float) -> np.ndarray:
    """Rounds of a noisy machine: 5% spread, and about 5% of rounds preempted (1.5x to 3x)."""
    x = median * rng.lognormal(0.0, 0.05, ROUNDS)
    hit = rng.random(ROUNDS) < 0.05
    x[hit] *= rng.uniform(1.5, 3.0, hit.sum())
    return x


def write_results(
    path: Path,
    seed: int,
    *,
    scale: dict[str, float] | None = None,
    jitter: float = 0.0,
    quality: dict[str, float] | None = None,
    keep_data: bool = True,
    names: tuple[str, ...] = tuple(MEDIANS_S),
) -> Path:
    """A pytest-benchmark JSON file: fresh samples per call (``seed``), optionally scaled per
    benchmark, jittered per round by up to ``jitter``, with ``quality_test`` in extra_info."""
    rng = np.random.default_rng(seed)
    benchmarks = []
    for name in names:
        x = _samples(rng, MEDIANS_S[name]) * (scale or {}).get(name, 1.0)
        x *= rng.uniform(1 - jitter, 1 + jitter, ROUNDS)
        stats = {
            "min": float(x.min()),
            "max": float(x.max()),
            "mean": float(x.mean()),
            "median": float(np.median(x)),
            "rounds": ROUNDS,
            "iterations": 50,
        }
        if keep_data:
            stats["data"] = [float(v) for v in x]
        benchmarks.append(
            {
                "group": "digits batch 1",
                "name": f"test_suite[{name}]",
                "fullname": f"suites/test_bench_suites.py::test_suite[{name}]",
                "params": {},
                "extra_info": {
                    "quality_test": (quality or {}).get(name, 0.9815),
                    "top1_agreement": 0.99,
                },
                "options": {},
                "stats": stats,
            }
        )
    doc = {
        "machine_info": {"cpu": {"brand_raw": "AMD EPYC"}},
        "benchmarks": benchmarks,
        "datetime": "2026-11-23T00:00:00",
        "version": "5.3.0",
    }
    path.write_text(json.dumps(doc))
    return path


@pytest.fixture
def baseline(tmp_path) -> Path:
    return write_results(tmp_path / "baseline.json", seed=0)


def gate(capsys, baseline: Path, current: Path, *extra: str) -> tuple[int, list[str]]:
    code = main(["gate", "--baseline", str(baseline), "--current", str(current), *extra])
    out = capsys.readouterr().out.strip().splitlines()
    assert SUMMARY.match(out[-1]), f"last line is not the summary: {out[-1]!r}"
    return code, out


def test_identical_results_pass(capsys, baseline) -> None:
    code, out = gate(capsys, baseline, baseline)
    assert code == 0 and out[-1] == "gate: 3 passed, 0 failed"


@pytest.mark.parametrize("seed", range(1, 21))
def test_ten_percent_jitter_stays_green(capsys, baseline, tmp_path, seed) -> None:
    current = write_results(tmp_path / "current.json", seed=seed, jitter=0.10)
    code, out = gate(capsys, baseline, current)
    assert code == 0, out


def test_small_real_shift_within_tolerance_passes(capsys, baseline, tmp_path) -> None:
    current = write_results(tmp_path / "c.json", seed=1, scale=dict.fromkeys(MEDIANS_S, 1.07))
    assert gate(capsys, baseline, current)[0] == 0


@pytest.mark.parametrize("factor", [1.3, 1.2])
def test_planted_latency_regression_fails(capsys, baseline, tmp_path, factor) -> None:
    name = "digits-onnxruntime-int8"
    current = write_results(tmp_path / "c.json", seed=2, jitter=0.10, scale={name: factor})
    code, out = gate(capsys, baseline, current)
    assert code == 1 and out[-1] == "gate: 2 passed, 1 failed"
    reason = next(line for line in out if line.startswith("gate: regression:"))
    assert name in reason and "latency" in reason


def test_contention_on_some_rounds_is_not_a_regression(tmp_path) -> None:
    """Half the rounds twice as slow (a neighbour's job): the median moves, the fast tail not."""
    base = load_results(write_results(tmp_path / "b.json", seed=0))
    cur_path = write_results(tmp_path / "c.json", seed=3)
    doc = json.loads(cur_path.read_text())
    for b in doc["benchmarks"]:
        data = np.asarray(b["stats"]["data"])
        data[::2] *= 2.0
        b["stats"]["data"] = data.tolist()
    cur_path.write_text(json.dumps(doc))
    result = compare(base, load_results(cur_path), GateSettings())
    assert result.failed == 0
    assert all(v.change > 0.1 for v in result.verdicts)  # it did move the medians


def test_planted_quality_drop_fails(capsys, baseline, tmp_path) -> None:
    name = "digits-onnxruntime-int8"
    current = write_results(tmp_path / "c.json", seed=4, quality={name: 0.9715})  # -1.0 pp
    code, out = gate(capsys, baseline, current)
    assert code == 1
    assert "quality_test" in next(line for line in out if line.startswith("gate: regression:"))
    # within a looser tolerance it passes
    assert gate(capsys, baseline, current, "--quality-tolerance", "1.5")[0] == 0


def test_missing_benchmark_fails_and_new_one_is_not_gated(capsys, baseline, tmp_path) -> None:
    current = write_results(tmp_path / "c.json", seed=5, names=tuple(MEDIANS_S)[:2])
    code, out = gate(capsys, baseline, current)
    assert code == 1 and out[-1] == "gate: 2 passed, 1 failed"
    code, out = gate(capsys, current, baseline)
    assert code == 0 and out[-1] == "gate: 2 passed, 0 failed"


def test_without_raw_samples_the_median_threshold_decides(capsys, tmp_path) -> None:
    base = write_results(tmp_path / "b.json", seed=0, keep_data=False)
    same = write_results(tmp_path / "s.json", seed=6, keep_data=False)
    slow = write_results(
        tmp_path / "c.json", seed=6, keep_data=False, scale={"digits-torch-fp32": 1.3}
    )
    assert gate(capsys, base, same)[0] == 0
    code, out = gate(capsys, base, slow)
    assert code == 1 and any("raw samples" in line for line in out)


@pytest.mark.parametrize(
    "setup",
    ["missing", "not-json", "no-benchmarks", "disjoint", "bad-tolerance", "no-current"],
)
def test_bad_input_exits_2_with_summary(capsys, baseline, tmp_path, setup) -> None:
    current = tmp_path / "current.json"
    extra: list[str] = []
    if setup == "not-json":
        current.write_text("{not json")
    elif setup == "no-benchmarks":
        current.write_text(json.dumps({"machine_info": {}}))
    elif setup == "disjoint":
        doc = json.loads(baseline.read_text())
        for b in doc["benchmarks"]:
            b["fullname"] += "-renamed"
        current.write_text(json.dumps(doc))
    elif setup == "bad-tolerance":
        current = baseline
        extra = ["--latency-tolerance", "ten"]
    if setup == "no-current":
        code = main(["gate", "--baseline", str(baseline)])
    else:
        code = main(["gate", "--baseline", str(baseline), "--current", str(current), *extra])
    captured = capsys.readouterr()
    assert code == 2
    assert captured.out.strip().splitlines()[-1] == "gate: 0 passed, 0 failed"
    assert len(captured.err.strip().splitlines()) == 1
