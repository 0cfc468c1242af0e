"""Compile, measure and judge one model on one backend: the unit every command is built from.

To *assess* a model is ``compile_model`` then ``judge``: compile it into an artifact, load that back
through its backend (verifying the hashes), time it with the one profiler, and measure quality
*through that runner* on val and test, plus parity against the Original's FP32 outputs.  An
artifact keeps a few real calib rows (``profiler.TIMING_INPUTS``): it is timed on them, here, in a
fresh process and when ``petra-hw profile ARTIFACT`` re-measures it.
Everything lands in the manifest too.  (A candidate *evaluation* is the search's larger unit:
apply its steps, assess the result, score objectives; see ``petra_hw.search.evaluator``.)
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from petra_hw.artifact import Artifact, InputSpec, read_artifact
from petra_hw.backend import CompileRequest, get_backend, load_runner
from petra_hw.precision import PrecisionIntent
from petra_hw.profiler import (
    TIMING_INPUTS,
    Measurement,
    measure,
    measure_fresh_process,
    timing_inputs,
)
from petra_hw.profiles import DeviceProfile
from petra_hw.quality import parity, runner_outputs
from petra_hw.suite import Split, Splits, Suite

log = logging.getLogger(__name__)
TIMING_INPUTS_BYTES = 4 << 20  # at most this much of real calib input is kept for timing


@dataclass
class Assessment:
    """An artifact with its measurement, quality through the runner, and parity."""

    artifact: Artifact
    measurement: Measurement
    quality: dict[str, float]  # split name -> metric
    parity: dict[str, float]
    timings_s: dict[str, float] = field(default_factory=dict)

    def row(self) -> dict:
        m = self.measurement
        return {
            "backend": m.backend,
            "precision": m.precision,
            "latency_ms": m.latency.p50_ms,
            "latency_p90_ms": m.latency.p90_ms,
            "latency_p99_ms": m.latency.p99_ms,
            "throughput_ips": m.throughput_ips,
            "throughput_batch": max(s.batch_size for s in m.throughput),
            "size_bytes": m.size_bytes,
            "noisy": m.noisy,
            **{f"quality_{k}": v for k, v in self.quality.items()},
            **self.parity,
            "artifact": str(self.artifact.path),
        }


def input_spec(suite: Suite) -> InputSpec:
    return InputSpec("input", (None, *suite.input_shape))


def timing_rows(calib: Split, profile: DeviceProfile) -> np.ndarray:
    """The calib rows an artifact keeps for timing: as many as its largest batch size, within
    ``TIMING_INPUTS_BYTES`` (the profiler tiles them up to each batch size)."""
    first = calib.inputs(1)
    per_row = max(1, int(np.prod(first.shape[1:])) * 4)
    n = min(len(calib), max((1, *profile.batch_sizes)), max(1, TIMING_INPUTS_BYTES // per_row))
    return np.ascontiguousarray(calib.inputs(n).detach().cpu().numpy(), dtype=np.float32)


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def compile_model(
    model: nn.Module,
    suite: Suite,
    splits: Splits,
    profile: DeviceProfile,
    backend: str,
    intent: PrecisionIntent | str,
    out_dir: Path,
    pipeline: dict | None = None,
    options: dict | None = None,
) -> Artifact:
    """Compile ``model`` with ``backend`` for ``intent`` (a bare precision means its default
    intent, e.g. int8 static) into ``out_dir``, calibrating on the calib split."""
    request = CompileRequest(
        intent=intent if isinstance(intent, PrecisionIntent) else PrecisionIntent(intent),
        out_dir=Path(out_dir),
        input_spec=input_spec(suite),
        profile=profile,
        calib=splits.calib,
        pipeline=pipeline,
        options=tuple(sorted((options or {}).items())),
    )
    artifact = get_backend(backend).compile(model.eval(), request)
    artifact = artifact.add_file(TIMING_INPUTS, _npy(timing_rows(splits.calib, profile)))
    from petra_hw import nncf_extension

    steps = (pipeline or {}).get("steps", [])
    if nncf_extension.used() and any(s.get("kind") == "QAT" for s in steps):
        # which NNCF quantize functions trained this model's fake quantizers in this process
        artifact = artifact.update(nncf={"quantize_functions": nncf_extension.used()})
    return artifact


def judge(
    artifact: Artifact,
    suite: Suite,
    splits: Splits,
    profile: DeviceProfile,
    original_outputs: dict[str, np.ndarray] | None = None,
    quality_splits: tuple[str, ...] = ("val", "test"),
    fresh_process: bool | None = None,
) -> Assessment:
    """Load, measure, and score an artifact; write the results into its manifest."""
    timings: dict[str, float] = {}
    t = time.perf_counter()
    artifact = read_artifact(artifact.path)  # verify hashes, as a deployment would
    runner = load_runner(artifact, profile)
    timings["load_s"] = time.perf_counter() - t
    t = time.perf_counter()

    def runner_predict(x: torch.Tensor) -> np.ndarray:
        return runner_outputs(runner, x)

    outputs = {n: splits.by_name(n).outputs(runner_predict, 64) for n in quality_splits}
    qual = {n: suite.score(runner_predict, splits, n, outputs[n]) for n in quality_splits}
    par: dict[str, float] = {}
    if original_outputs is not None:
        name = next(n for n in quality_splits if n in original_outputs)
        par = parity(outputs[name], original_outputs[name], suite.task)
    timings["quality_s"] = time.perf_counter() - t
    t = time.perf_counter()
    fresh = profile.measurement.fresh_process if fresh_process is None else fresh_process
    if fresh:
        del runner
        m = measure_fresh_process(artifact.path, profile)
    else:
        inputs = timing_inputs(artifact)
        m = measure(
            runner,
            tuple(suite.input_shape),
            profile,
            backend=artifact.backend,
            precision=artifact.precision,
            size_bytes=artifact.size_bytes,
            inputs=timing_rows(splits.calib, profile) if inputs is None else inputs,
        )
    timings["measure_s"] = time.perf_counter() - t
    artifact = artifact.update(
        metrics={
            "quality": qual,
            "metric": suite.metric.name,
            "parity": par,
            "measurement": m.to_json(samples=False),
            "profile": profile.name,
        }
    )
    return Assessment(artifact, m, qual, par, timings)
