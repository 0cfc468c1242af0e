"""Export a run's artifacts for deployment: one folder per device and pipeline.

Each exported folder holds exactly the artifact (its model files and ``manifest.json``, hashes
verified before and after the copy) plus a README.md saying what it is, what it measured, and
how to load it with ``petra_hw.load`` or with the plain runtime alone.  Nothing of the run is
needed afterwards: no journal, no run folder, no suite.  An output folder that exists and is not
empty is refused, never overwritten.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petra_hw import __version__
from petra_hw.artifact import DIGEST, MANIFEST, read_artifact
from petra_hw.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Exported:
    path: Path
    run_id: str
    profile: str
    candidate: str
    pipeline: str
    backend: str
    precision: str
    chosen_on: str = ""  # with ``best``: which figures ranked it (``value.Figures.note``)


def _slug(text: str, limit: int = 48) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:limit].strip("-") or "pipeline"


def _choose(
    run: dict[str, Any], candidates: list[str] | None, best: str | None = None
) -> list[dict[str, Any]]:
    """The front (no ``candidates``), each requested id (a unique prefix is enough), or the
    run's best artifact within its quality budget for objective ``best``."""
    evaluations = run["evaluations"]
    if best is not None:
        chosen = run["best"].get(best)
        if chosen is None:
            raise UserError(
                f"run {run['id']} has no artifact within its quality budget "
                f"({run['quality_budget']:.1%}) for {best}"
            )
        return [next(e for e in evaluations if e["id"] == chosen)]
    if not candidates:
        by_id = {e["id"]: e for e in evaluations}
        return [by_id[i] for i in run["front"]]
    chosen = []
    for wanted in candidates:
        hits = [e for e in evaluations if e["id"].startswith(wanted)]
        if len(hits) != 1:
            what = "no" if not hits else "more than one"
            raise UserError(f"run {run['id']} has {what} candidate '{wanted}'")
        chosen.append(hits[0])
    return chosen


def _source(run: dict[str, Any], ev: dict[str, Any]) -> Path:
    if not ev["ok"]:
        raise UserError(
            f"candidate {ev['id']} ({ev['pipeline']}) failed ({ev['error_kind']}): nothing to export"
        )
    root = Path(run["dir"]).resolve()
    src = Path(ev["artifact"] or "").resolve()
    if root not in src.parents:
        raise UserError(f"artifact {src} of candidate {ev['id']} lies outside its run folder")
    return src


def _snippet(backend: str, files: list[str], manifest: dict[str, Any], gpu: bool) -> list[str]:
    """Lines that run the artifact with its runtime alone, after ``x`` (float32 numpy) is made;
    the first line is the runtime's import.  Empty for a backend we have no recipe for."""
    name = manifest["input"]["name"]
    if backend == "onnxruntime":
        providers = '["CUDAExecutionProvider"]' if gpu else '["CPUExecutionProvider"]'
        return [
            "import onnxruntime as ort",
            f'session = ort.InferenceSession("{files[0]}", providers={providers})',
            f'y = session.run(None, {{"{name}": x}})[0]',
        ]
    if backend == "openvino":
        config = manifest.get("openvino", {}).get("config", {})
        xml = next(f for f in files if f.endswith(".xml"))
        return [
            "import openvino as ov",
            f'compiled = ov.Core().compile_model("{xml}", "CPU", {config!r})',
            "y = compiled(x)[0]",
        ]
    if backend == "torch":
        device = manifest.get("device", "cpu")
        to_device = [
            "from torch.export.passes import move_to_device_pass",
            'module = move_to_device_pass(program, "cuda").module()',
        ]
        return [
            "import torch",
            f'program = torch.export.load("{files[0]}")',
            *(to_device if device == "cuda" else ["module = program.module()"]),
            "with torch.no_grad():",
            f'    y = module(torch.from_numpy(x).to("{device}")).cpu().numpy()',
        ]
    if backend == "tensorrt":
        return [
            "import tensorrt as trt",
            "runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))",
            f'engine = runtime.deserialize_cuda_engine(open("{files[0]}", "rb").read())',
            "# then bind device buffers and run an execution context; the engine loads only on",
            "# the GPU model and TensorRT version named in manifest.json",
        ]
    return []


