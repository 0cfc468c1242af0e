"""Performance gating: compare two pytest-benchmark JSON files benchmark by benchmark.

Means of timings on a shared machine are dragged by a few preempted rounds, and a fixed
threshold on them either fails on noise or misses real regressions.  The gate compares
*distributions* instead.  A benchmark's latency regresses only when both hold:

- the median of its raw per-round samples (pytest-benchmark's ``stats.data``) grew by more than
  the tolerance (default 10%): the regression is large enough to matter;
- a one-sided Mann-Whitney U test says the current samples are stochastically larger than the
  baseline's (p < alpha, default 0.01): the shift is not noise;
- the fast tail moved too: the 10th percentile grew by more than the tolerance.  Code that got
  slower slows every round, the fastest included; a neighbour's job on a shared machine slows
  the rounds it overlaps and leaves the fast tail near the true speed (the reason
  BenchmarkTools.jl judges on the minimum).

Without raw samples (a file saved without ``--benchmark-save-data``) only the median threshold
applies, and the gate says so.  Quality is read from ``extra_info`` (``quality_test`` and the
like, recorded through the deployed artifact) and may drop by at most a tolerance in percentage
points.  A benchmark of the baseline that is missing from the current results fails: a
benchmark that stopped running is not a pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from petra_hw.errors import UserError

DEFAULT_LATENCY_TOLERANCE = 0.10
DEFAULT_QUALITY_TOLERANCE_PP = 0.5
DEFAULT_ALPHA = 0.01
QUALITY_KEYS = ("quality_test", "test_accuracy", "top1_agreement")
MIN_SAMPLES = 5  # fewer rounds than this: the U test has no power, use the threshold alone
FAST_TAIL_Q = 10  # percentile that stands for the uncontended rounds
BUSY_NOTE = 0.25  # other processes' CPU share above which the gate warns about the timings


@dataclass(frozen=True)
class GateSettings:
    latency_tolerance: float = DEFAULT_LATENCY_TOLERANCE  # allowed relative growth of the median
    quality_tolerance_pp: float = DEFAULT_QUALITY_TOLERANCE_PP  # allowed drop, percentage points
    alpha: float = DEFAULT_ALPHA  # significance level of the one-sided U test
    quality_keys: tuple[str, ...] = QUALITY_KEYS


@dataclass(frozen=True)
class Benchmark:
    """One benchmark of a pytest-benchmark file: raw seconds per round and its extra_info."""

    name: str
    samples_s: tuple[float, ...]
    median_s: float
    extra_info: dict[str, Any]


@dataclass(frozen=True)
class Results:
    path: Path
    benchmarks: dict[str, Benchmark]  # by fullname
    machine: str


@dataclass
class Verdict:
    """The gate's finding for one benchmark of the baseline (or one new in the current file)."""

    key: str
    name: str
    status: str  # "pass" | "fail" | "missing" | "new"
    base_median_s: float | None = None
    current_median_s: float | None = None
    change: float | None = None  # relative change of the median (+0.3 = 30% slower)
    tail_change: float | None = None  # relative change of the 10th percentile
    p_value: float | None = None
    quality: dict[str, tuple[float, float | None]] = field(default_factory=dict)
    reasons: list[str] = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return self.status in ("fail", "missing")


