"""Reports of a real tiny run on digits: schema, the paper's table, self-contained HTML, plots,
merged device columns, and ``petra-hw reproduce``."""

from __future__ import annotations

import copy
import json
import re
import shutil
from html.parser import HTMLParser

import pytest

from petra_hw.cli import main


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """A finished run: the Original and 3 candidates, population 2 (``conftest.tiny_run``)."""
    return tiny_run


@pytest.fixture(scope="module")
def paths(tiny):
    from petra_hw.report import write_report

    return write_report(tiny.run_dir)


@pytest.fixture(scope="module")
def document(paths) -> dict:
    return json.loads(paths["json"].read_text())


def test_report_json_validates_against_its_schema(paths, document, tiny) -> None:
    import jsonschema

    from petra_hw.report.schema import SCHEMA

    jsonschema.validate(document, SCHEMA)
    assert json.loads(paths["schema"].read_text()) == SCHEMA
    run = document["runs"][0]
    assert [e["id"] for e in run["evaluations"]] == [e.candidate.id for e in tiny.evaluations]
    assert set(run["front"]) == {e.candidate.id for e in tiny.front}
    assert run["seed"] == 0 and run["settings"]["population"] == 2
    assert run["packages"]["torch"] and run["git_commit"]
    assert run["hypervolume"] and run["metric"]["name"] == "accuracy"
    lat = run["evaluations"][0]["measurement"]["latency"]
    assert lat["n"] >= 5 and lat["p25_ms"] <= lat["p50_ms"] <= lat["p75_ms"]


def test_schema_rejects_a_broken_report(document) -> None:
    from petra_hw.errors import UserError
    from petra_hw.report.schema import validate

    bad = copy.deepcopy(document)
    bad["runs"][0]["evaluations"][0]["ok"] = False  # an error without a message
    with pytest.raises(UserError, match="schema"):
        validate(bad)


def _table(markdown: str) -> list[list[str]]:
    lines = markdown.split("## digits", 1)[1].strip().splitlines()
    rows = [line for line in lines if line.startswith("|")]
    return [[c.strip() for c in row.strip("|").split(" | ")] for row in rows[2:]]


def _number(cell: str) -> float:
    return float(cell.split(" ")[0])


def _pct(cell: str) -> float | None:
    m = re.search(r"\(([+-]\d+\.\d)%\)", cell)
    return float(m.group(1)) if m else None


def test_markdown_table_is_original_plus_front_with_journal_values(paths, document, tiny) -> None:
    md = paths["markdown"].read_text()
    header = md.split("## digits", 1)[1].strip().splitlines()[0]
    assert header.startswith(
        "| Pipeline | quality | latency ms | throughput ips | size MB | backend, precision |"
    )
    original = tiny.original
    front = sorted(
        (e for e in tiny.front if e.candidate.id != original.candidate.id),
        key=lambda e: e.objectives["latency_ms"],
    )
    rows = _table(md)
    # the references sit right under the Original, in the order they were built
    names = [f"ref: {e.candidate.reference}" for e in tiny.references]
    assert names and [r[0] for r in rows[1 : 1 + len(names)]] == names
    rows = [rows[0], *rows[1 + len(names) :]]
    assert [r[0] for r in rows] == [str(e.candidate.pipeline) for e in [original, *front]]
    for row, ev in zip(rows, [original, *front], strict=True):
        expected = [
            ev.quality["test"],
            ev.objectives["latency_ms"],
            ev.objectives["throughput_ips"],
            ev.objectives["size_bytes"] / 1e6,
        ]
        refs = [
            original.quality["test"],
            original.objectives["latency_ms"],
            original.objectives["throughput_ips"],
            original.objectives["size_bytes"] / 1e6,
        ]
        for cell, value, ref, digits in zip(row[1:5], expected, refs, (4, 4, 0, 3), strict=True):
            assert abs(_number(cell) - value) <= 0.5 * 10**-digits + 1e-12, (cell, value)
            if ev is original:
                assert _pct(cell) is None
            else:
                assert abs(_pct(cell) - (value - ref) / ref * 100) <= 0.051, (cell, value, ref)
        assert row[5] == f"{ev.backend} {ev.precision}"
    assert "cpu-fast" in md and "quality: test accuracy" in md
    # the wall time's parts: the Original's evaluation and the references are off the budget
    stats = document["runs"][0]["stats"]
    search = stats["elapsed_s"] - stats["original_s"] - stats["references_s"]
    assert stats["original_s"] > 0
    assert f"search {search:.0f} s on the budget; the Original {stats['original_s']:.0f} s" in md


class _Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.refs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag, attrs) -> None:
        self.tags.append(tag)
        self.refs += [v or "" for k, v in attrs if k in ("src", "href", "data", "srcset")]


