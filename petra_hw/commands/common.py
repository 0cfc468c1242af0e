"""Arguments and set-up shared by subcommands (suite, device, data dir, seed)."""

from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import shutil
from collections.abc import Iterator
from pathlib import Path

from petra_hw.console import console, errors


def add_suite_args(p: argparse.ArgumentParser, default_suite: str | None = None) -> None:
    p.add_argument(
        "--suite",
        default=default_suite,
        required=default_suite is None,
        help="bundled suite name or path to a suite.py",
    )
    p.add_argument("--device", default="auto", help="profile name, path to a .toml, or auto")
    p.add_argument("--data-dir", type=Path, default=None, help="where suites look for data files")
    p.add_argument("--seed", type=int, default=0, help="seed for splits, training and search")


def setup(args: argparse.Namespace):
    """Load suite and profile, refuse a profile this host cannot run, and get the baseline."""
    from petra_hw.baseline import get_baseline
    from petra_hw.profiles import check_host, load_profile
    from petra_hw.suite import load_suite

    profile = load_profile(args.device)
    for note in [*check_host(profile), *runtime_notes(profile)]:
        errors.print(f"note: {note}", markup=False, soft_wrap=True)  # notes hold [extras]
    suite = load_suite(args.suite)
    title = f"baseline for {suite.name} (trained once, then cached)"
    with console.status(title) as status:

        def on_epoch(epoch: int, epochs: int, calib_loss: float, elapsed_s: float) -> None:
            line = (
                f"epoch {epoch}/{epochs} (at most), calib loss {calib_loss:.4f}, {elapsed_s:.0f} s"
            )
            if console.is_terminal:
                status.update(f"{title}: {line}")
            else:  # piped or logged: one line per epoch, so a long first run shows it is alive
                console.print(f"training baseline {suite.name}: {line}")

        baseline = get_baseline(suite, args.seed, args.data_dir, on_epoch)
    if not baseline.cached:
        console.print(
            f"trained baseline {suite.name}: test {suite.metric.name} = "
            f"{baseline.metrics['test']:.4f} (val {baseline.metrics['val']:.4f})"
        )
    return suite, profile, baseline


def runtime_notes(profile) -> list[str]:
    """Start-up check of the ONNX Runtime install for a profile that uses it (none, the CPU build
    on a GPU host, or both builds overwriting each other), naming the fix."""
    from backends.onnxruntime_backend import install_problem
    from petra_hw.profiles import gpu_names

    if "onnxruntime" not in profile.backends:
        return []
    problem = install_problem(profile.is_gpu and bool(gpu_names()))
    return [f"onnxruntime: {problem}"] if problem else []


def fresh_dir(base: Path, stem: str) -> Path:
    """A new folder under ``base`` that never overwrites an existing one."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = base / f"{stem}-{stamp}"
    i = 1
    while path.exists():
        path = base / f"{stem}-{stamp}-{i}"
        i += 1
    path.mkdir(parents=True)
    return path


def new_out_dir(out: Path | None, default_base: Path, stem: str) -> Path:
    """The user's --out (must not exist or be empty: never overwrite) or a fresh default."""
    from petra_hw.errors import UserError

    if out is None:
        return fresh_dir(default_base, stem)
    if out.exists() and any(out.iterdir()):
        raise UserError(f"output folder {out} exists and is not empty; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


@contextlib.contextmanager
def output_or_nothing(out: Path | None, default_base: Path, stem: str) -> Iterator[Path]:
    """``new_out_dir`` that leaves nothing behind when the command fails: a folder it created is
    removed, a user's empty folder is emptied again.  A full disk becomes one line (``DiskFull``)."""
    from petra_hw.errors import DiskFull, UserError
    from petra_hw.fsutil import disk_full

    existed = out is not None and out.exists()
    path = new_out_dir(out, default_base, stem)
    try:
        yield path
    except BaseException as exc:
        if existed:
            for child in path.iterdir():
                shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(path, ignore_errors=True)
        if isinstance(exc, Exception) and not isinstance(exc, UserError) and disk_full(exc, path):
            raise DiskFull(
                f"the disk holding {path} is full: free space and run the command again"
            ) from exc
        raise
