"""``report.html``: one self-contained file (inline CSS, images as base64 data URIs, no script,
no external link), so it can be mailed, attached to a CI job or opened offline."""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from petra_hw.report.plots import SavedPlot
from petra_hw.report.tables import paper_tables, row_label

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1400px; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: right; }
th { background: #f2f2f2; }
td:first-child, th:first-child { text-align: left; }
td.err { text-align: left; color: #a00; max-width: 40em; }
tr.front td { background: #fff4e5; }
img { max-width: 100%; border: 1px solid #eee; margin: 0.5em; }
.grid { display: flex; flex-wrap: wrap; }
.grid figure { margin: 0; width: 48%; }
small, figcaption { color: #666; }
"""


def _img(png: Path, caption: str) -> str:
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (
        f'<figure><img alt="{escape(caption)}" src="data:image/png;base64,{data}">'
        f"<figcaption>{escape(caption)}</figcaption></figure>"
    )


def _table(header: list[str], rows: list[list[str]], front: list[bool] | None = None) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cls = ' class="front"' if front and front[i] else ""
        cells = "".join(
            f'<td class="err">{escape(c)}</td>' if c and h == "error" else f"<td>{escape(c)}</td>"
            for h, c in zip(header, row, strict=True)
        )
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _num(value: Any, digits: int, scale: float = 1.0) -> str:
    return "-" if value is None else f"{value / scale:.{digits}f}"


def _candidates(run: dict[str, Any]) -> str:
    """Every evaluation of a run, errors included."""
    header = [
        "#",
        "pipeline",
        "id",
        "gen",
        "operator",
        "backend, precision",
        "val",
        "test",
        "p50 ms",
        "IQR ms",
        "throughput ips",
        "size MB",
        "feasible",
        "front",
        "error",
    ]
    rows = []
    listed = [*run.get("references", []), *run["evaluations"]]
    for e in listed:
        lat = (e["measurement"] or {}).get("latency", {})
        rows.append(
            [
                str(e["seq"]),
                row_label(e),
                e["id"],
                str(e["generation"]),
                e["operator"] or "",
                f"{e['backend']} {e['precision']}".strip(),
                _num(e["quality"].get("val"), 4),
                _num(e["quality"].get("test"), 4),
                _num(lat.get("p50_ms"), 4),
                _num(lat.get("iqr_ms"), 4),
                _num(e["objectives"].get("throughput_ips"), 0),
                _num(e["objectives"].get("size_bytes"), 3, 1e6),
                "yes" if e["feasible"] else "no",
                ("yes, over budget" if e.get("over_budget") else "yes") if e["on_front"] else "",
                "" if e["ok"] else f"{e['error_kind']}: {e['error']}",
            ]
        )
    return _table(header, rows, [e["on_front"] for e in listed])


def render_html(document: dict[str, Any], plots: list[SavedPlot]) -> str:
    runs = document["runs"]
    title = "petra-hw report: " + ", ".join(f"{r['suite']} on {r['profile']['name']}" for r in runs)
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{escape(title)}</title><style>{CSS}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f"<p><small>generated {escape(document['generated'])} by petra-hw "
        f"{escape(document['petra_hw_version'])}</small></p>",
    ]
    for t in paper_tables(document):
        parts.append(f"<h2>{escape(t.suite)}: Original and Pareto-optimal pipelines</h2>")
        parts.append(_table(t.header, t.rows))
        parts.append("<ul>" + "".join(f"<li>{escape(n)}</li>" for n in t.notes) + "</ul>")
    overall = [p for p in plots if p.run_id is None]
    if overall:
        parts.append("<h2>Hypervolume</h2>")
        parts += [_img(p.png, p.caption) for p in overall]
    for run in runs:
        name = f"{run['suite']} on {run['profile']['name']} (run {run['id']})"
        parts.append(f"<h2>Pareto scatter: {escape(name)}</h2><div class='grid'>")
        parts += [_img(p.png, p.caption) for p in plots if p.run_id == run["id"]]
        parts.append("</div>")
        parts.append(f"<h2>Candidates: {escape(name)}</h2>")
        parts.append(_candidates(run))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"
