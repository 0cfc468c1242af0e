"""Artifacts: a self-contained folder of model file(s) plus ``manifest.json``.

The manifest names the pipeline, backend, precision, input spec, the sha256 of every file, the
environment it was compiled on, and (once measured) its metrics.  Loading verifies every hash, so
a truncated or tampered artifact is refused instead of silently measured.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petra_hw.errors import ArtifactError

MANIFEST = "manifest.json"
SCHEMA_VERSION = 1


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class InputSpec:
    """The model's single input: name, shape with ``None`` for the dynamic batch, dtype."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str = "float32"

    def to_json(self) -> dict:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype}

    @staticmethod
    def from_json(d: dict) -> InputSpec:
        return InputSpec(d["name"], tuple(d["shape"]), d.get("dtype", "float32"))

    def sample_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, *(int(s) for s in self.shape[1:]))


@dataclass(frozen=True)
class Artifact:
    path: Path
    manifest: dict[str, Any]

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def files(self) -> dict[str, str]:
        return self.manifest["files"]

    @property
    def input_spec(self) -> InputSpec:
        return InputSpec.from_json(self.manifest["input"])

    @property
    def size_bytes(self) -> int:
        """Bytes on disk of the model files (the manifest itself excluded)."""
        return sum((self.path / f).stat().st_size for f in self.files)

    def file(self, name: str) -> Path:
        return self.path / name

    def update(self, **fields: Any) -> Artifact:
        """Add measured fields (metrics, parity, op counts) to the manifest on disk."""
        manifest = {**self.manifest, **fields}
        _write_json(self.path / MANIFEST, manifest)
        return Artifact(self.path, manifest)


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str))
    os.replace(tmp, path)


def write_artifact(
    out_dir: Path,
    *,
    backend: str,
    precision: str,
    files: list[str],
    input_spec: InputSpec,
    pipeline: dict | None = None,
    extra: dict | None = None,
) -> Artifact:
    """Hash ``files`` (relative to ``out_dir``) and write the manifest next to them."""
    from petra_hw.fingerprint import fingerprint

    out_dir = Path(out_dir)
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "backend": backend,
        "precision": precision,
        "files": {f: sha256_file(out_dir / f) for f in files},
        "input": input_spec.to_json(),
        "pipeline": pipeline,
        "environment": fingerprint(),
        **(extra or {}),
    }
    _write_json(out_dir / MANIFEST, manifest)
    return Artifact(out_dir, manifest)


def read_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read an artifact folder; with ``verify`` every file's sha256 must match the manifest."""
    folder = Path(path)
    mf = folder / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"not an artifact: {folder} has no {MANIFEST}")
    try:
        manifest = json.loads(mf.read_text())
        files = manifest["files"]
        manifest["backend"], manifest["precision"], manifest["input"]  # noqa: B018
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise ArtifactError(f"corrupt manifest in {folder}: {exc}") from None
    root = folder.resolve()
    for name, digest in files.items():
        target = (folder / name).resolve()
        if root not in target.parents:
            raise ArtifactError(f"artifact {folder}: file {name!r} points outside the folder")
        if not target.is_file():
            raise ArtifactError(f"artifact {folder}: missing file {name}")
        if verify and sha256_file(target) != digest:
            raise ArtifactError(f"artifact {folder}: {name} does not match its sha256 (tampered?)")
    return Artifact(folder, manifest)
