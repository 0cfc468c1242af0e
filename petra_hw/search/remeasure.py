"""Re-measure the Original beside the front, interleaved in one process (``petra_hw.interleaved``).

Each candidate is timed once, in its own worker, at its own moment; on a shared host batch-1
latency drifts 15% between processes and up to 2x under a neighbour's load, so two candidates
measured minutes apart may differ by the machine, not the model.  After every generation the tune
loop re-times the Original with the current front, round-robin in the main process (batch 1, a
few short rounds), and records each front member's ratio to the Original *in the same rounds*
and the Original's drift from its first measurement.  Before the run is reported the final front
*and every reference* (the peers and the training control, timed at the run's start) are re-timed
the same way at batch 1 and the largest profile batch size, their raw samples written beside the
journal.  The records go to the run's stats (``remeasured`` per generation, ``remeasured_final``);
they never replace the journaled measurements a front was chosen on, but the value lines and
``--best`` compare on the final one (``petra_hw.value.final_figures``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from petra_hw.interleaved import Timed, measure_interleaved
from petra_hw.profiles import DeviceProfile
from petra_hw.search.types import Evaluation

log = logging.getLogger(__name__)

GENERATION_ROUNDS = 3
FINAL_ROUNDS = 5
SAMPLES_NAME = "remeasured-final.json"  # the final re-measurement's raw samples, in the run folder


def remeasure(
    original: Evaluation,
    front: Sequence[Evaluation],
    profile: DeviceProfile,
    inputs: np.ndarray,
    *,
    final: bool,
    references: Sequence[Evaluation] = (),
    samples_path: Path | None = None,
) -> dict[str, Any]:
    """Interleaved batch-1 (and, when ``final``, largest-batch) timing of the Original,
    ``front`` and the ok ``references``; each round gets ``1/rounds`` of the profile's minimum
    time, so the whole costs about one ordinary measurement per artifact.  An artifact that is
    absent or fails to load is listed under ``failed`` with its reason; the raw samples go to
    ``samples_path`` when given."""
    members = [e for e in front if e.ok and e.artifact and e.candidate.pipeline.steps]
    refs = [r for r in references if r.ok and r.artifact]
    failed: dict[str, str] = {}
    artifacts: dict[str, str] = {}
    for e in [original, *members, *refs]:
        if e.artifact and Path(e.artifact).is_dir():
            artifacts[e.candidate.id] = e.artifact
        else:  # a Ray node's artifact may be elsewhere
            failed[e.candidate.id] = f"artifact not on this machine: {e.artifact}"
    if original.candidate.id not in artifacts:
        return {"error": "the Original's artifact is not on this machine"}
    rounds = FINAL_ROUNDS if final else GENERATION_ROUNDS
    largest = max(profile.batch_sizes, default=1)
    batches = tuple(sorted({1, largest})) if final else (1,)
    m = profile.measurement
    short = dataclasses.replace(
        profile,
        measurement=dataclasses.replace(
            m, min_time_s=m.min_time_s / rounds, min_iters=max(1, m.min_iters // rounds)
        ),
    )
    timed = measure_interleaved(artifacts, short, inputs, batches, rounds, failures=failed)
    if original.candidate.id not in timed:
        return {"error": f"the Original's artifact failed to load: {failed[original.candidate.id]}"}
    base = timed[original.candidate.id]
    journaled = original.objectives.get("latency_ms")
    out: dict[str, Any] = {
        "rounds": rounds,
        "original_latency_ms": base.p50_ms(1),
        "original_drift": base.p50_ms(1) / journaled if journaled else None,
        "front": {},
    }
    if final:
        out.update(
            original_id=original.candidate.id,
            original_throughput_ips=base.throughput_ips(largest),
            batch_sizes=list(batches),
            references={},
        )
    for e in [*members, *(refs if final else [])]:
        if e.candidate.id not in timed:
            continue
        t = timed[e.candidate.id]
        row = {
            "pipeline": str(e.candidate.pipeline),
            "latency_ms": t.p50_ms(1),
            "iqr_ms": float(np.subtract(*np.percentile(t.samples_ms[1], [75, 25]))),
            "latency_ratio": t.p50_ms(1) / base.p50_ms(1),
            "journaled_ratio": (e.objectives.get("latency_ms") or np.nan) / (journaled or np.nan),
        }
        if final:
            row["throughput_ips"] = t.throughput_ips(largest)
            row["throughput_ratio"] = t.throughput_ips(largest) / base.throughput_ips(largest)
        if e.candidate.reference:
            out["references"][e.candidate.id] = {"reference": e.candidate.reference, **row}
        else:
            out["front"][e.candidate.id] = row
    if failed:
        out["failed"] = failed
    if samples_path is not None:
        out["samples_path"] = str(_write_samples(samples_path, timed, rounds))
    return out


def _write_samples(path: Path, timed: dict[str, Timed], rounds: int) -> Path:
    """Every raw sample (ms) per artifact and batch size, with each round's median."""
    data = {
        cid: {
            "samples_ms": {str(b): s for b, s in t.samples_ms.items()},
            "round_p50_ms": {str(b): t.round_p50_ms(b, rounds) for b in t.samples_ms},
        }
        for cid, t in timed.items()
    }
    path.write_text(json.dumps({"rounds": rounds, "artifacts": data}))
    return path
