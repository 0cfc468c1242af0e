"""Hardware profiles: what a target device runs and how to measure on it.

Profiles are TOML files in the ``profiles`` package (``profiles/*.toml`` in a checkout, the same
files inside an installed wheel) or any path the user gives.  ``--device auto`` picks the matching
profile of highest priority: GPUs are recognised by NVML name, CPUs by /proc/cpuinfo model name.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import platform
import re
import tomllib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from petra_hw.errors import UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MeasureSettings:
    warmup_iters: int = 10
    min_iters: int = 30
    min_time_s: float = 1.0
    max_time_s: float = 10.0
    max_cv: float = 0.25
    repeats_if_noisy: int = 2
    fresh_process: bool = False
    # Repeatability (petra_hw.profiler.time_repeats): each batch size is timed in ``repeats``
    # loops whose p50s' median is reported; batch 1 gets ``latency_time_factor`` x the minimum
    # time; ``pin_threads`` pins the process's threads to fixed cores while timing.
    repeats: int = 3
    latency_time_factor: float = 2.0
    pin_threads: bool = True


@dataclass(frozen=True)
class MatchRule:
    cpu_model: str = ""  # regex on /proc/cpuinfo "model name"
    gpu_name: str = ""  # regex on the NVML device name
    arch: str = ""  # platform.machine()
    priority: int = 0


@dataclass(frozen=True)
class DeviceProfile:
    name: str
    description: str
    device_kind: str  # "cpu" | "gpu"
    backends: tuple[str, ...]
    precisions: tuple[str, ...]
    threads: int
    batch_sizes: tuple[int, ...]
    channel_multiple: int
    expected_cores: int
    measurement: MeasureSettings
    match: MatchRule
    nvml: bool = False
    source: str = ""
    notes: tuple[str, ...] = field(default_factory=tuple)
    # The optional ``[backend]`` tables (compiler settings that depend on the device), by backend.
    backend_settings: dict[str, dict[str, object]] = field(default_factory=dict)

    @property
    def is_gpu(self) -> bool:
        return self.device_kind == "gpu"

    def effective_threads(self) -> int:
        """Threads to pin: the profile's, capped by the cores this machine has."""
        cores = os.cpu_count() or 1
        return cores if self.threads <= 0 else min(self.threads, cores)

    def to_json(self) -> dict:
        from dataclasses import asdict

        return asdict(self)


def _profile_files() -> dict[str, Path]:
    root = resources.files("profiles")
    return {Path(str(p)).stem: Path(str(p)) for p in root.iterdir() if str(p).endswith(".toml")}


def profile_names() -> list[str]:
    return sorted(_profile_files())


def _parse(path: Path) -> DeviceProfile:
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"malformed profile TOML {path}: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read profile {path}: {getattr(exc, 'strerror', exc)}") from None
    validate_profile(data, path)
    try:
        kind = data["device_kind"]
        if kind not in ("cpu", "gpu"):
            raise UserError(f"profile {path}: device_kind must be 'cpu' or 'gpu', not {kind!r}")
        return DeviceProfile(
            name=str(data["name"]),
            description=str(data.get("description", "")),
            device_kind=kind,
            backends=tuple(data["backends"]),
            precisions=tuple(data["precisions"]),
            threads=int(data.get("threads", 0)),
            batch_sizes=tuple(int(b) for b in data.get("batch_sizes", [1])),
            channel_multiple=int(data.get("channel_multiple", 1)),
            expected_cores=int(data.get("expected_cores", 0)),
            measurement=MeasureSettings(**data.get("measurement", {})),
            match=MatchRule(**data.get("match", {})),
            nvml=bool(data.get("nvml", False)),
            source=str(path),
            backend_settings=_backend_tables(data),
        )
    except KeyError as exc:
        raise UserError(f"profile {path}: missing key {exc}") from None
    except (TypeError, ValueError) as exc:
        raise UserError(f"profile {path}: {exc}") from None


def _schema() -> dict:
    """The profile TOML's schema: types, ranges and known keys; one optional table per backend."""
    from petra_hw.backend import backend_names

    def integer(low: int, high: int = 1 << 20) -> dict:
        return {"type": "integer", "minimum": low, "maximum": high}

    def number(low: float, high: float, exclusive: bool = False) -> dict:
        bound = "exclusiveMinimum" if exclusive else "minimum"
        return {"type": "number", bound: low, "maximum": high}

    names = backend_names()
    return {
        "type": "object",
        "required": ["name", "device_kind", "backends", "precisions"],
        "additionalProperties": False,
        "properties": {
            "name": {"type": "string", "minLength": 1},
            "description": {"type": "string"},
            "device_kind": {"enum": ["cpu", "gpu"]},
            "backends": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"enum": names},
            },
            "precisions": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": {"enum": ["fp32", "fp16", "bf16", "int8"]},
            },
            "threads": integer(0, 4096),
            "batch_sizes": {
                "type": "array",
                "minItems": 1,
                "uniqueItems": True,
                "items": integer(1, 1 << 16),
            },
            "channel_multiple": integer(1, 1024),
            "expected_cores": integer(0, 4096),
            "nvml": {"type": "boolean"},
            "measurement": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "warmup_iters": integer(0, 1 << 20),
                    "min_iters": integer(1, 1 << 20),
                    "min_time_s": number(0.0, 3600.0),
                    "max_time_s": number(0.0, 86400.0, exclusive=True),
                    "max_cv": number(0.0, 1e6, exclusive=True),
                    "repeats_if_noisy": integer(0, 100),
                    "fresh_process": {"type": "boolean"},
                },
            },
            "match": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "cpu_model": {"type": "string"},
                    "gpu_name": {"type": "string"},
                    "arch": {"type": "string"},
                    "priority": integer(-1000, 1000),
                },
            },
            **{name: {"type": "object"} for name in names},  # backend compiler settings
        },
    }


