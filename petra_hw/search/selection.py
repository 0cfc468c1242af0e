"""Survival and front bookkeeping: constrained non-dominated sorting, then hypervolume.

Order of merit (Deb's constrained domination, with failures last):

1. feasible evaluations, by non-dominated front of the normalized objectives, where a point
   dominates only by more than the measurement noise of both (``petra_hw.search.noise``);
2. infeasible ones, by constraint violation (equal violation = same front);
3. twins: a feasible evaluation with exactly the objectives of a better-ranked one (a neutral
   mutation) or, for survival and mating, within both their noise bands on every objective (a
   last-bit size difference, a latency within the IQR), so twins do not crowd the population;
4. failed ones (``error`` set, or no finite objectives).

Survival fills the population front by front; the front that does not fit is thinned SMS-EMOA
style, removing the point with the least exclusive hypervolume contribution one at a time
(Beume, Naujoks & Emmerich 2007), so the kept set covers the most of the objective space.  A few
further individuals are kept at random, to keep the structural diversity a small population
loses quickly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from pymoo.indicators.hv import HV
from pymoo.util.nds.non_dominated_sorting import NonDominatedSorting

from petra_hw.search.noise import distinct, noisy_fronts
from petra_hw.search.objectives import ObjectiveMatrix, Objectives
from petra_hw.search.types import Evaluation


def _fronts(F: np.ndarray, B: np.ndarray) -> list[np.ndarray]:
    """Positions into ``F`` by non-dominated front, best first; beyond the noise where bands
    are set, else pymoo's plain sorting."""
    if np.any(B > 0):
        return noisy_fronts(F, B)
    return [np.asarray(f, dtype=int) for f in NonDominatedSorting().do(F)]


def twin_rows(m: ObjectiveMatrix, noisy_twins: bool = False) -> np.ndarray:
    """Mask of the feasible rows that only repeat a better one: of each group of twins one row
    stays (the lower front, then the smaller sum of normalized objectives, then the earlier row).

    Twins are rows with exactly equal objectives or, with ``noisy_twins``, rows within each
    other's noise bands on every objective (``noise.distinct``).
    """
    B = m.B if m.B is not None else np.zeros_like(m.F)
    out = np.zeros(len(m), dtype=bool)
    feasible = np.flatnonzero(m.feasible)
    if len(feasible):
        F, Bf = m.F[feasible], B[feasible]
        rank = np.empty(len(feasible), dtype=int)
        for r, f in enumerate(_fronts(F, Bf)):
            rank[f] = r
        order = np.lexsort((np.arange(len(F)), F.sum(axis=1), rank))
        out[feasible] = ~distinct(F, Bf if noisy_twins else np.zeros_like(Bf), order)
    return out


def constrained_fronts(m: ObjectiveMatrix, noisy_twins: bool = False) -> list[np.ndarray]:
    """Row indices grouped into fronts, best first, under constrained domination.

    Twins (:func:`twin_rows`; within the noise bands with ``noisy_twins``, as survival and mating
    use it) rank after every infeasible row, just before the failed ones.
    """
    B = m.B if m.B is not None else np.zeros_like(m.F)
    twins = twin_rows(m, noisy_twins)

    def sort(rows: np.ndarray) -> list[np.ndarray]:
        return [rows[f] for f in _fronts(m.F[rows], B[rows])] if len(rows) else []

    fronts = sort(np.flatnonzero(m.feasible & ~twins))
    infeasible = np.flatnonzero(~m.failed & ~m.feasible)
    for v in np.unique(m.cv[infeasible]):
        fronts.append(infeasible[m.cv[infeasible] == v])
    fronts.extend(sort(np.flatnonzero(twins)))
    failed = np.flatnonzero(m.failed)
    if len(failed):
        fronts.append(failed)
    return fronts


def front_ranks(m: ObjectiveMatrix, noisy_twins: bool = False) -> np.ndarray:
    """Front index of every row (0 = best)."""
    rank = np.zeros(len(m), dtype=int)
    for r, front in enumerate(constrained_fronts(m, noisy_twins)):
        rank[front] = r
    return rank


