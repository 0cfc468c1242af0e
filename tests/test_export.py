"""``petra-hw export``: deployable folders that load in a fresh process, away from the run."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest

from petra_hw.cli import main

LOAD = """
import sys
import numpy as np
import petra_hw

runner = petra_hw.load(sys.argv[1])
y = runner(np.zeros((2, 1, 8, 8), dtype=np.float32))
print(y.shape)
"""


@pytest.fixture(scope="module")
def tiny(tiny_run):
    """The run the report tests use too (``conftest.tiny_run``); export takes its front only."""
    return tiny_run


@pytest.fixture(scope="module")
def deployed(tiny, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "deploy"
    assert main(["export", str(tiny.run_dir), "--front", "--out", str(out)]) == 0
    return out


def test_one_folder_per_device_and_front_pipeline(deployed, tiny) -> None:
    folders = sorted(p for p in (deployed / "cpu-fast").iterdir())
    assert {f.name.rsplit("-", 1)[1] for f in folders} == {e.candidate.id for e in tiny.front}
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        assert {p.name for p in folder.iterdir()} == {
            *manifest["files"],
            *manifest["aux_files"],  # README.md and the raw timing samples, listed and hashed
            "manifest.json",
            "manifest.digest",
        }
        assert "README.md" in manifest["aux_files"]
        readme = (folder / "README.md").read_text()
        assert "petra_hw.load(" in readme
        runtime = {
            "onnxruntime": "ort.InferenceSession(",
            "openvino": "compile_model(",
            "torch": "torch.export.load(",
        }[manifest["backend"]]
        assert runtime in readme
    assert (deployed / "README.md").is_file()


def test_exported_artifact_loads_in_a_fresh_process_elsewhere(deployed, tmp_path) -> None:
    for folder in (deployed / "cpu-fast").iterdir():
        moved = tmp_path / folder.name
        shutil.copytree(folder, moved)
        proc = subprocess.run(
            [sys.executable, "-c", LOAD, str(moved)],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "(2, 10)"


def test_readme_plain_runtime_recipe_runs(deployed, tmp_path) -> None:
    """The README's 'with <runtime> alone' block, run as written inside the folder."""
    for folder in (deployed / "cpu-fast").iterdir():
        readme = (folder / "README.md").read_text()
        block = re.search(r"alone \(run it in this folder\)\n\n```python\n(.*?)```", readme, re.S)
        assert block is not None, readme
        code = block.group(1) + "\nprint(y.shape)\n"
        proc = subprocess.run(
            [sys.executable, "-c", code], cwd=folder, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == "(1, 10)"


def test_export_never_overwrites_a_non_empty_out(tiny, tmp_path, capsys) -> None:
    out = tmp_path / "deploy"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", str(tiny.run_dir), "--out", str(out)]) == 2
    assert "not empty" in capsys.readouterr().err
    assert [p.name for p in out.iterdir()] == ["keep.txt"]


def test_export_one_candidate_by_id_prefix(tiny, tmp_path) -> None:
    original = tiny.original.candidate.id
    out = tmp_path / "one"
    assert main(["export", str(tiny.run_dir), "--candidate", original[:6], "--out", str(out)]) == 0
    (folder,) = (out / "cpu-fast").iterdir()
    assert folder.name == f"original-{original}"
    assert (
        main(["export", str(tiny.run_dir), "--candidate", "zz", "--out", str(tmp_path / "x")]) == 2
    )
