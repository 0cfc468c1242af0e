"""Memory benchmark: streamed splits keep a large image data set out of memory.

A generated ImageFolder of ``PETRA_BENCH_MEMORY_IMAGES`` JPEGs at 224 px (20,000 by default; 10
classes, 80 % train, 10 % val, 10 % test) and torchvision's ResNet-18 at 224 px, made into a suite
with ``Suite.from_torch`` over ``ImageFolder`` datasets read by ``PETRA_BENCH_MEMORY_WORKERS``
loader processes (2 by default).  Then ``compile`` of ``Pr(ratio=0.3) - Tr(epochs=1) - PTQ``
(training capped at ``PETRA_BENCH_MEMORY_STEPS`` batches through ``fidelity``, 50 by default, so
that the run ends on a CPU) and a short ``tune`` (``PETRA_BENCH_MEMORY_BUDGET``, 5m by default).

A sampler thread reads the PSS and RSS of this process and all its children (the loader workers,
the profiler's processes) every 0.2 s; the benchmark asserts a peak PSS under 3 GB (PSS counts a
page shared by the forked workers once; RSS counts it in every process, so its sum is reported as
an upper bound).  Held as tensors, the same images would take N x 3 x 224 x 224 x 4 bytes (12 GB
for 20,000).  Raw figures go to ``reports/bench/memory-<N>.json``.

Run with ``pytest suites/test_bench_memory.py --benchmark``; a quick proof of the plumbing:
``PETRA_BENCH_MEMORY_IMAGES=120 PETRA_BENCH_MEMORY_BUDGET=1m``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import threading
import time
from pathlib import Path

import numpy as np

IMAGES = int(os.environ.get("PETRA_BENCH_MEMORY_IMAGES", "20000"))
WORKERS = int(os.environ.get("PETRA_BENCH_MEMORY_WORKERS", "2"))
STEPS = int(os.environ.get("PETRA_BENCH_MEMORY_STEPS", "50"))
BUDGET = os.environ.get("PETRA_BENCH_MEMORY_BUDGET", "5m")
SIZE = 224
CLASSES = 10
BATCH = 32
LIMIT_BYTES = 3 * 1024**3
PIPELINE = "Pr(ratio=0.3) - Tr(epochs=1) - PTQ"
OUT = Path(__file__).resolve().parents[1] / "reports" / "bench"


def generate(root: Path, n: int) -> dict[str, int]:
    """``n`` smooth random colour JPEGs (small files, like photos) in train/val/test folders."""
    from PIL import Image

    rng = np.random.default_rng(0)
    counts = {"train": 0, "val": 0, "test": 0}
    for i in range(n):
        split = "train" if i % 10 < 8 else ("val" if i % 10 == 8 else "test")
        folder = root / split / f"class{(i // 10) % CLASSES}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 255, (7, 7, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((SIZE, SIZE), Image.BILINEAR)
        image.save(folder / f"{i:06d}.jpg", quality=85)
        counts[split] += 1
    return counts


class Sampler:
    """Peak PSS and RSS summed over a process and its descendants, sampled in a thread."""

    def __init__(self, interval_s: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process()
        self.interval_s = interval_s
        self.peak_pss = self.peak_rss = self.peak_processes = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        pss = rss = count = 0
        for proc in [self.root, *self.root.children(recursive=True)]:
            try:
                info = proc.memory_full_info()
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue  # a worker that ended between listing and reading
            pss, rss, count = pss + info.pss, rss + info.rss, count + 1
        self.peak_pss, self.peak_rss = max(self.peak_pss, pss), max(self.peak_rss, rss)
        self.peak_processes = max(self.peak_processes, count)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.sample()

    def __enter__(self) -> Sampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()

    def figures(self) -> dict[str, float]:
        return {
            "peak_pss_bytes": self.peak_pss,
            "peak_rss_sum_bytes": self.peak_rss,
            "peak_processes": self.peak_processes,
            "samples": self.samples,
        }


def make_suite(root: Path):
    """ResNet-18 at 224 px over the generated folders, streamed by ``WORKERS`` loaders."""
    import torch
    from torchvision import datasets, transforms
    from torchvision.models import resnet18

    import petra_hw

    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))]
    )
    data = {s: datasets.ImageFolder(str(root / s), transform=transform) for s in ("train", "val", "test")}  # fmt: skip
    torch.manual_seed(0)
    return petra_hw.Suite.from_torch(
        resnet18(num_classes=CLASSES).eval(),
        train=torch.utils.data.DataLoader(data["train"], batch_size=BATCH, shuffle=True),
        val=data["val"],
        test=data["test"],
        metric="accuracy",
        name=f"memory-resnet18-{IMAGES}",
        num_workers=WORKERS,
    )


def test_memory_bound(benchmark, tmp_path) -> None:
    import dataclasses

    import petra_hw
    from petra_hw.profiles import load_profile

    start = time.perf_counter()
    counts = generate(tmp_path / "images", IMAGES)
    generate_s = time.perf_counter() - start
    profile = dataclasses.replace(load_profile("cpu"), batch_sizes=(1,))
    figures: dict[str, dict] = {}

    def work() -> None:
        suite = make_suite(tmp_path / "images")
        fidelity = min(1.0, STEPS * BATCH / counts["train"])
        with Sampler() as compiling:
            t = time.perf_counter()
            artifact = petra_hw.compile(
                suite, PIPELINE, device=profile, out=tmp_path / "compiled", fidelity=fidelity
            )
            compile_s = time.perf_counter() - t
        figures["compile"] = {
            **compiling.figures(),
            "wall_s": compile_s,
            "fidelity": fidelity,
            "quality": {k: v for k, v in artifact.metrics.items() if k.startswith("quality")},
        }
        with Sampler() as tuning:
            t = time.perf_counter()
            run = petra_hw.tune(
                suite, device=profile, budget=BUDGET, out=tmp_path / "runs", references=False
            )
            tune_s = time.perf_counter() - t
        figures["tune"] = {
            **tuning.figures(),
            "wall_s": tune_s,
            "budget": BUDGET,
            "evaluations": len(run.evaluations),
            "ok": sum(e.ok for e in run.evaluations),
        }

    benchmark.pedantic(work, rounds=1, iterations=1)
    peak = max(f["peak_pss_bytes"] for f in figures.values())
    record = {
        "images": IMAGES,
        "counts": counts,
        "image_size": SIZE,
        "loader_workers": WORKERS,
        "train_steps_cap": STEPS,
        "pipeline": PIPELINE,
        "generate_s": generate_s,
        "in_memory_splits_bytes": IMAGES * 3 * SIZE * SIZE * 4,
        "limit_bytes": LIMIT_BYTES,
        "peak_pss_bytes": peak,
        "phases": figures,
        "when": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"memory-{IMAGES}.json").write_text(json.dumps(record, indent=2) + "\n")
    benchmark.extra_info.update({k: v for k, v in record.items() if k != "phases"})
    assert figures["tune"]["evaluations"] >= 1
    assert peak < LIMIT_BYTES, f"peak PSS {peak / 1024**3:.2f} GB >= 3 GB"
