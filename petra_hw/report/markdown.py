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


def guide_line(stats: dict[str, Any]) -> str:
    """Screening and cost model in one line (see petra_hw.search.guide)."""
    sc, cm = stats.get("screening", {}), stats.get("cost_model", {})
    screening = (
        f"screened {sc.get('screened', 0)} ({sc.get('screened_per_hour', 0.0):.1f}/h)"
        if sc.get("enabled")
        else "screening off"
    )
    if not cm.get("enabled"):
        return f"{screening}; cost model off"
    if not cm.get("heldout_latency_ms"):
        return f"{screening}; cost model: {cm.get('n_train', 0)} measurements, no held-out yet"

    def fig(key: str, fmt: str) -> str:
        v = cm.get(key)
        return "-" if v is None else format(v, fmt)

    return (
        f"{screening}; cost model on {cm['heldout_latency_ms']} held-out measurements: "
        f"latency Spearman {fig('spearman_latency_ms', '.2f')}, "
        f"mean rel. error {fig('mre_latency_ms', '.1%')}; throughput Spearman "
        f"{fig('spearman_throughput_ips', '.2f')}, mean rel. error "
        f"{fig('mre_throughput_ips', '.1%')}"
    )


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
        f"{len(run['evaluations'])} evaluations in {stats.get('elapsed_s', 0.0):.0f} s "
        f"({_time_apart(stats)})",
        f"- final hypervolume: {hv[-1]['value']:.4g} after {hv[-1]['evaluations']} evaluations"
        if hv
        else "- hypervolume: not recorded",
        f"- {guide_line(stats)}",
        f"- host: {env.get('cpu_model', '?')}, {env.get('cores', '?')} cores, "
        f"{', '.join(g.get('name', '?') for g in env.get('gpus', [])) or 'no GPU'}; "
        f"python {env.get('python', '?')}; git {run['git_commit']}",
        "- packages: " + ", ".join(f"{k} {v}" for k, v in sorted(run["packages"].items())),
        *[
            f"- warning: {e['pipeline']}: {w}"
            for e in run["evaluations"]
            if e["on_front"]
            for w in e.get("warnings", [])
        ],
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


def _time_apart(stats: dict[str, Any]) -> str:
    """The wall time's parts: what the budget counted, and what it sets apart."""
    original, references = (float(stats.get(k, 0.0)) for k in ("original_s", "references_s"))
    search = float(stats.get("elapsed_s", 0.0)) - original - references
    return (
        f"search {search:.0f} s on the budget; the Original {original:.0f} s and the references "
        f"{references:.0f} s set apart"
    )
