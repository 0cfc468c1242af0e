"""``petra-hw tune``: search compression pipelines for a suite on a device, measured there.

A bare ``petra-hw tune`` searches the ``digits-wide`` suite (``DEFAULT_SUITE``: a model whose
compute dominates its per-operator overhead, so what compression saves shows) on ``--device auto``
for three minutes.  The
run is journaled under ``--out`` (``runs/`` by default) and ``--resume RUN`` continues it.

Every option's ``dest`` is a field of ``TuneSettings``; ``_options`` copies them by field name
(an option left unset keeps the field's default), so a new setting is one field plus one option.
The search itself is ``petra_hw.api.tune``, the function a Python user calls.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

from petra_hw.console import console, errors, mb, table
from petra_hw.errors import UserError

DEFAULT_SUITE = "digits-wide"  # what a bare ``petra-hw tune`` searches (see the module doc)


def parse_budget(text: str) -> float:
    """Seconds from ``600``, ``600s``, ``10m``, ``1h`` or ``1h30m`` (``petra_hw.api``'s grammar)."""
    from petra_hw.api import budget_seconds

    try:
        return budget_seconds(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _names(text: str) -> tuple[str, ...]:
    return tuple(n.strip() for n in text.split(",") if n.strip())


def _space_file(text: str) -> dict[str, Any]:
    """A search space spec from a JSON or TOML file (``SearchSpace.from_spec`` checks it)."""
    path = Path(text)
    try:
        raw = path.read_text()
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read space file {text}: {exc.strerror}") from None
    try:
        spec = tomllib.loads(raw) if path.suffix == ".toml" else json.loads(raw)
    except (ValueError, tomllib.TOMLDecodeError) as exc:
        raise argparse.ArgumentTypeError(f"malformed space file {text}: {exc}") from None
    if not isinstance(spec, dict):
        raise argparse.ArgumentTypeError(f"space file {text} must hold an object/table")
    return spec


def _rungs(text: str) -> tuple[float, ...]:
    from petra_hw.search.fidelity import parse_rungs

    try:
        return parse_rungs(text)
    except UserError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def add_parser(sub) -> None:
    p = sub.add_parser("tune", help="search compression pipelines measured on the device (default)")
    p.add_argument(
        "--suite",
        default=DEFAULT_SUITE,
        help=f"bundled suite name or path to a suite.py (default {DEFAULT_SUITE})",
    )
    p.add_argument("--device", default="auto", help="profile name, path to a .toml, or auto")
    p.add_argument("--data-dir", type=Path, default=None, help="where suites look for data files")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, training and search")
    p.add_argument(
        "--budget",
        dest="budget_s",
        type=parse_budget,
        default=None,
        help="time budget: 600s, 10m, 1h (default 3m)",
    )
    p.add_argument("--generations", type=_positive_int, default=None, help="stop after N")
    p.add_argument(
        "--evaluations", type=_positive_int, default=None, help="stop after N candidates"
    )
    p.add_argument("--population", type=_positive_int, default=4, help="candidates per generation")
    p.add_argument(
        "--strategy",
        default=None,
        help="registered search strategy: evolution (default); random or nsga2 for comparison "
        "runs; or a plug-in's",
    )
    p.add_argument(
        "--executor", default=None, help="local (default), ray, inprocess, or a plug-in's"
    )
    p.add_argument("--address", default=None, help="Ray cluster address (--executor ray)")
    p.add_argument("--workers", type=_positive_int, default=None, help="local worker processes")
    p.add_argument(
        "--timeout", dest="timeout_s", type=float, default=None, help="seconds per candidate"
    )
    p.add_argument("--backend", default=None, help="pin one backend of the device")
    p.add_argument("--max-latency-ms", type=float, default=None, help="p50 latency at batch 1")
    p.add_argument("--max-size-mb", type=float, default=None, help="artifact size on disk")
    p.add_argument(
        "--max-quality-drop",
        type=float,
        default=None,
        help="relative to the Original's val metric (0.01 = 1%%)",
    )
    p.add_argument(
        "--target-latency-ms",
        type=float,
        default=None,
        help="stop once a feasible candidate meets every --target-* given",
    )
    p.add_argument(
        "--target-size-mb",
        type=float,
        default=None,
        help="artifact size on disk (see --target-latency-ms)",
    )
    p.add_argument(
        "--target-quality-drop",
        type=float,
        default=None,
        help="relative to the Original (0.01 = 1%%; see --target-latency-ms)",
    )
    p.add_argument(
        "--stagnation",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop when the hypervolume has not grown for N generations",
    )
    p.add_argument(
        "--objectives",
        type=_names,
        default=None,
        help="comma list among quality, latency_ms, throughput_ips, size_bytes, energy_j, "
        "complexity (default quality,latency_ms,size_bytes; + energy_j on GPUs)",
    )
    p.add_argument(
        "--no-references",
        dest="references",
        action="store_false",
        help="skip the one-shot peers and the training control (comparison runs)",
    )
    p.add_argument(
        "--no-screening",
        dest="screening",
        action="store_false",
        help="evaluate every child, even one certainly dominated on MACs and size (ablation)",
    )
    p.add_argument(
        "--no-cost-model",
        dest="cost_model",
        action="store_false",
        help="plain mutation: no learned cost model choosing among --mutants children (ablation)",
    )
    p.add_argument(
        "--no-variants",
        dest="variants",
        action="store_false",
        help="compile each candidate for one backend only, not for every backend of the device "
        "that runs its precision (ablation; --backend pins one backend too)",
    )
    p.add_argument(
        "--mutants",
        type=_positive_int,
        default=None,
        metavar="K",
        help="children drawn per slot, the cost model's best evaluated (default 8)",
    )
    p.add_argument("--mode", choices=("pretrained", "untrained"), default="pretrained")
    p.add_argument(
        "--no-remeasure",
        dest="remeasure",
        action="store_false",
        default=None,
        help="skip re-timing the Original with the front, interleaved, after each generation "
        "and before the report",
    )
    p.add_argument(
        "--fidelity",
        dest="fidelity_rungs",
        type=_rungs,
        default=None,
        metavar="RUNGS",
        help="successive-halving rungs: shares of the training epochs a candidate that trains "
        "runs at first, promoted to full epochs only if that point enters the front "
        "(default 0.34; e.g. 0.2,0.5; 'off' for full fidelity only)",
    )
    p.add_argument(
        "--space",
        type=_space_file,
        default=None,
        metavar="FILE",
        help="search space spec (JSON or TOML: kinds, max_len, min_len, params); "
        "default: the suite's space, else every kind the device deploys",
    )
    p.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=None,
        metavar="MODULE",
        help="module name or .py file registering step kinds, backends, strategies or "
        "executors (repeatable; see docs/extending.md)",
    )
    p.add_argument("--resume", metavar="RUN", default=None, help="continue a run (id or folder)")
    p.add_argument("--out", type=Path, default=Path("runs"), help="base folder of run folders")
    p.set_defaults(func=run)


# -- output ------------------------------------------------------------------------------------
def _pct(value: float | None, ref: float | None) -> str:
    if value is None or not ref:
        return ""
    return f" ({(value - ref) / abs(ref) * 100:+.1f}%)"


def _cell(value: float | None, ref: float | None, digits: int = 3) -> str:
    if value is None:
        return "-"
    return f"{value:.{digits}f}{_pct(value, ref)}"


def _line(p) -> str:
    """One line per finished evaluation."""
    ev = p.last
    what = (
        f"reference {ev.candidate.reference}" if ev.candidate.reference else ev.candidate.pipeline
    )
    head = f"[{'journal' if p.reused else p.evaluations}] {what}"
    if not ev.full_fidelity:
        head += f" [dim](fidelity {ev.fidelity:g})[/]"
    if not ev.ok:
        return f"[red]✗[/] {head}: {ev.error_kind}: {ev.error}"
    o, ref = ev.objectives, (p.original.objectives if p.original else {})
    flag = "" if ev.feasible else " [yellow]infeasible[/]"
    return (
        f"[green]✓[/] {head}: val {o['quality_val']:.4f}{_pct(o['quality_val'], ref.get('quality_val'))}"
        f", {o['latency_ms']:.4f} ms{_pct(o['latency_ms'], ref.get('latency_ms'))}"
        f", {mb(o['size_bytes'])} MB{_pct(o['size_bytes'], ref.get('size_bytes'))}"
        f" [{ev.backend} {ev.precision}]{flag}"
    )


def _status(p) -> str:
    evals = f"{p.evaluations}" + (f"/{p.max_evaluations}" if p.max_evaluations else "")
    clock = f"{p.elapsed_s:.0f}s" + (f"/{p.budget_s:.0f}s" if p.budget_s else "")
    hv = "-" if p.hypervolume is None else f"{p.hypervolume:.4g}"
    best = "-"
    if p.best is not None and p.original is not None:
        lat = p.best.objectives["latency_ms"]
        best = f"{p.best.candidate.pipeline} ({lat:.4f} ms{_pct(lat, p.original.objectives.get('latency_ms'))})"
    return (
        f"generation {p.generation} · evaluations {evals} · {clock} · hypervolume {hv}"
        f" · best feasible: {best}"
    )


def _name(ev) -> str:
    if ev.candidate.reference:
        return f"ref: {ev.candidate.reference}"
    return str(ev.candidate.pipeline)


def _summary(result) -> None:
    from petra_hw.report.markdown import guide_line
    from petra_hw.value import compare, final_figures, quality_budget, undertrained, within_budget

    o = result.original
    objectives = result.objectives
    budget = quality_budget(objectives.config.max_quality_drop)
    rows = []
    front = sorted(result.front, key=lambda e: e.objectives.get("latency_ms", 0.0))
    refs = [r for r in result.references if r.ok]
    for ev in [o, *refs, *[e for e in front if e.candidate.id != o.candidate.id]]:
        obj = ev.objectives
        if ev is o:  # the Original's row carries no percentages
            ref_q, ref = {}, {}
        else:
            ref_q, ref = o.quality, o.objectives
        name = _name(ev)
        if not ev.candidate.reference and ev is not o and not within_budget(ev, objectives, budget):
            name += " [yellow](over budget)[/]"
        rows.append(
            [
                name,
                _cell(ev.quality.get("val"), ref_q.get("val"), 4),
                _cell(ev.quality.get("test"), ref_q.get("test"), 4),
                _cell(obj.get("latency_ms"), ref.get("latency_ms"), 4),
                _cell(obj.get("throughput_ips"), ref.get("throughput_ips"), 0),
                _cell(obj.get("size_bytes", 0) / 1e6, ref.get("size_bytes", 0) / 1e6, 3),
                f"{ev.backend} {ev.precision}",
            ]
        )
    metric = result.objectives.config.split
    console.print(
        table(
            f"Pareto front of {result.run_id} beside the references (chosen on {metric}; "
            "% vs Original)",
            [
                "pipeline",
                "quality val",
                "quality test",
                "latency ms",
                "throughput ips",
                "size MB",
                "backend",
            ],
            rows,
        )
    )
    for ev in result.references:
        if not ev.ok:
            console.print(
                f"[red]✗[/] reference {ev.candidate.reference}: {ev.error_kind}: {ev.error}"
            )
    stats = result.stats
    figures = final_figures(stats.get("remeasured_final"), result.front, result.references)
    console.print(
        f"best within the quality budget ({budget:.1%} of the Original's val metric) vs the best "
        f"peer, on {figures.note}:"
    )
    for c in compare(result.front, result.references, objectives, budget, figures=figures):
        console.print(f"  {c.line()}")
    warning = undertrained(o, result.references, objectives.config.higher_is_better)
    if warning:
        console.print(f"[yellow]warning:[/] {warning}")
    cache = stats.get("prefix_cache", {})
    errors_by_kind = ", ".join(f"{k} {v}" for k, v in sorted(stats.get("errors", {}).items()))
    fid = stats.get("fidelity", {})
    low = (
        f" + {fid['low_fidelity']} at reduced fidelity ({fid['promoted']} promoted)"
        if fid.get("low_fidelity")
        else ""
    )
    final = stats.get("remeasured_final") or {}
    for row in [*final.get("front", {}).values(), *final.get("references", {}).values()]:
        name = f"ref: {row['reference']}" if row.get("reference") else row["pipeline"]
        console.print(
            f"  interleaved re-measure: {name} at {row['latency_ratio']:.2f}x the "
            f"Original's batch-1 latency (journaled {row['journaled_ratio']:.2f}x)"
        )
    console.print(guide_line(stats))
    console.print(
        f"{len(result.evaluations)} evaluations{low} ({errors_by_kind or 'no errors'}); "
        f"stopped: {result.stop_reason}; prefix cache: {cache.get('hits', 0)}/"
        f"{cache.get('applied', 0)} hits, {cache.get('seconds_saved', 0.0):.1f} s saved"
    )


def _write_report(run_dir: Path) -> None:
    """Write report.json / report.md / report.html for the run, as every tune does."""
    from petra_hw.report import write_report

    paths = write_report(run_dir)
    shown = [str(paths[k]) for k in ("markdown", "html", "json") if k in paths]
    console.print("report: " + ", ".join(shown))


# -- entry point -------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> int:
    from petra_hw import api

    status = console.status("starting")

    def progress(p) -> None:
        if p.last is not None:
            console.print(_line(p))
        status.update(_status(p))

    if args.resume:
        if args.space is not None or args.plugins:
            raise UserError("a resumed run keeps its journaled --space and --plugin")
        with status:
            result = api.resume(
                args.resume,
                out=args.out,
                progress=progress,
                executor=args.executor,
                workers=args.workers,
                address=args.address,
            )
    else:
        options = _options(args)
        with status:
            result = api.tune(args.suite, args.device, out=args.out, progress=progress, **options)
    _summary(result.result)
    console.print(f"run folder: {result.run_dir}")
    _write_report(result.run_dir)
    return 0


def _options(args: argparse.Namespace) -> dict[str, Any]:
    """The given options by ``TuneSettings`` field name, after the checks that print (the device
    on this host, and the baseline, trained once up front with its progress shown)."""
    from petra_hw.commands.common import setup
    from petra_hw.profiles import check_host, load_profile
    from petra_hw.search.tune import TuneSettings

    for flag in ("max_quality_drop", "target_quality_drop"):
        if getattr(args, flag) is not None and getattr(args, flag) < 0:
            raise UserError(f"--{flag.replace('_', '-')} must be >= 0")
    if args.mode == "pretrained":
        setup(args)  # refuses a device this host lacks; trains the baseline once, up front
    else:
        for note in check_host(load_profile(args.device)):
            errors.print(f"note: {note}")
    skip = {"suite", "device"}
    return {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(TuneSettings)
        if f.name not in skip and getattr(args, f.name, None) is not None
    }
