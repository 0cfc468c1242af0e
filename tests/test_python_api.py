"""The Python API with real components: Suite.from_torch, tune (in process, two local workers,
Ray), compile and profile, the README's example, and one clear error for each bad input.

The suite of ``api_suite.make_suite`` is made in Python as a training script makes one; workers
make it again from that reference, never from a pickle.  Tunes are tiny (2 evaluations, the fast
measurement profile, no references).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from api_suite import TinyNet, digits, make_suite
from torch.utils.data import TensorDataset

import petra_hw
from petra_hw.errors import UserError
from petra_hw.search.store import JOURNAL_NAME, Store

ROOT = Path(__file__).resolve().parents[1]
FAST = str(Path(__file__).parent / "data" / "cpu-fast.toml")
TINY = {"evaluations": 2, "references": False}


@pytest.fixture(scope="module")
def suite() -> petra_hw.Suite:
    return make_suite()


def _journaled(run: petra_hw.Run) -> dict:
    with Store(run.run_dir / JOURNAL_NAME) as store:
        return store.get_run(run.run_dir.name).settings


def _all_ok(run: petra_hw.Run) -> None:
    candidates = [e for e in run.evaluations if not e.candidate.variant]  # variants: points
    assert len(candidates) == 3, [e.candidate.pipeline for e in run.evaluations]
    # a no-op (e.g. an LR rank that keeps every layer whole) is recorded data, not a failure
    assert all(e.ok or e.error_kind == "no-op" for e in run.evaluations), [
        (e.error_kind, e.error) for e in run.evaluations
    ]
    assert any(e.ok and e.candidate.pipeline.steps for e in run.evaluations)


def test_from_torch_infers_what_is_unambiguous(suite) -> None:
    splits = suite.load_splits(None)
    assert suite.task == "classification" and suite.num_outputs == 10 and suite.pretrained
    assert suite.input_shape == (1, 8, 8) and suite.metric.name == "accuracy"
    assert [len(splits.by_name(n)) for n in ("train", "val", "test")] == [1100, 350, 347]
    # calib: a seeded sample of train, every class in it (not the first rows of a sorted set)
    assert len(splits.calib) == 512 and len(set(splits.calib.targets().tolist())) == 10
    assert suite.train.batch_size == 64  # the training loader's


def test_tune_in_process_best_report_export(suite, tmp_path) -> None:
    run = petra_hw.tune(suite, device=FAST, out=tmp_path / "runs", **TINY)
    _all_ok(run)
    settings = _journaled(run)
    assert settings["executor"] == "inprocess"  # workers=1 and a suite object: nothing travels
    assert settings["suite"].endswith("api_suite.py:make_suite")
    best = run.best("latency", max_quality_drop=0.5)
    assert best is not None and best in run.front
    assert run.figures.source == "re-measured"  # ranked on the final interleaved figures
    assert run.original.quality["val"] > 0.8  # the user's trained model is the baseline
    assert run.report()["markdown"].is_file()
    [exported] = run.export(tmp_path / "deploy", best="latency")
    outputs = petra_hw.load(exported.path)(np.zeros((2, 1, 8, 8), dtype=np.float32))
    assert np.asarray(outputs).shape == (2, 10)


def test_a_tune_without_the_final_remeasure_says_its_figures_are_journaled(suite, tmp_path) -> None:
    run = petra_hw.tune(suite, device=FAST, out=tmp_path / "runs", **{**TINY, "remeasure": False})
    assert run.result.stats["remeasured_final"] == {
        "skipped": "the run was made with --no-remeasure"
    }
    assert run.figures.source == "journaled" and "--no-remeasure" in run.figures.note
    document = json.loads(run.report()["json"].read_text())
    assert document["runs"][0]["value_figures"] == run.figures.to_json()


def test_python_suite_tunes_with_two_local_workers(suite, tmp_path) -> None:
    run = petra_hw.tune(suite, device=FAST, out=tmp_path / "runs", workers=2, **TINY)
    _all_ok(run)
    assert _journaled(run)["executor"] == "local" and _journaled(run)["workers"] == 2


def test_python_suite_tunes_with_ray(suite, tmp_path, monkeypatch) -> None:
    """petra-hw starts Ray itself and stops it, with Ray's driver metrics off: Ray 2.60 keeps
    their exporter running after ray.shutdown(), a thread every 10 s."""
    ray = pytest.importorskip("ray")
    assert not ray.is_initialized()
    monkeypatch.delenv("RAY_enable_metrics_collection", raising=False)  # conftest sets it
    run = petra_hw.tune(suite, device=FAST, out=tmp_path / "runs", executor="ray", **TINY)
    assert not ray.is_initialized()
    assert os.environ["RAY_enable_metrics_collection"] == "0"
    _all_ok(run)
    assert _journaled(run)["executor"] == "ray"


def test_compile_and_profile(suite, tmp_path) -> None:
    art = petra_hw.compile(suite, "PTQ", device=FAST, backend="onnxruntime", out=tmp_path / "a")
    assert art.path == tmp_path / "a" and art.metrics["precision"] == "int8"
    assert art.metrics["quality_test"] > 0.7 and art.metrics["latency_ms"] > 0
    assert np.asarray(art.runner()(np.zeros((3, 1, 8, 8), dtype=np.float32))).shape == (3, 10)
    m = petra_hw.profile(art.path, device=FAST)
    assert m.backend == "onnxruntime" and m.latency_ms > 0
    [fp32] = petra_hw.profile(
        suite, FAST, backends=["onnxruntime"], precisions=["fp32"], out=tmp_path / "p"
    )
    assert abs(fp32.metrics["quality_test"] - fp32.baseline_metrics["test"]) < 1e-6


def test_readme_example_runs(tmp_path) -> None:
    readme = (ROOT / "README.md").read_text()
    [code] = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "from_torch" in b]
    assert code.count('device="auto"') == 3
    script = tmp_path / "example.py"  # the fast measurement profile instead of this host's
    script.write_text(code.replace('device="auto"', f"device={FAST!r}"))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=1200,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "pr-ptq" / "manifest.json").is_file()
    assert list((tmp_path / "deploy").glob("*/*/manifest.json"))
    assert "(4, 10)" in done.stdout


# -- what cannot travel, and bad inputs ----------------------------------------------------------
NOTEBOOK = """
import torch
from torch.utils.data import TensorDataset
import petra_hw

