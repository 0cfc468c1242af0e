"""Backend choice asks one question, ``Backend.supports(intent, profile)``, for every profile."""

from __future__ import annotations

import pytest

from petra_hw.backend import check_supported, choose_backend, get_backend
from petra_hw.errors import UserError
from petra_hw.pipeline import Pipeline
from petra_hw.precision import PrecisionIntent, deployed_intent
from petra_hw.profiles import load_profile, profile_names

INTENTS = [
    PrecisionIntent("fp32"),
    PrecisionIntent("fp16"),
    PrecisionIntent("bf16"),
    PrecisionIntent("int8", "static", "minmax"),
    PrecisionIntent("int8", "dynamic"),
    PrecisionIntent("int8", "qat"),
]


@pytest.mark.parametrize("name", profile_names())
@pytest.mark.parametrize("intent", INTENTS, ids=PrecisionIntent.label)
def test_chosen_backend_supports_the_intent(name: str, intent: PrecisionIntent) -> None:
    profile = load_profile(name)
    try:
        chosen = choose_backend(profile, intent)
    except UserError as exc:  # nothing here serves it: every backend of the profile says why
        assert intent.precision not in profile.precisions or all(
            b in str(exc) for b in profile.backends
        )
        return
    backend = get_backend(chosen)
    assert chosen in profile.backends and intent.precision in profile.precisions
    assert backend.supports(intent, profile) is None
    check_supported(backend, profile, intent)
    # the profile's earlier backends were passed over for a reason
    for earlier in profile.backends[: profile.backends.index(chosen)]:
        assert get_backend(earlier).supports(intent, profile) is not None


def test_pdq_on_epyc9124_goes_to_onnxruntime_not_openvino() -> None:
    profile = load_profile("epyc9124")
    assert profile.backends[0] == "openvino"
    intent = deployed_intent(Pipeline.parse("LR - PDQ"), profile)
    assert intent == PrecisionIntent("int8", "dynamic")
    assert "dynamic" in (get_backend("openvino").supports(intent, profile) or "")
    assert choose_backend(profile, intent) == "onnxruntime"
    with pytest.raises(UserError, match="cannot compile int8 dynamic"):
        choose_backend(profile, intent, pinned="openvino")


def test_profiles_parse_their_backend_tables() -> None:
    epyc = load_profile("epyc9124")
    assert epyc.backend_settings["openvino"]["performance_hint"] == "LATENCY"
    assert epyc.backend_settings["onnxruntime"]["activation_type"] == "QUInt8"
    assert "measurement" not in epyc.backend_settings