def test_html_is_self_contained(paths, tiny) -> None:
    html = paths["html"].read_text()
    parser = _Links()
    parser.feed(html)
    assert parser.refs and all(r.startswith("data:image/png;base64,") for r in parser.refs)
    assert "script" not in parser.tags and "link" not in parser.tags
    assert "url(" not in html and "@import" not in html
    for ev in tiny.evaluations:  # the per-candidate table
        assert ev.candidate.id in html


def test_plots_are_saved_as_png_and_svg(paths) -> None:
    plots = paths["plots"]
    names = {p.stem for p in plots.glob("*.png")}
    assert names == {p.stem for p in plots.glob("*.svg")}
    assert "hypervolume" in names
    # quality, latency, throughput, size: each pair once
    assert sum(1 for n in names if n.startswith("pareto-")) == 6


def test_failed_candidate_shows_in_html_and_markdown(tiny, tmp_path) -> None:
    from petra_hw.pipeline import Pipeline
    from petra_hw.report import write_report
    from petra_hw.search.store import JOURNAL_NAME, Store
    from petra_hw.search.types import Candidate, Evaluation

    run_dir = tmp_path / tiny.run_dir.name
    shutil.copytree(tiny.run_dir, run_dir, ignore=shutil.ignore_patterns("report"))
    failed = Evaluation(
        Candidate(Pipeline.parse("PDQ"), 1, None, "test"),
        error="no backend compiles int8-dynamic here (planted)",
        error_kind="compile",
        feasible=False,
    )
    with Store(run_dir / JOURNAL_NAME) as store:
        store.add_evaluation(tiny.run_id, failed)
    paths = write_report(run_dir)
    html, md = paths["html"].read_text(), paths["markdown"].read_text()
    assert "planted" in html and failed.candidate.id in html
    assert "## Failed candidates" in md and "planted" in md


def test_merged_report_has_device_columns_and_says_not_runnable(document) -> None:
    from petra_hw.pipeline import Pipeline
    from petra_hw.precision import resolve
    from petra_hw.report.markdown import render_markdown
    from petra_hw.report.tables import paper_tables

    cpu = document["runs"][0]
    gpu = copy.deepcopy(cpu)
    gpu["id"] = "digits-gpu-x"
    gpu["profile"] = {"name": "gpu-x", "device_kind": "gpu", "precisions": ["fp16"]}
    gpu["evaluations"] = [e for e in gpu["evaluations"] if e["id"] == gpu["original"]]
    gpu["front"] = []
    gpu["references"] = []  # the GPU run built none: its cells say so
    merged = {**document, "runs": [cpu, gpu]}
    (t,) = paper_tables(merged)
    assert "cpu-fast quality" in t.header and "gpu-x latency ms" in t.header
    width = len(t.header)
    assert all(len(r) == width for r in t.rows)
    gpu_quality = t.header.index("gpu-x quality")
    by_id = {e["id"]: e for e in cpu["evaluations"]}
    refs = [r["id"] for r in cpu["references"]]
    front = [i for i in cpu["front"] if i != cpu["original"]]
    for row, cid in zip(t.rows, [cpu["original"], *refs, *front], strict=True):
        cell = row[gpu_quality]
        if cid in refs:
            assert cell == "not measured"
            continue
        if cid == cpu["original"]:
            assert _number(cell) == pytest.approx(by_id[cid]["quality"]["test"], abs=5e-5)
            continue
        precision = resolve(Pipeline.from_json(by_id[cid]["pipeline_json"]), "fp16").precision
        expected = (
            "not measured" if precision == "fp16" else f"not runnable (gpu-x has no {precision})"
        )
        assert cell == expected
    assert "gpu-x" in render_markdown(merged)


def test_report_cli_merges_runs_and_refuses_a_non_empty_out(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "merged"
    assert main(["report", str(tiny.run_dir), str(tiny.run_dir), "--out", str(out)]) == 0
    assert {p.name for p in out.iterdir()} >= {"report.json", "report.md", "report.html", "plots"}
    capsys.readouterr()
    assert main(["report", str(tiny.run_dir), "--out", str(out)]) == 2
    assert main(["report", str(tmp_path / "no-run")]) == 2


def test_reproduce_original_within_band_and_catches_a_planted_mismatch(
    paths, document, tmp_path, capsys
) -> None:
    run = document["runs"][0]
    original = run["original"]
    argv = ["reproduce", str(paths["json"]), "--candidate", original[:8]]
    # quality is deterministic; latency on a shared 2-core machine is not: a wide band here
    assert main([*argv, "--latency-tolerance", "1000%"]) == 0
    assert "reproduced:" in capsys.readouterr().out
    planted = copy.deepcopy(document)
    ev = next(e for e in planted["runs"][0]["evaluations"] if e["id"] == original)
    ev["quality"]["test"] -= 0.05
    bad = tmp_path / "report.json"
    bad.write_text(json.dumps(planted))
    assert (
        main(["reproduce", str(bad), "--candidate", original, "--latency-tolerance", "1000%"]) == 1
    )
    assert "not reproduced: quality test" in capsys.readouterr().out
    assert main(["reproduce", str(bad), "--candidate", "ffffffff"]) == 2
