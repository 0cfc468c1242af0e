"""Fine-tune recipe probe on cifar10-resnet18: Pr(ratio=r) then 3 epochs of Tr under variants."""

import copy
import json
import sys
import time

import torch

from petra_hw.apply import apply
from petra_hw.baseline import get_baseline, score
from petra_hw.pipeline import Pipeline
from petra_hw.suite import load_suite
from petra_hw.training import train

torch.set_num_threads(2)
name = sys.argv[1]
suite = load_suite(name)
b = get_baseline(suite, 0)
print("baseline", b.metrics, flush=True)
cfg = suite.train
out = {}
for ratio, lr, aug in [
    (0.5, 1e-3, False),
    (0.5, 1e-3, True),
    (0.5, 5e-4, False),
    (0.5, 5e-4, True),
    (0.0, 1e-3, False),
    (0.0, 1e-3, True),
    (0.0, 5e-4, False),
]:
    t = time.perf_counter()
    if ratio:
        m = apply(Pipeline.parse(f"Pr(ratio={ratio})"), b).model
    else:
        m = copy.deepcopy(b.model)
    r = train(
        m,
        b.splits.train,
        epochs=3,
        batch_size=cfg.batch_size,
        optimizer="adam",
        lr=lr,
        weight_decay=cfg.weight_decay,
        default_loss=suite.default_loss,
        seed=0,
        monitor=b.splits.calib,
        augment=cfg.augment if aug else None,
    )
    m.eval()
    res = {
        "val": score(suite, m, b.splits.val),
        "test": score(suite, m, b.splits.test),
        "epochs_run": r.epochs_run,
        "s": time.perf_counter() - t,
    }
    out[f"ratio={ratio} lr={lr} aug={aug}"] = res
    print(ratio, lr, aug, res, flush=True)
json.dump(out, open(f"/tmp/exp/recipe-{name}.json", "w"), indent=1)
