"""Quality measured through a runner (the deployed artifact), and parity against the FP32 baseline."""

from __future__ import annotations

import numpy as np

from petra_hw.suite import Split, Suite


def runner_outputs(runner, x, batch_size: int = 64) -> np.ndarray:
    """Run ``x`` (tensor or array) through ``runner`` in batches; returns stacked outputs."""
    arr = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    arr = arr.astype(np.float32, copy=False)
    outs = [np.asarray(runner(arr[i : i + batch_size])) for i in range(0, len(arr), batch_size)]
    return np.concatenate(outs).astype(np.float32)


def quality(suite: Suite, runner, split: Split, batch_size: int = 64) -> float:
    outputs = split.outputs(lambda x: runner_outputs(runner, x, batch_size), batch_size)
    return suite.metric(outputs, split.targets().numpy())


def parity(outputs: np.ndarray, reference: np.ndarray, task: str) -> dict[str, float]:
    """How far an artifact's outputs are from the FP32 baseline's on the same inputs."""
    diff = np.abs(outputs.astype(np.float64) - reference.astype(np.float64))
    out = {
        "max_abs_diff": float(diff.max()) if diff.size else 0.0,
        "rel_error": float(np.linalg.norm(diff) / max(np.linalg.norm(reference), 1e-12)),
    }
    if task == "classification":
        out["top1_agreement"] = float((outputs.argmax(1) == reference.argmax(1)).mean())
    return out
