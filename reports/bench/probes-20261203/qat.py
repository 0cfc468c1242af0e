"""QAT probe: does QAT collapse at the default lr, and at a lower one?"""

import sys
import time

import torch

from petra_hw.apply import apply
from petra_hw.baseline import get_baseline, score
from petra_hw.pipeline import Pipeline
from petra_hw.suite import load_suite

torch.set_num_threads(2)
name = sys.argv[1]
suite = load_suite(name)
b = get_baseline(suite, 0)
print("baseline", b.metrics, flush=True)
for text in sys.argv[2:]:
    t = time.perf_counter()
    m = apply(
        Pipeline.parse(text), b, fidelity=float(__import__("os").environ.get("FID", "1"))
    ).model
    m.eval()
    print(
        text,
        {
            "val": score(suite, m, b.splits.val),
            "test": score(suite, m, b.splits.test),
            "s": round(time.perf_counter() - t),
        },
        flush=True,
    )
