"""Reference points (one-shot peers and the training control), the quality budget, export --best.

One real run on digits builds them on a profile without OpenVINO, so the two NNCF peers fail for
real (their backend is not the device's) while the ORT peers and the control are measured.
"""

from __future__ import annotations

import json
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
    fastest = min(pool, key=lambda e: e["objectives"]["latency_ms"])
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
    timed = measure_interleaved(arts, profile, digits.splits.test.x.numpy(), (1, 4), rounds=3)
    for t in timed.values():
        for b in (1, 4):
            assert len(t.samples_ms[b]) >= 3 * profile.measurement.min_iters
            assert t.p50_ms(b) > 0 and len(t.round_p50_ms(b, 3)) == 3


def test_peers_refuses_an_unknown_device_in_one_line(tmp_path, capsys) -> None:
    assert main(["peers", "--device", "no-such-device", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("petra-hw: error:")
