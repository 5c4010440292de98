"""Kie.ai answers read as data: body codes, paths into nested JSON strings, status maps."""

import json

import pytest
from django.core.exceptions import ValidationError

from apps.ai_providers.contract import Succeeded
from apps.ai_providers.mapping import ResponseMapping, dig, validate_response_mapping
from apps.ai_providers.providers.kie.adapter import classify
from apps.ai_providers.providers.kie.presets import KIE_FAMILIES


@pytest.mark.parametrize(
    ("code", "message", "expected", "retryable"),
    [
        (402, "Credits insufficient", "Kie.ai: insufficient credits (402): Credits insufficient", False),
        (500, "Credits insufficient", "Kie.ai: insufficient credits (402)", False),
        (401, "", "Kie.ai: invalid API key (401)", False),
        (422, "model not supported", "Kie.ai: request rejected (422): model not supported", False),
        (500, "aspect_ratio is required", "Kie.ai: request rejected (500): aspect_ratio is required", False),
        (429, "Rate limited", "Kie.ai: rate limited (429)", True),
        (455, "maintenance", "Kie.ai: service under maintenance (455)", True),
        (500, "Internal error", "Kie.ai: server error (500)", True),
        (501, "generation failed", "Kie.ai: generation failed (501)", False),
    ],
)
def test_body_codes_are_classified(code, message, expected, retryable):
    error = classify(code, message)

    assert error.message.startswith(expected)
    assert error.retryable is retryable


def test_dig_parses_json_strings_on_the_way():
    answer = {"data": {"resultJson": '{"resultUrls": ["https://r/1.png"]}', "items": [{"u": "x"}]}}

    assert dig(answer, "data.resultJson.resultUrls") == ["https://r/1.png"]
    assert dig(answer, "data.items.0.u") == "x"
    assert dig(answer, "data.resultJson.missing") is None
    assert dig({"data": {"resultJson": ""}}, "data.resultJson.resultUrls") is None
    assert dig({"data": None}, "data.x") is None


@pytest.mark.parametrize("family", sorted(KIE_FAMILIES))
def test_every_family_preset_is_a_valid_mapping(family):
    validate_response_mapping(KIE_FAMILIES[family]["mapping"])


def test_jobs_mapping_reads_success_failure_and_progress():
    mapping = ResponseMapping.from_json(KIE_FAMILIES["jobs"]["mapping"])
    success = {"code": 200, "data": {"state": "success", "resultJson": '{"resultUrls":["u"]}', "creditsConsumed": 4}}
    failure = {"code": 200, "data": {"state": "fail", "failMsg": "NSFW", "failCode": "400"}}

    assert mapping.outcome(success)[0] == "succeeded" and mapping.result_urls(success) == ["u"]
    assert mapping.cost(success) == {"credits": 4}
    assert mapping.outcome(failure)[0] == "failed" and mapping.error(failure) == "NSFW: 400"
    assert mapping.outcome({"data": {"state": "brand-new-state"}})[0] == "running"


def test_gpt4o_progress_strings_become_fractions():
    mapping = ResponseMapping.from_json(KIE_FAMILIES["gpt4o"]["mapping"])

    assert mapping.progress({"data": {"progress": "0.45"}}) == 0.45
    assert mapping.progress({"data": {"progress": "45"}}) == 0.45
    assert mapping.progress({"data": {"progress": None}}) is None


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"status_path": "s"}, "'task_id_path' is required"),
        ({**KIE_FAMILIES["jobs"]["mapping"], "status_values": {"ok": "done"}}, "must map to one of"),
        ({**KIE_FAMILIES["jobs"]["mapping"], "colour": 1}, "unknown keys ['colour']"),
        ([1], "Must be a JSON object"),
    ],
)
def test_invalid_mappings_are_refused(mapping, message):
    with pytest.raises(ValidationError) as info:
        validate_response_mapping(mapping)

    assert message in " ".join(info.value.messages)


def jobs_adapter(settings: dict):
    from apps.ai_providers.models import AIModel, AIProvider
    from apps.ai_providers.providers.kie.adapter import KieAdapter

    provider = AIProvider(name="Kie.ai", kind="kie", base_url="https://api.kie.ai", api_key="k", settings=settings)
    return KieAdapter(provider), AIModel(provider=provider, response_mapping=KIE_FAMILIES["jobs"]["mapping"])


SUCCESS_CALLBACK = json.dumps(
    {"code": 200, "msg": "ok", "data": {"taskId": "t-1", "state": "success", "resultJson": '{"resultUrls":["u"]}'}}
).encode()


def test_a_signed_callback_carries_the_result():
    adapter, model = jobs_adapter({"webhook_hmac_key": "key"})
    assert adapter.callback_result(model, {}, SUCCESS_CALLBACK) == Succeeded(result_urls=["u"])


@pytest.mark.parametrize(
    ("settings", "body"),
    [
        ({}, SUCCESS_CALLBACK),  # unsigned: only ever a reason to poll
        ({"webhook_hmac_key": "key"}, b'{"code": 501, "data": {"taskId": "t-1", "state": "fail", "failMsg": "x"}}'),
        ({"webhook_hmac_key": "key"}, b'{"code": 200, "data": {"taskId": "t-1", "state": "success"}}'),  # no URLs
        ({"webhook_hmac_key": "key"}, b"not json"),
    ],
)
def test_a_callback_without_a_signature_or_a_usable_success_carries_no_result(settings, body):
    adapter, model = jobs_adapter(settings)
    assert adapter.callback_result(model, {}, body) is None