class Net(torch.nn.Module):  # a notebook's class
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)
    def forward(self, x):
        return self.fc(x)

data = TensorDataset(torch.randn(40, 4), torch.randint(0, 3, (40,)))
suite = petra_hw.Suite.from_torch(Net(), train=data, val=data, test=data)
"""


def test_a_notebook_suite_runs_in_process_only(tmp_path) -> None:
    from petra_hw.api import resolve_suite
    from petra_hw.suite_ref import load_reference

    scope: dict = {"__name__": "__main__"}  # a notebook cell: no module file
    exec(compile(NOTEBOOK, "<cell>", "exec"), scope)
    ref, problem = resolve_suite(scope["suite"])[1:]
    assert problem and "notebook" in problem
    with pytest.raises(UserError, match="cannot travel to worker processes: .*notebook"):
        petra_hw.tune(scope["suite"], device=FAST, out=tmp_path, workers=2, **TINY)
    assert not list(tmp_path.iterdir())  # refused before any run folder
    with pytest.raises(UserError, match="another process"):  # what a worker would meet
        load_reference(ref.replace(ref.rsplit(":", 1)[1], "0>"))


def test_a_notebook_suite_tunes_in_process_and_resumes_with_the_suite_given(
    tmp_path, monkeypatch
) -> None:
    from petra_hw import suite_ref

    scope: dict = {"__name__": "__main__"}
    exec(compile(NOTEBOOK, "<cell>", "exec"), scope)
    run = petra_hw.tune(scope["suite"], device=FAST, out=tmp_path, evaluations=1, references=False)
    candidates = [e for e in run.evaluations if not e.candidate.variant]  # variants: points
    assert all(e.ok for e in run.evaluations) and len(candidates) == 2
    monkeypatch.setattr(suite_ref, "_LOCAL", {})  # a new Python session: the suite is gone
    with pytest.raises(UserError, match="another process"):
        petra_hw.resume(run.run_dir)
    again = petra_hw.resume(run.run_dir, suite=scope["suite"])
    assert [e.candidate.id for e in again.evaluations] == [e.candidate.id for e in run.evaluations]


SCRIPT = """
import torch
from torch.utils.data import TensorDataset
import petra_hw
from petra_hw.api import resolve_suite

data = TensorDataset(torch.rand(20, 4), torch.randint(0, 3, (20,)))
{top}
if __name__ == "__main__":
    {guarded}
    RESULT = resolve_suite(suite)[1:]
