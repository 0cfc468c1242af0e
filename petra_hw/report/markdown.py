"""``report.md``: the paper's table per suite, what was measured where, and the failures."""

from __future__ import annotations

from typing import Any

from petra_hw.report.tables import COLUMNS, PaperTable, paper_tables, row_label, rows_of


def _esc(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _numeric(header: str) -> bool:
    return header != "Pipeline" and not header.endswith(COLUMNS[-1])


def table_markdown(t: PaperTable) -> str:
    lines = [
        "| " + " | ".join(_esc(h) for h in t.header) + " |",
        "|" + "|".join("---:" if _numeric(h) else "---" for h in t.header) + "|",
    ]
    lines += ["| " + " | ".join(_esc(c) for c in row) + " |" for row in t.rows]
    return "\n".join(lines)


def _run_section(run: dict[str, Any]) -> list[str]:
    s, env, stats = run["settings"], run["environment"], run["stats"]
    hv = run["hypervolume"]
    budget = ", ".join(
        f"{k} {s[k]}" for k in ("budget_s", "generations", "evaluations") if s.get(k) is not None
    )
    return [
        f"### {run['id']} ({run['profile']['name']})",
        "",
        f"- suite `{run['suite']}`, seed {run['seed']}, mode {s.get('mode')}, strategy "
        f"{run['strategy']}, population {s.get('population')}, budget: {budget or 'none'}",
        f"- status {run['status']}; stopped: {stats.get('stop_reason', '-')}; "
        f"{len(run['evaluations'])} evaluations in {stats.get('elapsed_s', 0.0):.0f} s",
        f"- final hypervolume: {hv[-1]['value']:.4g} after {hv[-1]['evaluations']} evaluations"
        if hv
        else "- hypervolume: not recorded",
        f"- host: {env.get('cpu_model', '?')}, {env.get('cores', '?')} cores, "
        f"{', '.join(g.get('name', '?') for g in env.get('gpus', [])) or 'no GPU'}; "
        f"python {env.get('python', '?')}; git {run['git_commit']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in sorted(run["packages"].items())),
        "",
    ]


def _failures(document: dict[str, Any]) -> list[str]:
    rows = [
        (run["profile"]["name"], e) for run in document["runs"] for e in rows_of(run) if not e["ok"]
    ]
    if not rows:
        return []
    out = [
        "## Failed candidates and references",
        "",
        "| device | pipeline | kind | error |",
        "|---|---|---|---|",
    ]
    out += [
        f"| {_esc(d)} | {_esc(row_label(e))} | {e['error_kind']} | {_esc(e['error'] or '')} |"
        for d, e in rows
    ]
    return [*out, ""]


def render_markdown(document: dict[str, Any]) -> str:
    runs = document["runs"]
    suites = sorted({r["suite"] for r in runs})
    devices = sorted({r["profile"]["name"] for r in runs})
    out = [
        f"# petra-hw report: {', '.join(suites)} on {', '.join(devices)}",
        "",
        f"Generated {document['generated']} by petra-hw {document['petra_hw_version']}.",
        "",
    ]
    for t in paper_tables(document):
        out += [f"## {t.suite}", "", table_markdown(t), ""]
        out += [f"- {n}" for n in t.notes] + [""]
    out += ["## Runs", ""]
    for run in runs:
        out += _run_section(run)
    out += _failures(document)
    return "\n".join(out).rstrip() + "\n"
