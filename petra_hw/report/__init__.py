"""Reports of runs: ``report.json`` (validated against its schema), ``report.md`` (the paper's
table), a self-contained ``report.html``, and the plots as PNG and SVG.

``write_report(run_dir)`` is what ``petra-hw tune`` calls when a run ends; ``write_reports``
merges several runs (one suite on CPU and GPU, say) into one report.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from petra_hw.report.build import build_document
from petra_hw.report.html import render_html
from petra_hw.report.markdown import render_markdown
from petra_hw.report.plots import figures, save_figures
from petra_hw.report.schema import SCHEMA, validate

log = logging.getLogger(__name__)

REPORT_DIR = "report"
REPORT_JSON = "report.json"


def write_reports(run_dirs: list[str | Path], out: str | Path) -> dict[str, Path]:
    """Write the report of ``run_dirs`` into ``out``; returns kind -> path."""
    out = Path(out)
    document = build_document(run_dirs)
    validate(document)
    out.mkdir(parents=True, exist_ok=True)
    plot_dir = out / "plots"
    if plot_dir.is_dir():  # figures of an earlier report of these runs
        for old in [*plot_dir.glob("*.png"), *plot_dir.glob("*.svg")]:
            old.unlink()
    plots = save_figures(figures(document), plot_dir)
    paths = {
        "json": out / REPORT_JSON,
        "schema": out / "report.schema.json",
        "markdown": out / "report.md",
        "html": out / "report.html",
        "plots": plot_dir,
    }
    paths["json"].write_text(json.dumps(document, indent=1, sort_keys=True, allow_nan=False))
    paths["schema"].write_text(json.dumps(SCHEMA, indent=1))
    paths["markdown"].write_text(render_markdown(document))
    paths["html"].write_text(render_html(document, plots))
    log.info("report of %d run(s) written to %s", len(document["runs"]), out)
    return paths


def write_report(run_dir: str | Path) -> dict[str, Path]:
    """The report of one run, in ``<run_dir>/report/`` (rewritten when the run goes on)."""
    return write_reports([run_dir], Path(run_dir) / REPORT_DIR)


__all__ = ["REPORT_DIR", "REPORT_JSON", "write_report", "write_reports"]
