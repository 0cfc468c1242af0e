"""LR's rank rules in one place, torch-free: the rank each rule keeps of a spectrum, and the
threshold under another rule that keeps the same rank.

The four rules read their threshold in opposite senses (``energy``/``explained_variance``: the
kept share of sum s_i^2, higher keeps more; ``sv_proportion``: s_i >= t s_max, higher keeps
*fewer*; ``ratio``: the kept fraction of the full rank), so a search that changes the rule and
keeps the number would jump in rank.  :func:`equivalent_threshold` carries the threshold over by
rank instead, measured on :func:`representative_spectrum` (the search has no layer at hand when it
mutates a pipeline); see docs/decisions.md.  ``petra_hw.steps.lowrank`` applies the rules to real
layers through :func:`select_rank`; the search imports this module without torch.
"""

from __future__ import annotations

import math

import numpy as np

RULES = ("energy", "explained_variance", "sv_proportion", "ratio")
_EPS = 1e-9  # tolerance for thresholds met exactly in floating point
REPRESENTATIVE_RANK = 256  # full rank of the representative spectrum


def select_rank(spectrum: np.ndarray, rule: str, threshold: float, multiple: int = 1) -> int:
    """Rank kept by ``rule`` at ``threshold`` for a descending spectrum, rounded up to ``multiple``.

    ``energy`` and ``explained_variance``: the smallest r whose leading s_i^2 hold a fraction
    >= threshold of sum s_i^2 (the two differ only in which spectrum the caller passes);
    ``sv_proportion``: every s_i >= threshold * s_max; ``ratio``: ceil(threshold * full rank).
    The result is at least 1 and at most the full rank.
    """
    s = np.asarray(spectrum, dtype=np.float64).ravel()
    full = int(s.size)
    if full == 0:
        raise ValueError("empty spectrum")
    if rule in ("energy", "explained_variance"):
        power = np.square(s)
        total = float(power.sum())
        if total <= 0.0:
            r = 1
        else:
            kept = np.cumsum(power) / total
            r = int((kept < threshold - _EPS).sum()) + 1
    elif rule == "sv_proportion":
        r = int((s >= threshold * s.max() - _EPS).sum())
    elif rule == "ratio":
        r = math.ceil(threshold * full - _EPS)
    else:
        raise ValueError(f"unknown rank rule {rule!r} (known: {', '.join(RULES)})")
    multiple = max(1, int(multiple))
    r = math.ceil(max(r, 1) / multiple) * multiple
    return min(r, full)


def representative_spectrum(n: int = REPRESENTATIVE_RANK) -> np.ndarray:
    """s_i = i^(-1/2), i = 1..n: a slowly decaying spectrum whose squares are harmonic, so
    ``energy`` 0.95 keeps about three quarters of the rank and 0.5 under a tenth."""
    return 1.0 / np.sqrt(np.arange(1, n + 1, dtype=np.float64))


def threshold_for_rank(spectrum: np.ndarray, rule: str, rank: int) -> float:
    """The threshold under which ``rule`` keeps exactly ``rank`` components of ``spectrum``: the
    middle of the interval of thresholds that do (descending spectrum; rank clipped to 1..n)."""
    s = np.asarray(spectrum, dtype=np.float64).ravel()
    n = int(s.size)
    r = min(max(int(rank), 1), n)
    if rule in ("energy", "explained_variance"):
        kept = np.cumsum(np.square(s)) / float(np.square(s).sum())
        low = float(kept[r - 2]) if r > 1 else 0.0
        return (low + float(kept[r - 1])) / 2
    if rule == "sv_proportion":
        ratios = s / s.max()
        below = float(ratios[r]) if r < n else 0.0
        return (below + float(ratios[r - 1])) / 2
    if rule == "ratio":
        return (r - 0.5) / n
    raise ValueError(f"unknown rank rule {rule!r} (known: {', '.join(RULES)})")


def equivalent_threshold(rule: str, threshold: float, new_rule: str) -> float:
    """The ``new_rule`` threshold that keeps the rank ``rule`` at ``threshold`` keeps on the
    representative spectrum."""
    s = representative_spectrum()
    return threshold_for_rank(s, new_rule, select_rank(s, rule, threshold))