def _non_finite(value: object, where: str = "") -> str | None:
    """The dotted key of the first NaN or infinite number (TOML has ``nan`` and ``inf``)."""
    if isinstance(value, float) and not math.isfinite(value):
        return where or "(top level)"
    if isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list):
        items = ((str(i), v) for i, v in enumerate(value))
    else:
        return None
    for key, item in items:
        found = _non_finite(item, f"{where}.{key}" if where else str(key))
        if found:
            return found
    return None


def validate_profile(data: dict, path: Path) -> None:
    """Refuse a profile with an unknown key or a value of the wrong type or range, naming it,
    before any work is done with it."""
    import jsonschema

    bad = _non_finite(data)
    if bad:
        raise UserError(f"profile {path}: '{bad}' must be a finite number")
    validator = jsonschema.Draft202012Validator(_schema())
    error = jsonschema.exceptions.best_match(validator.iter_errors(data))
    if error is None:
        return
    key = ".".join(str(p) for p in error.absolute_path)
    if error.validator == "required":
        missing = next(k for k in error.validator_value if k not in error.instance)
        raise UserError(f"profile {path}: missing key '{f'{key}.' if key else ''}{missing}'")
    if error.validator == "additionalProperties":
        extra = sorted(set(error.instance) - set(error.schema.get("properties", {})))
        where = f"{key}.{extra[0]}" if key else extra[0]
        raise UserError(f"profile {path}: unknown key '{where}'")
    raise UserError(f"profile {path}: bad value for '{key or '(top level)'}': {error.message}")


def _backend_tables(data: dict) -> dict[str, dict[str, object]]:
    """The ``[backend]`` tables, read once with the profile (backends never re-read the TOML)."""
    return {
        k: dict(v)
        for k, v in data.items()
        if isinstance(v, dict) and k not in ("measurement", "match")
    }


def load_profile(name_or_path: str) -> DeviceProfile:
    """A profile by name (``epyc9124``), by path (``my.toml``), or ``auto``."""
    if name_or_path == "auto":
        return detect_profile()
    path = Path(name_or_path)
    if name_or_path.endswith(".toml") or path.is_file():
        if not path.is_file():
            raise UserError(f"profile file not found: {name_or_path}")
        profile = _parse(path)
    else:
        files = _profile_files()
        if name_or_path not in files:
            raise UserError(
                f"unknown device '{name_or_path}' (profiles: {', '.join(sorted(files))}, auto, "
                "or a path to a .toml)"
            )
        profile = _parse(files[name_or_path])
    return profile


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpu_names() -> list[str]:
    """NVML device names; empty when there is no NVIDIA driver (NVMLError_LibraryNotFound)."""
    try:
        import pynvml
    except ImportError:
        return []
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        log.debug("no NVML: %s", exc)
        return []
    try:
        names = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            name = pynvml.nvmlDeviceGetName(pynvml.nvmlDeviceGetHandleByIndex(i))
            names.append(name.decode() if isinstance(name, bytes) else name)
        return names
    finally:
        pynvml.nvmlShutdown()


def matches(profile: DeviceProfile, cpu: str, gpus: list[str], arch: str) -> bool:
    rule = profile.match
    if rule.gpu_name:
        return any(re.search(rule.gpu_name, g, re.I) for g in gpus)
    if rule.cpu_model:
        return re.search(rule.cpu_model, cpu, re.I) is not None
    if rule.arch:
        return re.fullmatch(rule.arch, arch) is not None
    return False


def detect_profile() -> DeviceProfile:
    """The matching profile of highest priority; a GPU pick carries a note naming the GPU and the
    profile (the generic ``nvidia-gpu`` one when no profile names this GPU)."""
    cpu, gpus, arch = cpu_model(), gpu_names(), platform.machine()
    found = [p for p in map(load_profile, profile_names()) if matches(p, cpu, gpus, arch)]
    if not found:
        raise UserError(f"no profile matches this machine (CPU {cpu!r}, GPUs {gpus or 'none'})")
    best = max(found, key=lambda p: p.match.priority)
    if not best.is_gpu:
        return best
    gpu = next(g for g in gpus if re.search(best.match.gpu_name, g, re.I))
    note = f"--device auto picked profile {best.name} ({best.description}) for GPU {gpu!r}"
    return dataclasses.replace(best, notes=(*best.notes, note))


def check_host(profile: DeviceProfile) -> list[str]:
    """Refuse a GPU profile on a host without that GPU; note fewer cores than expected."""
    notes: list[str] = list(profile.notes)
    if profile.is_gpu:
        gpus = gpu_names()
        if not matches(profile, cpu_model(), gpus, platform.machine()):
            have = ", ".join(gpus) if gpus else "no NVIDIA GPU (NVML not found)"
            raise UserError(
                f"device '{profile.name}' needs a GPU matching '{profile.match.gpu_name}'; "
                f"this host has {have}"
            )
    cores = os.cpu_count() or 1
    if profile.expected_cores and cores < profile.expected_cores:
        notes.append(
            f"profile {profile.name} expects {profile.expected_cores} cores; this host has "
            f"{cores}, so {profile.effective_threads()} threads are used"
        )
    return notes
