"""Reference points (one-shot peers and the training control), the quality budget, export --best.

One real run on digits builds them on a profile without OpenVINO, so the two NNCF peers fail for
real (their backend is not the device's) while the ORT peers and the control are measured.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import contextmanager
from pathlib import Path

import pytest

from petra_hw.cli import main
from petra_hw.pipeline import Pipeline
from petra_hw.references import CONTROL, RECIPES, reference_candidates
from petra_hw.search.objectives import ObjectiveConfig, Objectives
from petra_hw.search.store import JOURNAL_NAME, Store
from petra_hw.search.types import Candidate, Evaluation
from petra_hw.value import compare, undertrained, within_budget

FAST_PROFILE = (Path(__file__).parent / "data" / "cpu-fast.toml").read_text()
NO_OPENVINO = FAST_PROFILE.replace(
    'backends = ["onnxruntime", "openvino", "torch"]', 'backends = ["onnxruntime", "torch"]'
)
CPU_RECIPES = {n for n, r in RECIPES.items() if "cpu" in r.devices}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, digits) -> Path:
    root = tmp_path_factory.mktemp("refs")
    profile = root / "no-openvino.toml"
    profile.write_text(NO_OPENVINO.replace('name = "cpu-fast"', 'name = "cpu-no-ov"'))
    argv = ["tune", "--suite", "digits", "--device", str(profile), "--evaluations", "2"]
    argv += ["--population", "2"]
    assert main([*argv, "--out", str(root / "runs")]) == 0
    (found,) = (root / "runs").iterdir()
    return found


def _references(run_dir: Path) -> dict[str, Evaluation]:
    with Store(run_dir / JOURNAL_NAME) as store:
        (record,) = store.runs()
        return {e.candidate.reference: e for e in store.references(record.id)}


def test_references_are_journaled_apart_and_failures_kept(run_dir) -> None:
    refs = _references(run_dir)
    assert set(refs) == CPU_RECIPES
    for name in ("nncf-default", "nncf-default-f32"):  # openvino is not a backend of the device
        assert not refs[name].ok and refs[name].error_kind == "compile"
        assert "openvino" in refs[name].error
    for name in ("ort-quantize-static", "ort-x86", CONTROL):
        assert refs[name].ok, refs[name].error
        assert Path(refs[name].artifact).is_relative_to(run_dir / "references")
    assert refs["ort-x86"].precision.startswith("int8")
    assert refs[CONTROL].candidate.pipeline.steps[0].kind == "Tr"
    quant = json.loads((Path(refs["ort-quantize-static"].artifact) / "manifest.json").read_text())
    assert quant["quantization"]["recipe"] == "ort-defaults"
    assert quant["quantization"]["per_channel"] is False
    with Store(run_dir / JOURNAL_NAME) as store:
        (record,) = store.runs()
        ids = {e.candidate.id for e in store.evaluations(record.id)}
        _, state = store.load_state(record.id)
    assert not any(i.startswith("ref-") for i in ids)  # never a candidate ...
    told = [*state["archive"], *state.get("survivors", [])]  # ... nor told to the strategy
    assert told and all(e["candidate"]["reference"] is None for e in told)


def test_resume_does_not_rebuild_references(run_dir) -> None:
    refs = _references(run_dir)
    stamps = {
        n: (Path(e.artifact) / "manifest.json").stat().st_mtime_ns for n, e in refs.items() if e.ok
    }
    assert main(["tune", "--resume", str(run_dir)]) == 0
    again = _references(run_dir)
    assert set(again) == set(refs)
    for name, stamp in stamps.items():
        assert (Path(again[name].artifact) / "manifest.json").stat().st_mtime_ns == stamp


def test_report_shows_references_and_budget(run_dir) -> None:
    from petra_hw.report.build import build_document
    from petra_hw.report.schema import validate

    doc = build_document([run_dir])
    assert validate(doc)
    (run,) = doc["runs"]
    assert {r["reference"] for r in run["references"]} == CPU_RECIPES
    assert all(r["id"] not in run["front"] for r in run["references"])
    assert run["quality_budget"] == pytest.approx(0.01)
    assert [v["objective"] for v in run["value"]] == ["latency_ms", "size_bytes", "throughput_ips"]
    for ev in run["evaluations"]:
        if ev["ok"]:
            drop = ev["normalized"]["quality"]
            assert ev["over_budget"] == (drop > 0.01 + 1e-12)
    assert main(["report", str(run_dir)]) == 0
    md = (run_dir / "report" / "report.md").read_text()
    html = (run_dir / "report" / "report.html").read_text()
    for text in (md, html):
        assert "ref: ort-x86" in text and "ref: nncf-default" in text
    assert "vs the best peer" in md


def test_export_best_latency_picks_the_fastest_within_budget(run_dir, tmp_path) -> None:
    from petra_hw.report.build import build_run

    run = build_run(run_dir)
    pool = [
        e
        for e in run["evaluations"]
        if e["on_front"] and e["ok"] and e["normalized"]["quality"] <= run["quality_budget"]
    ]
    # ranked on the final interleaved re-measurement, not on the journal
    final = run["stats"]["remeasured_final"]
    assert run["value_figures"]["source"] == "re-measured"
    remeasured = {i: row["latency_ms"] for i, row in final["front"].items()}
    remeasured[final["original_id"]] = final["original_latency_ms"]
    fastest = min(pool, key=lambda e: remeasured[e["id"]])
    assert main(["export", str(run_dir), "--best", "latency", "--out", str(tmp_path / "d")]) == 0
    (folder,) = (tmp_path / "d").glob("*/*-*")
    assert folder.name.endswith(fastest["id"])
    assert main(["export", str(run_dir), "--best", "speed", "--out", str(tmp_path / "e")]) == 2


def _ev(q: float, latency: float, size: float = 1e5, ref: str | None = None) -> Evaluation:
    pipeline = Pipeline.parse("Pr(ratio=0.5)") if ref is None else Pipeline.make()
    return Evaluation(
        Candidate(pipeline, 1, None, None, ref),
        objectives={"quality_val": q, "latency_ms": latency, "size_bytes": size,
                    "throughput_ips": 1000 / latency},
        quality={"val": q, "test": q},
    )  # fmt: skip


def test_quality_budget_marks_a_planted_over_budget_point() -> None:
    original = _ev(0.90, 1.0, 4e5)
    over = _ev(0.85, 0.2)  # 5.6% drop: fastest, but over a 1% budget
    within = _ev(0.895, 0.4)  # 0.6% drop
    objectives = Objectives(ObjectiveConfig(), original)
    assert not within_budget(over, objectives, 0.01) and within_budget(within, objectives, 0.01)
    peers = [_ev(0.899, 0.8, ref="ort-x86"), _ev(0.80, 0.1, ref="nncf-default")]
    latency, size, _ = compare([original, over, within], peers, objectives, 0.01)
    assert latency.best is within and latency.peer.candidate.reference == "ort-x86"
    assert latency.peer_within_budget and latency.ratio == pytest.approx(2.0)
    assert "0.400 ms vs 0.800 ms (ort-x86): 2.00x" in latency.line()
    no_peer = compare([original, within], peers[1:], objectives, 0.01)[
        0
    ]  # only an over-budget peer
    assert not no_peer.peer_within_budget and "over budget" in no_peer.line()


def test_training_control_flags_an_undertrained_original() -> None:
    original = _ev(0.50, 1.0)
    control = _ev(0.56, 1.0, ref=CONTROL)
    assert "under-trained" in undertrained(original, [control], higher=True)
    assert undertrained(original, [_ev(0.505, 1.0, ref=CONTROL)], higher=True) is None


def test_each_device_class_gets_its_recipes() -> None:
    cpu = {c.reference for c in reference_candidates(False, 3)}
    gpu = {c.reference for c in reference_candidates(True, 3)}
    assert {"ort-quantize-static", "ort-x86", "nncf-default", "nncf-default-f32"} <= cpu
    assert {"tensorrt-fp16", "tensorrt-int8", "ort-cuda-fp16"} <= gpu
    assert CONTROL in cpu and CONTROL in gpu and not cpu & {"tensorrt-fp16"}


def test_interleaved_timing_keeps_every_round(run_dir, digits) -> None:
    from petra_hw.interleaved import measure_interleaved
    from petra_hw.profiles import load_profile

    profile = load_profile(str(next(run_dir.parent.parent.glob("*.toml"))))
    refs = _references(run_dir)
    arts = {n: refs[n].artifact for n in ("ort-x86", CONTROL)}
    timed = measure_interleaved(
        arts, profile, digits.splits.test.inputs().numpy(), (1, 4), rounds=3
    )
    for t in timed.values():
        for b in (1, 4):
            assert len(t.samples_ms[b]) >= 3 * profile.measurement.min_iters
            assert t.p50_ms(b) > 0 and len(t.round_p50_ms(b, 3)) == 3


def test_peers_refuses_an_unknown_device_in_one_line(tmp_path, capsys) -> None:
    assert main(["peers", "--device", "no-such-device", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("petra-hw: error:")


# -- value lines compare re-measured figures ------------------------------------------------------
def _point(q: float, latency: float, pipeline: str = "", ref: str | None = None) -> Evaluation:
    """A planted evaluation with an artifact (so it may be compared) and its own id."""
    return Evaluation(
        Candidate(Pipeline.parse(pipeline) if pipeline else Pipeline.make(), 1, None, None, ref),
        objectives={"quality_val": q, "latency_ms": latency, "size_bytes": 1e5,
                    "throughput_ips": 1000 / latency},
        quality={"val": q, "test": q},
        artifact="planted",
    )  # fmt: skip


def _remeasured(original: Evaluation, latencies: list[tuple[Evaluation, float]]) -> dict:
    """A final re-measurement record as ``search.remeasure`` writes it, with planted figures."""
    record: dict = {
        "rounds": 5,
        "original_id": original.candidate.id,
        "original_latency_ms": 1.0,
        "original_throughput_ips": 1000.0,
        "front": {},
        "references": {},
    }
    for ev, ms in latencies:
        part = "references" if ev.candidate.reference else "front"
        record[part][ev.candidate.id] = {"latency_ms": ms, "throughput_ips": 1000 / ms}
    return record


@pytest.fixture()
def planted():
    """Journaled figures say PTQ wins 2x over ort-x86; the interleaved ones say Pr - PTQ wins
    1.25x (PTQ is slower than the peer there)."""
    original = _point(0.90, 1.0)
    ptq = _point(0.899, 0.4, "PTQ")
    pruned = _point(0.898, 0.5, "Pr(ratio=0.5) - PTQ")
    peer = _point(0.899, 0.8, ref="ort-x86")
    control = _point(0.95, 1.0, "Tr(epochs=3)", ref=CONTROL)
    record = _remeasured(original, [(ptq, 0.9), (pruned, 0.6), (peer, 0.75), (control, 1.1)])
    return original, [original, ptq, pruned], [peer, control], record


def test_value_lines_use_the_re_measured_figures_never_a_mix(planted) -> None:
    from petra_hw.value import REMEASURED, final_figures

    original, front, refs, record = planted
    objectives = Objectives(ObjectiveConfig(), original)
    figures = final_figures(record, front, refs)
    assert figures.source == REMEASURED and "interleaved" in figures.note
    latency, _, throughput = compare(front, refs, objectives, 0.01, figures=figures)
    assert latency.best.candidate.id == front[2].candidate.id  # Pr - PTQ, not PTQ
    assert latency.ratio == pytest.approx(0.75 / 0.6)
    assert "0.600 ms vs 0.750 ms (ort-x86): 1.25x" in latency.line()
    assert throughput.ratio == pytest.approx((1000 / 0.6) / (1000 / 0.75))
    journaled = compare(front, refs, objectives, 0.01)[0]  # what the journal alone would claim
    assert journaled.best is front[1] and journaled.ratio == pytest.approx(2.0)


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        (lambda r: {"skipped": "the run was made with --no-remeasure"}, "--no-remeasure"),
        (lambda r: {"error": "the Original's artifact is not on this machine"}, "failed"),
        (lambda r: None, "no final interleaved re-measurement"),
        # the peer failed to load: its figure would be journaled, so every figure is
        (
            lambda r: {
                **r,
                "references": {},
                "failed": {"ref-ort-x86": "RuntimeError: broken model"},
            },
            "lacks ref: ort-x86 (RuntimeError: broken model)",
        ),
        (lambda r: {**r, "front": {}}, "lacks PTQ"),  # an older record, or a stale one
    ],
)
def test_without_a_complete_re_measurement_all_figures_are_journaled_and_said_so(
    planted, change, reason
) -> None:
    from petra_hw.value import JOURNALED, final_figures

    original, front, refs, record = planted
    figures = final_figures(change(record), front, refs)
    assert figures.source == JOURNALED and reason in figures.note
    assert figures.note.startswith("journaled figures")
    latency = compare(front, refs, Objectives(ObjectiveConfig(), original), 0.01, figures=figures)[
        0
    ]
    assert latency.best is front[1] and latency.ratio == pytest.approx(2.0)


def test_run_best_ranks_on_the_re_measured_figures(planted, tmp_path) -> None:
    from petra_hw.api import Run
    from petra_hw.search.tune import TuneResult

    original, front, refs, record = planted
    objectives = Objectives(ObjectiveConfig(), original)

    def run(final: dict | None) -> Run:
        stats = {"remeasured_final": final}
        return Run(TuneResult("r", tmp_path, original, front, front, objectives, "", stats, refs))

    best = run(record).best("latency")
    assert best is front[2] and best.objectives["latency_ms"] == 0.5  # the journaled evaluation
    assert run(record).best("throughput") is front[2]
    skipped = run({"skipped": "the run was made with --no-remeasure"})
    assert skipped.best("latency") is front[1] and "--no-remeasure" in skipped.figures.note


@contextmanager
def _planted_run(run_dir: Path, final: dict | None, max_quality_drop: float | None = None):
    """The run's journal with ``stats.remeasured_final`` (and the budget) replaced, restored on
    exit: the run's own figures and choices stay what the other tests read."""
    journal = run_dir / JOURNAL_NAME
    conn = sqlite3.connect(journal)
    try:
        run_id, stats, settings = conn.execute("SELECT id, stats, settings FROM runs").fetchone()
        planted_stats = {**json.loads(stats), "remeasured_final": final}
        planted_settings = {**json.loads(settings), "max_quality_drop": max_quality_drop}
        with conn:
            conn.execute(
                "UPDATE runs SET stats=?, settings=? WHERE id=?",
                (json.dumps(planted_stats), json.dumps(planted_settings), run_id),
            )
        yield
    finally:
        with conn:
            conn.execute(
                "UPDATE runs SET stats=?, settings=? WHERE id=?", (stats, settings, run_id)
            )
        conn.close()


