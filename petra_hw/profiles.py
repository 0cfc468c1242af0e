"""Hardware profiles: what a target device runs and how to measure on it.

Profiles are TOML files in the ``profiles`` package (``profiles/*.toml`` in a checkout, the same
files inside an installed wheel) or any path the user gives.  ``--device auto`` picks the matching
profile of highest priority: GPUs are recognised by NVML name, CPUs by /proc/cpuinfo model name.
"""

from __future__ import annotations

import logging
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
    except OSError as exc:
        raise UserError(f"cannot read profile {path}: {exc.strerror}") from None
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
    cpu, gpus, arch = cpu_model(), gpu_names(), platform.machine()
    found = [p for p in map(load_profile, profile_names()) if matches(p, cpu, gpus, arch)]
    if not found:
        raise UserError(f"no profile matches this machine (CPU {cpu!r}, GPUs {gpus or 'none'})")
    return max(found, key=lambda p: p.match.priority)


def check_host(profile: DeviceProfile) -> list[str]:
    """Refuse a GPU profile on a host without that GPU; note fewer cores than expected."""
    notes: list[str] = []
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
