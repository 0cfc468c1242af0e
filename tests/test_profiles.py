from __future__ import annotations

import pytest

from petra_hw.errors import UserError
from petra_hw.profiles import check_host, load_profile, matches, profile_names


def test_bundled_profiles_load() -> None:
    names = profile_names()
    assert {"cpu", "epyc9124", "rtx6000ada", "h100"} <= set(names)
    for n in names:
        p = load_profile(n)
        assert p.name == n and p.backends and p.precisions and 1 in p.batch_sizes
        assert p.measurement.min_iters > 0 and p.channel_multiple >= 1


def test_match_rules() -> None:
    epyc, h100, cpu = load_profile("epyc9124"), load_profile("h100"), load_profile("cpu")
    assert matches(epyc, "AMD EPYC 9124 16-Core Processor", [], "x86_64")
    assert not matches(epyc, "AMD EPYC", [], "x86_64")
    assert matches(h100, "", ["NVIDIA H100 80GB HBM3"], "x86_64")
    assert not matches(h100, "", [], "x86_64")
    assert matches(cpu, "anything", [], "x86_64") and not matches(cpu, "x", [], "aarch64")


def test_auto_picks_a_profile_here() -> None:
    assert load_profile("auto").device_kind in ("cpu", "gpu")


def test_gpu_profile_refused_without_that_gpu() -> None:
    from petra_hw.profiles import gpu_names

    if gpu_names():
        pytest.skip("this host has an NVIDIA GPU")
    with pytest.raises(UserError, match="needs a GPU matching"):
        check_host(load_profile("rtx6000ada"))


def test_fewer_cores_than_expected_is_recorded() -> None:
    p = load_profile("epyc9124")
    notes = check_host(p)
    import os

    if (os.cpu_count() or 1) < 16:
        assert notes and "expects 16 cores" in notes[0]
        assert p.effective_threads() == os.cpu_count()


def test_bad_profiles(tmp_path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(UserError, match="malformed profile TOML"):
        load_profile(str(bad))
    missing = tmp_path / "m.toml"
    missing.write_text('name = "m"\ndevice_kind = "cpu"\n')
    with pytest.raises(UserError, match="missing key"):
        load_profile(str(missing))
    with pytest.raises(UserError, match="unknown device 'tpu9'"):
        load_profile("tpu9")
