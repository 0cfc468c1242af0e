"""Wall time of each compression step on the CIFAR suites (``pytest suites/ --benchmark``).

Each step is applied alone to the cached baseline, without the prefix cache, so the time is the
step's own; parameters and MACs after the step are recorded alongside.
"""

from __future__ import annotations

import pytest

from petra_hw.pipeline import parse_pipeline

STEPS = [
    "LR",
    "LR(rule=ratio, threshold=0.5)",
    "Reg(epochs=1)",
    "Reg(reg=lai, epochs=1)",
    "Pr(criterion=l1)",
    "Pr(criterion=taylor)",
    "Pr(criterion=hessian)",
    "Pr(criterion=bn_scale)",
    "Pr(criterion=lamp, scope=global)",
    "Tr(epochs=1)",
    "QAT(epochs=1)",
    "PTQ - Tr(epochs=1)",
]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("suite_name", ["cifar10-resnet20", "cifar10-resnet18"])
def test_step_wall_time(benchmark, suite_name: str, step: str) -> None:
    import torch_pruning as tp

    from petra_hw.apply import apply
    from petra_hw.baseline import get_baseline
    from petra_hw.suite import load_suite

    baseline = get_baseline(load_suite(suite_name), 0)
    pipeline = parse_pipeline(step)
    result = benchmark.pedantic(
        lambda: apply(pipeline, baseline, baseline.suite), rounds=1, iterations=1
    )
    example = baseline.suite.example_input(1)
    macs, params = tp.utils.count_ops_and_params(result.model, example)
    base_macs, base_params = tp.utils.count_ops_and_params(baseline.model, example)
    benchmark.extra_info.update(
        {
            "suite": suite_name,
            "step": step,
            "macs": macs,
            "params": params,
            "macs_ratio": macs / base_macs,
            "params_ratio": params / base_params,
            "step_seconds": list(result.step_seconds),
        }
    )
    assert params <= base_params * 1.001 or step.startswith(("QAT",))
