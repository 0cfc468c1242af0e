"""Report figures: Pareto scatter per pair of objectives, hypervolume versus evaluations.

Figures are built with ``matplotlib.figure.Figure`` and its Agg canvas directly, never through
``pyplot``: no global backend switch, no display needed, nothing left open between reports.
Each figure is saved as PNG (embedded in the HTML) and SVG (for papers).
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

# raw objective -> (axis label, scale); quality's label takes the metric name
AXES: dict[str, tuple[str, float]] = {
    "quality_val": ("val {metric}", 1.0),
    "latency_ms": ("latency ms (p50, batch 1)", 1.0),
    "throughput_ips": ("throughput inputs/s", 1.0),
    "size_bytes": ("size MB (on disk)", 1e6),
    "energy_j": ("energy J per inference", 1.0),
}
REFERENCE_MARKERS = ("s", "^", "v", "P", "X", "h", "<", ">")


@dataclass(frozen=True)
class Plot:
    """One figure, the run it belongs to (None: all runs) and its caption."""

    name: str
    run_id: str | None
    caption: str
    figure: Figure


@dataclass(frozen=True)
class SavedPlot:
    name: str
    run_id: str | None
    caption: str
    png: Path
    svg: Path


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-")


def _axes(run: dict[str, Any]) -> list[str]:
    ok = [e for e in run["evaluations"] if e["ok"]]
    return [k for k in AXES if ok and all(e["objectives"].get(k) is not None for e in ok)]


def _label(name: str, run: dict[str, Any]) -> str:
    return AXES[name][0].format(metric=run["metric"]["name"])


def _has(ev: dict[str, Any], name: str) -> bool:
    return ev["objectives"].get(name) is not None


def _value(ev: dict[str, Any], name: str) -> float:
    return ev["objectives"][name] / AXES[name][1]


def pareto_figure(run: dict[str, Any], x: str, y: str) -> Figure:
    """Every successful evaluation, the front highlighted and named, the Original starred, each
    reference point with its own marker, front points over the quality budget crossed."""
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    ok = [e for e in run["evaluations"] if e["ok"]]
    original = next((e for e in ok if e["id"] == run["original"]), None)
    others = [e for e in ok if e is not original]
    groups = (
        (
            "dominated",
            [e for e in others if e["feasible"] and not e["on_front"]],
            "o",
            "#8c8c8c",
            True,
        ),
        ("infeasible", [e for e in others if not e["feasible"]], "o", "#8c8c8c", False),
        ("Pareto front", [e for e in others if e["on_front"]], "D", "#d62728", True),
    )
    for label, evs, marker, color, filled in groups:
        if evs:
            ax.scatter(
                [_value(e, x) for e in evs],
                [_value(e, y) for e in evs],
                marker=marker,
                s=36,
                label=f"{label} ({len(evs)})",
                facecolors=color if filled else "none",
                edgecolors=color,
            )
    for e in ok:
        if e["on_front"]:
            ax.annotate(
                e["pipeline"][:40],
                (_value(e, x), _value(e, y)),
                fontsize=7,
                xytext=(4, 4),
                textcoords="offset points",
            )
    # Reference points: one distinct marker per recipe, each named, never part of the front.
    refs = [e for e in run.get("references", []) if e["ok"] and _has(e, x) and _has(e, y)]
    for e, marker in zip(refs, itertools.cycle(REFERENCE_MARKERS)):
        ax.scatter(
            [_value(e, x)],
            [_value(e, y)],
            marker=marker,
            s=70,
            facecolors="none",
            edgecolors="#1f77b4",
            label=f"ref: {e['reference']}",
            zorder=3,
        )
    over = [e for e in others if e["on_front"] and e.get("over_budget")]
    if over:
        ax.scatter(
            [_value(e, x) for e in over],
            [_value(e, y) for e in over],
            marker="x",
            s=60,
            color="#ff7f0e",
            label=f"over quality budget ({len(over)})",
            zorder=4,
        )
    if original is not None:
        ax.scatter(
            [_value(original, x)],
            [_value(original, y)],
            marker="*",
            s=160,
            color="black",
            label="Original",
            zorder=3,
        )
    failed = len(run["evaluations"]) - len(ok)
    ax.set_xlabel(_label(x, run))
    ax.set_ylabel(_label(y, run))
    ax.set_title(
        f"{run['suite']} on {run['profile']['name']}"
        + (f" ({failed} failed, not shown)" if failed else ""),
        fontsize=10,
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


def hypervolume_figure(runs: list[dict[str, Any]]) -> Figure:
    fig = Figure(figsize=(6.0, 3.6), layout="constrained")
    ax = fig.add_subplot()
    for run in runs:
        points = run["hypervolume"]
        if points:
            ax.plot(
                [p["evaluations"] for p in points],
                [p["value"] for p in points],
                marker="o",
                label=f"{run['suite']} on {run['profile']['name']}",
            )
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("evaluations (Original included)")
    ax.set_ylabel("hypervolume (normalized objectives)")
    ax.set_title("hypervolume versus evaluations", fontsize=10)
    ax.grid(alpha=0.3)
    if ax.has_data():
        ax.legend(fontsize=7)
    return fig


def figures(document: dict[str, Any]) -> list[Plot]:
    """Hypervolume of all runs, then a Pareto scatter per run and pair of objectives."""
    out = [
        Plot(
            "hypervolume",
            None,
            "hypervolume versus evaluations",
            hypervolume_figure(document["runs"]),
        )
    ]
    for run in document["runs"]:
        for a, b in itertools.combinations(_axes(run), 2):
            # the first objective (quality first) goes up the y axis
            caption = f"{_label(a, run)} vs {_label(b, run)}"
            name = f"pareto-{_slug(run['id'])}-{a}-vs-{b}"
            out.append(Plot(name, run["id"], caption, pareto_figure(run, x=b, y=a)))
    return out


def save_figures(plots: list[Plot], folder: Path) -> list[SavedPlot]:
    """Write each figure as PNG and SVG."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for p in plots:
        png, svg = folder / f"{p.name}.png", folder / f"{p.name}.svg"
        p.figure.savefig(png, format="png", dpi=110)
        p.figure.savefig(svg, format="svg", metadata={"Date": None})
        out.append(SavedPlot(p.name, p.run_id, p.caption, png, svg))
    return out