def hv(F: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of ``F`` (minimized) up to ``ref``; points outside the box add nothing."""
    if len(F) == 0:
        return 0.0
    return float(HV(ref_point=np.asarray(ref, dtype=float))(np.asarray(F, dtype=float)))


def hv_contributions(F: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Exclusive contribution of each point: HV(F) - HV(F without it)."""
    total = hv(F, ref)
    return np.array([total - hv(np.delete(F, i, axis=0), ref) for i in range(len(F))])


def _excess(F: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """How far each point lies outside the reference box (0 inside): the tie-break for points
    that contribute nothing, so the search still moves toward the box."""
    return np.maximum(F - ref, 0.0).sum(axis=1) / np.maximum(np.abs(ref), 1e-12).sum()


def thin_by_hv(F: np.ndarray, k: int, ref: np.ndarray) -> list[int]:
    """Positions of the ``k`` points kept by greedy least-contributor removal."""
    keep = list(range(len(F)))
    while len(keep) > k:
        sub = F[keep]
        contrib, excess = hv_contributions(sub, ref), _excess(sub, ref)
        # least contribution first; among equals the one farthest outside; then the newest row
        worst = min(range(len(keep)), key=lambda j: (contrib[j], -excess[j], -keep[j]))
        del keep[worst]
    return keep


def merit(m: ObjectiveMatrix, ref: np.ndarray) -> list[tuple[int, float]]:
    """Per row, ``(front rank, -exclusive hypervolume in its front)``: smaller is better.

    The mating key: among equally ranked parents, those that hold more of the front's
    hypervolume (its extremes and sparse regions) are preferred.  Twins within the noise rank as
    in :func:`survive`.
    """
    out = [(0, 0.0)] * len(m)
    for r, front in enumerate(constrained_fronts(m, noisy_twins=True)):
        contrib = (
            hv_contributions(m.F[front], ref) if m.feasible[front[0]] else np.zeros(len(front))
        )
        for i, c in zip(front, contrib, strict=True):
            out[int(i)] = (r, -float(c))
    return out


@dataclass(frozen=True)
class Survival:
    """Who survives: ``elite`` by merit, ``diverse`` at random; ``rank`` = front of every row."""

    elite: list[int]
    diverse: list[int]
    rank: np.ndarray

    @property
    def survivors(self) -> list[int]:
        return self.elite + self.diverse


def _best_of(m: ObjectiveMatrix, front: np.ndarray, room: int, ref: np.ndarray) -> list[int]:
    if m.feasible[front[0]]:
        return [int(front[j]) for j in thin_by_hv(m.F[front], room, ref)]
    if m.failed[front[0]]:
        return [int(i) for i in front[:room]]
    # equal violation: prefer the smaller normalized objectives
    return [int(i) for i in sorted(front, key=lambda i: float(m.F[i].sum()))[:room]]


def survive(
    m: ObjectiveMatrix, n: int, ref: np.ndarray, rng: np.random.Generator, n_random: int = 0
) -> Survival:
    """Choose ``n`` rows: ``n - n_random`` by merit and ``n_random`` uniformly among the other
    non-failed rows (random picks only when there are enough non-failed rows to need them).

    Twins within the noise bands hold one place: the others are chosen only when no other
    non-failed row is left (``constrained_fronts(noisy_twins=True)``)."""
    fronts = constrained_fronts(m, noisy_twins=True)
    twins = set(np.flatnonzero(twin_rows(m, noisy_twins=True)).tolist())
    rank = np.zeros(len(m), dtype=int)
    for r, front in enumerate(fronts):
        rank[front] = r
    if len(m) <= n:
        return Survival([int(i) for f in fronts for i in f], [], rank)
    n_ok = int((~m.failed).sum())
    n_random = max(0, min(n_random, n - 1)) if n_ok >= n else 0
    elite: list[int] = []
    for front in fronts:
        room = n - n_random - len(elite)
        if room <= 0:
            break
        if len(front) <= room:
            elite.extend(int(i) for i in front)
        else:
            elite.extend(_best_of(m, front, room, ref))
    chosen = set(elite)
    rest = [i for i in range(len(m)) if i not in chosen and not m.failed[i]]
    distinct_rest = [i for i in rest if i not in twins]
    if len(distinct_rest) >= n_random:
        rest = distinct_rest
    diverse = [int(i) for i in rng.choice(rest, size=n_random, replace=False)] if n_random else []
    return Survival(elite, diverse, rank)


def hypervolume(
    evaluations: Sequence[Evaluation], objectives: Objectives, ref: np.ndarray | None = None
) -> float:
    """Hypervolume of the feasible evaluations against the run's fixed reference point."""
    m = objectives.matrix(evaluations)
    ref = objectives.reference_point(m.names) if ref is None else ref
    return hv(m.F[m.feasible], ref)


def pareto_front(evaluations: Sequence[Evaluation], objectives: Objectives) -> list[Evaluation]:
    """The feasible non-dominated evaluations (empty when none is feasible)."""
    m = objectives.matrix(evaluations)
    fronts = constrained_fronts(m)
    if not fronts or not m.feasible[fronts[0][0]]:
        return []
    return [evaluations[int(i)] for i in fronts[0]]