def _fmt(value: float | None, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def readme(run: dict[str, Any], ev: dict[str, Any], manifest: dict[str, Any]) -> str:
    profile = run["profile"]
    gpu = profile.get("device_kind") == "gpu"
    m = ev["measurement"] or {}
    lat = m.get("latency", {})
    biggest = max(m.get("throughput", []), key=lambda t: t["batch_size"], default={})
    metric = run["metric"]["name"]
    shape = ["N" if s is None else str(s) for s in manifest["input"]["shape"]]
    example = ", ".join(["1", *shape[1:]])
    env = run["environment"]
    lines = [
        f"# {ev['pipeline']} on {profile['name']} ({ev['backend']} {ev['precision']})",
        "",
        f"Exported by petra-hw {__version__} from run `{run['id']}` (suite `{run['suite']}`, "
        f"seed {run['seed']}, candidate `{ev['id']}`, git {run['git_commit']}).",
        "",
        "| measured through this artifact | value |",
        "|---|---:|",
        f"| test {metric} | {_fmt(ev['quality'].get('test'), 4)} |",
        f"| val {metric} | {_fmt(ev['quality'].get('val'), 4)} |",
        f"| latency p50 at batch 1 (ms) | {_fmt(lat.get('p50_ms'), 4)} |",
        f"| latency IQR at batch 1 (ms) | {_fmt(lat.get('iqr_ms'), 4)} |",
        f"| throughput at batch {biggest.get('batch_size', '-')} (inputs/s) | "
        f"{_fmt(biggest.get('throughput_ips'), 0)} |",
        f"| size on disk (MB) | {_fmt(ev['objectives'].get('size_bytes'), 3, 1e6)} |",
        "",
        f"Measured on {env.get('cpu_model', '?')} "
        f"({', '.join(g.get('name', '?') for g in env.get('gpus', [])) or 'no GPU'}), "
        f"{m.get('threads', '?')} threads.",
        "",
        f"Input `{manifest['input']['name']}`: {manifest['input']['dtype']} of shape "
        f"[{', '.join(shape)}] (N: batch size, dynamic).",
        "",
        "## Load with petra-hw",
        "",
        "```python",
        "import numpy as np",
        "import petra_hw",
        "",
        'runner = petra_hw.load("path/to/this/folder")  # checks every file\'s sha256',
        f"y = runner(np.zeros(({example}), dtype=np.float32))",
        "```",
    ]
    snippet = _snippet(ev["backend"], list(manifest["files"]), manifest, gpu)
    if snippet:
        lines += [
            "",
            f"## Load with {ev['backend']} alone (run it in this folder)",
            "",
            "```python",
            "import numpy as np",
            snippet[0],
            "",
            f"x = np.zeros(({example}), dtype=np.float32)",
            *snippet[1:],
            "```",
        ]
    return "\n".join(lines) + "\n"


def _copy(src: Path, dest: Path) -> Path:
    artifact = read_artifact(src)  # verify before copying
    dest.mkdir(parents=True)
    for name in [*artifact.all_files, MANIFEST, DIGEST]:
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / name, target)
    return read_artifact(dest).path  # and after


def export_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    candidates: list[str] | None = None,
    best: str | None = None,
) -> list[Exported]:
    """Copy the front (the given candidates, or the best artifact within the quality budget for
    objective ``best``) of each run to ``out/<profile>/<pipeline>-<id>``."""
    from petra_hw.report.build import build_run

    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"output folder {out} exists and is not empty; choose another --out")
    runs = [build_run(d) for d in run_dirs]
    plan = [(run, ev, _source(run, ev)) for run in runs for ev in _choose(run, candidates, best)]
    if not plan:
        raise UserError("nothing to export: no run has a Pareto front (did every candidate fail?)")
    exported = []
    for run, ev, src in plan:
        dest = out / _slug(run["profile"]["name"]) / f"{_slug(ev['pipeline'])}-{ev['id']}"
        if dest.exists():  # the same candidate named twice
            continue
        _copy(src, dest)
        manifest = json.loads((dest / MANIFEST).read_text())
        # listed in the manifest like every file of an artifact folder (re-sealed)
        read_artifact(dest).add_file("README.md", readme(run, ev, manifest).encode())
        exported.append(
            Exported(
                dest,
                run["id"],
                run["profile"]["name"],
                ev["id"],
                ev["pipeline"],
                ev["backend"],
                ev["precision"],
                run["value_figures"]["note"] if best is not None else "",
            )
        )
        log.info("exported %s to %s", ev["pipeline"], dest)
    _index(out, exported)
    return exported


def _index(out: Path, exported: list[Exported]) -> None:
    lines = [
        "# Deployment artifacts",
        "",
        "One folder per device and pipeline; each has its own README.md. Load any of them with",
        "`petra_hw.load(folder)` or with its runtime alone.",
        "",
        "| device | pipeline | backend | precision | folder | run |",
        "|---|---|---|---|---|---|",
    ]
    lines += [
        f"| {e.profile} | {e.pipeline} | {e.backend} | {e.precision} | "
        f"`{e.path.relative_to(out)}` | {e.run_id} |"
        for e in exported
    ]
    (out / "README.md").write_text("\n".join(lines) + "\n")