"""
MAKE = "suite = petra_hw.Suite.from_torch(torch.nn.Linear(4, 3), train=data, val=data, test=data)"


@pytest.mark.parametrize("guarded", [False, True])
def test_a_script_suite_travels_unless_made_under_the_main_guard(tmp_path, guarded) -> None:
    import runpy

    script = tmp_path / "train.py"
    script.write_text(SCRIPT.format(top="" if guarded else MAKE, guarded=MAKE if guarded else ""))
    ref, problem = runpy.run_path(str(script), run_name="__main__")["RESULT"]
    if guarded:  # a worker importing train.py would not get `suite`: refused up front
        assert "`suite` is set under `if __name__ == '__main__':`" in problem
    else:
        assert problem is None and ref == f"{script}:suite"


def _made_with_arguments(n: int) -> petra_hw.Suite:
    data = TensorDataset(torch.rand(n, 1, 8, 8), torch.randint(0, 10, (n,)))
    return petra_hw.Suite.from_torch(TinyNet(), train=data, val=data, test=data)


def test_a_suite_from_a_function_with_arguments_cannot_travel(tmp_path) -> None:
    with pytest.raises(UserError, match=r"`_made_with_arguments\(...\)`, which takes arguments"):
        petra_hw.tune(_made_with_arguments(20), device=FAST, out=tmp_path, workers=2, **TINY)


def _bad(**change):
    train, val, test = digits()
    args = {"train": train, "val": val, "test": test, **change}
    return petra_hw.Suite.from_torch(args.pop("model", TinyNet()), **args)


PAIRS = TensorDataset(torch.rand(8, 1, 8, 8), torch.rand(8, 3))  # float targets, 3 per sample


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"model": "resnet"}, "model must be a torch.nn.Module"),
        ({"train": [1, 2, 3]}, "split 'train' must be a torch Dataset or DataLoader, not list"),
        ({"val": TensorDataset(torch.rand(4, 1, 8, 8))}, "split 'val' must yield \\(input, target\\)"),
        ({"test": TensorDataset(torch.rand(0, 1, 8, 8), torch.zeros(0))}, "split 'test' is empty"),
        ({"test": TensorDataset(torch.rand(4, 64), torch.zeros(4))}, "split 'test' has inputs of shape"),
        ({"metric": "f1"}, "unknown metric 'f1'"),
        ({"metric": lambda o, t: 0.0}, "callable metric needs higher_is_better"),
        ({"example_input": torch.zeros(1, 3, 8, 8)}, "example_input has shape"),
        ({"model": torch.nn.Linear(3, 3)}, "the model fails on example_input"),
        ({"task": "ranking"}, "unknown task 'ranking'"),
        ({"task": "embedding"}, "task 'embedding' needs loss"),
        ({"train": PAIRS, "val": PAIRS, "test": PAIRS}, "classification needs integer class targets"),
        (
            {"train": PAIRS, "val": PAIRS, "test": PAIRS, "metric": lambda o, t: 0.0,
             "higher_is_better": True},
            "cannot tell the task .* pass task=",
        ),
    ],
)  # fmt: skip
def test_bad_inputs_are_one_clear_error(change, message) -> None:
    with pytest.raises(UserError, match=message) as caught:
        _bad(**change)
    assert "\n" not in str(caught.value)


def test_a_failing_dataset_is_one_line() -> None:
    class Broken(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int):
            raise KeyError(f"no image {i}")

    with pytest.raises(UserError, match="reading split 'val' raised KeyError: 'no image 0'"):
        _bad(val=Broken())


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"mode": "untrained"}, "mode 'untrained' needs a suite that trains its model"),
        ({"evaluatons": 2}, "unknown tune option 'evaluatons'"),
        ({"budget": "ten minutes"}, "bad budget 'ten minutes'"),
        ({"max_quality_drop": -0.1}, "max_quality_drop must be >= 0"),
    ],
)
def test_bad_tune_options_are_refused_before_any_work(suite, tmp_path, options, message) -> None:
    with pytest.raises(UserError, match=message):
        petra_hw.tune(suite, device=FAST, out=tmp_path, **options)
    assert not list(tmp_path.iterdir())


def test_cli_takes_a_suite_reference(tmp_path, capsys) -> None:
    from petra_hw.cli import main

    ref = f"{Path(__file__).parent / 'api_suite.py'}:make_suite"
    args = ["compile", "--suite", ref, "--pipeline", "PTQ", "--device", FAST]
    assert main([*args, "--backend", "onnxruntime", "--out", str(tmp_path / "a")]) == 0
    assert "int8" in capsys.readouterr().out
    assert main(["compile", "--suite", "api_suite.py:nothing", "--pipeline", "PTQ"]) == 2
    assert "no file api_suite.py" in capsys.readouterr().err
