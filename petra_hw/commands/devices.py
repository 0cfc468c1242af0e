"""``petra-hw devices``: the profiles, and which one matches this machine."""

from __future__ import annotations

import argparse
import platform

from petra_hw.console import console, table


def add_parser(sub) -> None:
    p = sub.add_parser("devices", help="list hardware profiles and the one matching this machine")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from backends.onnxruntime_backend import install_problem
    from petra_hw.profiles import (
        cpu_model,
        detect_profile,
        gpu_names,
        load_profile,
        matches,
        profile_names,
    )

    cpu, gpus = cpu_model(), gpu_names()
    auto = detect_profile()
    chosen = auto.name
    rows = []
    for name in profile_names():
        p = load_profile(name)
        ok = matches(p, cpu, gpus, platform.machine())
        mark = "auto" if name == chosen else ("matches" if ok else "")
        rows.append(
            [
                name,
                p.device_kind,
                ", ".join(p.backends),
                ", ".join(p.precisions),
                p.threads or "all",
                mark,
            ]
        )
    console.print(
        table("profiles", ["name", "kind", "backends", "precisions", "threads", "this host"], rows)
    )
    console.print(
        f"this host: CPU {cpu!r}; GPUs: {', '.join(gpus) if gpus else 'none'}; --device auto = {chosen}"
    )
    for note in auto.notes:
        console.print(f"note: {note}", markup=False, soft_wrap=True)
    problem = install_problem(bool(gpus))
    console.print(f"onnxruntime: {problem or _ort_summary()}", markup=False, soft_wrap=True)
    return 0


def _ort_summary() -> str:
    import onnxruntime as ort

    return f"{ort.__version__}, providers {', '.join(ort.get_available_providers())}"
