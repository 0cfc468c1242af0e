"""Artifacts: a self-contained folder of model file(s) plus ``manifest.json``.

The manifest names the pipeline, backend, precision, input spec, the sha256 of *every* file in
the folder (the model files under ``files``, anything else, such as raw timing samples, under
``aux_files``), the environment it was compiled on, and (once measured) its metrics.  The manifest
is sealed by ``manifest.digest`` (see ``petra_hw.integrity``).  Loading checks, in this order: the
seal, the manifest's schema (a refusal names the field), that every file in the folder is listed
and every listed file is there, and every hash; so a truncated, swapped or tampered artifact is
refused instead of silently measured.

Writes are atomic and the seal is written last: a compile killed at any instant leaves either a
complete artifact or a folder that ``read_artifact`` refuses.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema

from petra_hw import integrity
from petra_hw.errors import ArtifactError
from petra_hw.fsutil import atomic_write

MANIFEST = "manifest.json"
DIGEST = "manifest.digest"
SCHEMA_VERSION = 2  # 2: every file listed (aux_files) and the manifest sealed
PRECISIONS = ("fp32", "fp16", "bf16", "int8")

_SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}
_NAME = "^(?!/)(?!.*(^|/)\\.\\.(/|$))[^\\\\]+$"  # relative, no "..", no backslash
MANIFEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["schema_version", "backend", "precision", "files", "input"],
    "properties": {
        "schema_version": {"type": "integer"},
        "backend": {"type": "string", "minLength": 1},
        "precision": {"enum": list(PRECISIONS)},
        "files": {
            "type": "object",
            "minProperties": 1,
            "propertyNames": {"pattern": _NAME},
            "additionalProperties": _SHA256,
        },
        "aux_files": {
            "type": "object",
            "propertyNames": {"pattern": _NAME},
            "additionalProperties": _SHA256,
        },
        "input": {
            "type": "object",
            "required": ["name", "shape"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "minLength": 1},
                "shape": {
                    "type": "array",
                    "minItems": 2,
                    "maxItems": 8,
                    "prefixItems": [{"type": ["integer", "null"], "minimum": 1}],
                    "items": {"type": "integer", "minimum": 1, "maximum": 1 << 20},
                },
                "dtype": {"enum": ["float32"]},
            },
        },
        "pipeline": {"type": ["object", "null"]},
        "size_bytes": {"type": "integer", "minimum": 0},
        "environment": {"type": "object"},
        "metrics": {
            "type": "object",
            "properties": {
                "quality": {"type": "object", "additionalProperties": {"type": ["number", "null"]}},
                "parity": {"type": "object"},
                "measurement": {"type": "object"},
            },
        },
        "op_counts": {"type": "object"},
    },
}
_VALIDATOR = jsonschema.Draft202012Validator(MANIFEST_SCHEMA)


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
        """The model files (what ``size_bytes`` counts), name -> sha256."""
        return self.manifest["files"]

    @property
    def all_files(self) -> dict[str, str]:
        """Every file of the folder but the manifest and its seal, name -> sha256."""
        return {**self.manifest.get("aux_files", {}), **self.files}

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
        _write_manifest(self.path, manifest)
        return Artifact(self.path, manifest)

    def add_file(self, name: str, data: bytes) -> Artifact:
        """Write an auxiliary file into the artifact and list it (hashed) in the manifest."""
        atomic_write(self.path / name, data)
        aux = {**self.manifest.get("aux_files", {}), name: hashlib.sha256(data).hexdigest()}
        return self.update(aux_files=aux)


def _write_manifest(folder: Path, manifest: dict) -> None:
    """Manifest first, seal last: a crash in between leaves a seal that refuses the folder."""
    text = json.dumps(manifest, indent=2, sort_keys=True, default=str)
    atomic_write(folder / MANIFEST, text.encode())
    atomic_write(folder / DIGEST, (integrity.seal(json.loads(text)) + "\n").encode())


def _folder_files(folder: Path) -> set[str]:
    """Every entry below ``folder`` (relative posix paths), manifest and seal excluded."""
    names = set()
    for p in folder.rglob("*"):
        if p.is_dir() and not p.is_symlink():
            continue
        names.add(p.relative_to(folder).as_posix())
    return names - {MANIFEST, DIGEST}


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
    """Hash ``files`` (the model, relative to ``out_dir``) and every other file already in the
    folder (``aux_files``, e.g. a TensorRT timing cache), then write and seal the manifest."""
    from petra_hw.fingerprint import fingerprint

    out_dir = Path(out_dir)
    aux = sorted(_folder_files(out_dir) - set(files))
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "backend": backend,
        "precision": precision,
        "files": {f: sha256_file(out_dir / f) for f in files},
        "aux_files": {f: sha256_file(out_dir / f) for f in aux},
        "input": input_spec.to_json(),
        "pipeline": pipeline,
        "environment": fingerprint(),
        **(extra or {}),
    }
    _write_manifest(out_dir, manifest)
    return Artifact(out_dir, manifest)


def validate_manifest(manifest: object, where: str) -> dict[str, Any]:
    """Refuse a manifest of another schema version or one that breaks the schema, naming the
    field."""
    if not isinstance(manifest, dict):
        raise ArtifactError(f"{where}: {MANIFEST} is not a JSON object")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        raise ArtifactError(
            f"{where}: manifest schema_version {version!r} is not supported (this petra-hw reads "
            f"{SCHEMA_VERSION}; recompile the artifact)"
        )
    error = jsonschema.exceptions.best_match(_VALIDATOR.iter_errors(manifest))
    if error is not None:
        field = ".".join(str(p) for p in error.absolute_path) or "(top level)"
        raise ArtifactError(f"{where}: invalid manifest field '{field}': {error.message}")
    return manifest


def read_artifact(path: str | Path, verify: bool = True) -> Artifact:
    """Read an artifact folder: its seal, schema and file list always; with ``verify`` also every
    file's sha256."""
    folder = Path(path)
    mf = folder / MANIFEST
    if not mf.is_file():
        raise ArtifactError(f"not an artifact: {folder} has no {MANIFEST}")
    try:
        manifest = json.loads(mf.read_text())
        sealed = (folder / DIGEST).read_text()
    except FileNotFoundError:
        raise ArtifactError(f"artifact {folder}: no {DIGEST} (incomplete or tampered)") from None
    except (json.JSONDecodeError, UnicodeDecodeError, OSError) as exc:
        raise ArtifactError(f"corrupt manifest in {folder}: {exc}") from None
    where = f"artifact {folder}"
    integrity.verify(manifest, sealed, where)
    validate_manifest(manifest, where)
    artifact = Artifact(folder, manifest)
    listed = artifact.all_files
    unlisted = sorted(_folder_files(folder) - set(listed))
    if unlisted:
        raise ArtifactError(f"{where}: file {unlisted[0]} is not listed in its manifest; refused")
    root = folder.resolve()
    for name, digest in listed.items():
        target = (folder / name).resolve()
        if root not in target.parents:
            raise ArtifactError(f"{where}: file {name!r} points outside the folder")
        if not target.is_file():
            raise ArtifactError(f"{where}: missing file {name}")
        if verify and sha256_file(target) != digest:
            raise ArtifactError(f"{where}: {name} does not match its sha256 (tampered?)")
    return artifact