@dataclass(frozen=True)
class GateResult:
    verdicts: list[Verdict]
    notes: list[str]

    @property
    def gated(self) -> list[Verdict]:
        return [v for v in self.verdicts if v.status != "new"]

    @property
    def passed(self) -> int:
        return sum(1 for v in self.gated if not v.failed)

    @property
    def failed(self) -> int:
        return sum(1 for v in self.gated if v.failed)

    def summary(self) -> str:
        return f"gate: {self.passed} passed, {self.failed} failed"


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def load_results(path: str | Path) -> Results:
    """Read a pytest-benchmark JSON file (``--benchmark-json`` or ``--benchmark-autosave``)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no benchmark results at {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{path} is not a pytest-benchmark JSON file: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("benchmarks"), list):
        raise UserError(f"{path} is not a pytest-benchmark JSON file (no 'benchmarks' list)")
    out: dict[str, Benchmark] = {}
    for b in data["benchmarks"]:
        stats = b.get("stats") if isinstance(b, dict) else None
        median = _number((stats or {}).get("median"))
        if median is None or "name" not in b:
            raise UserError(f"{path}: a benchmark without a name or stats.median")
        samples = tuple(v for v in map(_number, stats.get("data") or ()) if v is not None)
        out[b.get("fullname") or b["name"]] = Benchmark(
            name=b["name"],
            samples_s=samples,
            median_s=float(np.median(samples)) if samples else median,
            extra_info=dict(b.get("extra_info") or {}),
        )
    if not out:
        raise UserError(f"{path} holds no benchmarks")
    cpu = (data.get("machine_info") or {}).get("cpu") or {}
    machine = str(cpu.get("brand_raw") or (data.get("machine_info") or {}).get("processor") or "?")
    return Results(path, out, machine)


def _latency(base: Benchmark, cur: Benchmark, s: GateSettings, v: Verdict) -> None:
    from scipy.stats import mannwhitneyu

    v.base_median_s, v.current_median_s = base.median_s, cur.median_s
    v.change = cur.median_s / base.median_s - 1.0 if base.median_s > 0 else None
    if len(base.samples_s) >= MIN_SAMPLES and len(cur.samples_s) >= MIN_SAMPLES:
        v.p_value = float(mannwhitneyu(cur.samples_s, base.samples_s, alternative="greater").pvalue)
        tail = [float(np.percentile(b.samples_s, FAST_TAIL_Q)) for b in (base, cur)]
        v.tail_change = tail[1] / tail[0] - 1.0 if tail[0] > 0 else None
    if v.change is None or v.change <= s.latency_tolerance:
        return
    if v.p_value is None:
        v.reasons.append(
            f"latency +{v.change:.1%} > {s.latency_tolerance:.0%} (median "
            f"{fmt_seconds(base.median_s)} -> {fmt_seconds(cur.median_s)}, no raw samples)"
        )
    elif v.p_value < s.alpha and (v.tail_change is None or v.tail_change > s.latency_tolerance):
        v.reasons.append(
            f"latency +{v.change:.1%} > {s.latency_tolerance:.0%} (median "
            f"{fmt_seconds(base.median_s)} -> {fmt_seconds(cur.median_s)}, fast tail "
            f"{_signed(v.tail_change)}, U test p={v.p_value:.2g})"
        )


def _quality(base: Benchmark, cur: Benchmark, s: GateSettings, v: Verdict) -> None:
    higher = base.extra_info.get("quality_higher_is_better", True) is not False
    for key in s.quality_keys:
        b = _number(base.extra_info.get(key))
        if b is None:
            continue
        c = _number(cur.extra_info.get(key))
        v.quality[key] = (b, c)
        if c is None:
            v.reasons.append(f"{key} missing from the current results")
            continue
        drop_pp = (b - c if higher else c - b) * 100.0
        if drop_pp > s.quality_tolerance_pp + 1e-9:
            v.reasons.append(
                f"{key} {b:.4f} -> {c:.4f} ({-drop_pp:+.2f} pp, tolerance "
                f"{s.quality_tolerance_pp:g} pp)"
            )


def compare(baseline: Results, current: Results, settings: GateSettings) -> GateResult:
    """Judge every benchmark of the baseline against the current results."""
    common = baseline.benchmarks.keys() & current.benchmarks.keys()
    if not common:
        raise UserError(
            f"{current.path} shares no benchmark with the baseline {baseline.path} "
            "(a different suite selection or test file?)"
        )
    verdicts = []
    for key, base in baseline.benchmarks.items():
        cur = current.benchmarks.get(key)
        if cur is None:
            v = Verdict(key, base.name, "missing", base_median_s=base.median_s)
            v.reasons.append("missing from the current results")
        else:
            v = Verdict(key, base.name, "pass")
            _latency(base, cur, settings, v)
            _quality(base, cur, settings, v)
            v.status = "fail" if v.reasons else "pass"
        verdicts.append(v)
    for key, cur in current.benchmarks.items():
        if key not in baseline.benchmarks:
            verdicts.append(Verdict(key, cur.name, "new", current_median_s=cur.median_s))
    notes = []
    if baseline.machine != current.machine:
        notes.append(
            f"note: baseline measured on {baseline.machine!r}, current on {current.machine!r}"
        )
    no_data = [v.name for v in verdicts if v.status != "new" and v.p_value is None]
    if no_data:
        notes.append(
            f"note: {len(no_data)} benchmark(s) without raw samples: median threshold only "
            "(save with --benchmark-json or --benchmark-save-data)"
        )
    busy = [
        f
        for b in current.benchmarks.values()
        if (f := _number(b.extra_info.get("host_busy_frac"))) is not None
    ]
    if busy and max(busy) > BUSY_NOTE:
        notes.append(
            f"note: other processes kept up to {max(busy):.0%} of this machine's CPU busy while "
            "the current results were timed: latency verdicts are less certain"
        )
    new = sum(1 for v in verdicts if v.status == "new")
    if new:
        notes.append(f"note: {new} benchmark(s) not in the baseline (not gated)")
    return GateResult(verdicts, notes)


def _signed(change: float | None) -> str:
    return "?" if change is None else f"{change:+.1%}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 1e-3:
        return f"{value * 1e6:.1f} µs"
    if value < 1.0:
        return f"{value * 1e3:.3f} ms"
    return f"{value:.3f} s"


def parse_percent(text: str) -> float:
    """``10%`` or ``10`` -> 0.10 (always percent, never a fraction)."""
    raw = text.strip().removesuffix("%").strip()
    try:
        value = float(raw) / 100.0
    except ValueError:
        raise UserError(f"bad percentage {text!r}: use e.g. 10%") from None
    if not math.isfinite(value) or value < 0:
        raise UserError(f"bad percentage {text!r}: must be >= 0")
    return value