def test_the_run_re_measures_its_references_and_reports_on_those_figures(run_dir) -> None:
    from petra_hw.report.build import build_run

    with Store(run_dir / JOURNAL_NAME) as store:
        (record,) = store.runs()
    final = record.stats["remeasured_final"]
    refs = _references(run_dir)
    assert set(final["references"]) == {  # every reference that built: peers and the control
        e.candidate.id for e in refs.values() if e.ok
    }
    assert Path(final["samples_path"]).is_file()
    run = build_run(run_dir)
    assert run["value_figures"]["source"] == "re-measured"
    rows = {
        final["original_id"]: {
            "latency_ms": final["original_latency_ms"],
            "throughput_ips": final["original_throughput_ips"],
        },
        **final["front"],
        **final["references"],
    }
    for v in run["value"]:
        if v["objective"] != "size_bytes" and v["best"] and v["peer"]:
            assert v["best_value"] == pytest.approx(rows[v["best"]][v["objective"]])
            assert v["peer_value"] == pytest.approx(rows[f"ref-{v['peer']}"][v["objective"]])
    assert main(["report", str(run_dir)]) == 0
    for name in ("report.md", "report.html"):
        assert "re-measured interleaved in one process" in (run_dir / "report" / name).read_text()


def test_report_and_export_best_follow_the_re_measured_figures(run_dir, tmp_path, capsys) -> None:
    """Planted figures that reverse the journaled latency order of the front: the report's
    value lines and ``export --best latency`` follow them; without them, the journal, said so."""
    from petra_hw.report.build import build_document, build_run
    from petra_hw.report.schema import validate

    with Store(run_dir / JOURNAL_NAME) as store:
        (record,) = store.runs()
    final = record.stats["remeasured_final"]
    journaled = build_run(run_dir)
    by_id = {e["id"]: e for e in [*journaled["evaluations"], *journaled["references"]]}
    # every ok front point within a 100% budget; their latencies reversed, the peers' kept
    front = sorted(
        (by_id[i] for i in journaled["front"] if by_id[i]["ok"]),
        key=lambda e: e["objectives"]["latency_ms"],
    )
    reversed_ms = [e["objectives"]["latency_ms"] for e in front][::-1]
    planted = {
        **final,
        "front": {e["id"]: {"latency_ms": ms, "throughput_ips": 1000 / ms} for e, ms in
                  zip(front, reversed_ms, strict=True) if e["id"] != final["original_id"]},
    }  # fmt: skip
    original_ms = dict(zip([e["id"] for e in front], reversed_ms, strict=True)).get(
        final["original_id"], final["original_latency_ms"]
    )
    planted["original_latency_ms"] = original_ms
    planted["original_throughput_ips"] = 1000 / original_ms
    assert len(front) >= 2, "the planted swap needs two front points to tell the sources apart"
    fastest = front[-1]["id"]  # slowest in the journal, fastest as planted
    with _planted_run(run_dir, planted, max_quality_drop=1.0):
        run = build_run(run_dir)
        assert validate(build_document([run_dir]))
        assert run["value_figures"]["source"] == "re-measured"
        latency = run["value"][0]
        assert run["best"]["latency_ms"] == latency["best"] == fastest
        assert latency["best_value"] == pytest.approx(front[0]["objectives"]["latency_ms"])
        out = tmp_path / "remeasured"
        capsys.readouterr()
        assert main(["export", str(run_dir), "--best", "latency", "--out", str(out)]) == 0
        (folder,) = out.glob("*/*-*")
        assert folder.name.endswith(fastest)
        said = " ".join(capsys.readouterr().out.split())  # the figures that chose it
        assert f"{fastest}: best latency within the quality budget on figures re-measured" in said
    with _planted_run(run_dir, {"skipped": "the run was made with --no-remeasure"}, 1.0):
        run = build_run(run_dir)
        assert run["value_figures"]["source"] == "journaled"
        assert "--no-remeasure" in run["value_figures"]["note"]
        assert run["best"]["latency_ms"] == front[0]["id"]  # the journal's fastest
        out = tmp_path / "journaled"
        assert main(["export", str(run_dir), "--best", "latency", "--out", str(out)]) == 0
        (folder,) = out.glob("*/*-*")
        assert folder.name.endswith(front[0]["id"])
        assert main(["report", str(run_dir)]) == 0
        md = (run_dir / "report" / "report.md").read_text()
        assert "journaled figures (each timed alone, at its own moment)" in md
        assert "--no-remeasure" in md
