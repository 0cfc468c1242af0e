"""A small reader for the sktime/aeon ``.ts`` format of the Monash/UEA/UCR regression archives.

aeon's loader would pull numba and pin numpy below our version, so we read the format ourselves:
``@`` header lines up to ``@data``, then one case per line with its channels separated by ``:``,
the values of a channel by ``,``, ``?`` for a missing value, and (regression) the target last.
Only equal-length series without time stamps are accepted: that is what the Monash TSER files are.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from petra_hw.errors import UserError


def _value(text: str) -> float:
    text = text.strip()
    return float("nan") if text in ("?", "NaN", "nan") else float(text)


def read_ts(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """Read a regression ``.ts`` file: x (cases, channels, length) float32, y (cases,) float64."""
    header: dict[str, str] = {}
    xs: list[list[list[float]]] = []
    ys: list[float] = []
    in_data = False
    for number, raw in enumerate(Path(path).read_text().splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if not in_data:
            key, _, value = line.partition(" ")
            header[key.lower()] = value.strip().lower()
            in_data = key.lower() == "@data"
            continue
        if "(" in line:
            raise UserError(f"{path}:{number}: time-stamped .ts series are not supported")
        *channels, target = line.split(":")
        if not channels:
            raise UserError(f"{path}:{number}: a case needs at least one channel and a target")
        xs.append([[_value(v) for v in c.split(",")] for c in channels])
        ys.append(_value(target))
    if header.get("@targetlabel") != "true" or not xs:
        raise UserError(f"{path}: not a regression .ts file (@targetlabel true and cases needed)")
    try:
        x = np.asarray(xs, dtype=np.float32)
    except ValueError:
        raise UserError(f"{path}: series of unequal length or channel count") from None
    return x, np.asarray(ys, dtype=np.float64)
