"""Generations end to end: the API, a real Celery worker, Redis, PostgreSQL, S3 over HTTP, and the Kie.ai
emulator over HTTP. Assertions are on what the emulator received and what the bucket holds."""

import base64
import hashlib
import hmac
import time
import uuid

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.ai_providers.models import AIModel
from apps.ai_providers.providers.kie.presets import KIE_MODELS
from apps.assets.models import Asset
from tests.support import media_samples as samples
from tests.support.helpers import EMULATOR_KEY, WEBHOOK_KEY, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

NEEDS_SOURCE = {"Veo 3.1 Fast image-to-video", "Nano Banana Edit", "Kling 2.6 image-to-video", "Runway image-to-video"}


def upload_source(api, box, width=640, height=480) -> int:
    response = api.post(
        f"/api/boxes/{box.id}/upload/",
        {"file": SimpleUploadedFile("source.png", samples.png_bytes(width, height)), "prompt_text": "Source image"},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    return response.json()["id"]


def generate(api, box, model: AIModel, prompt: str, **extra):
    return api.post(
        f"/api/boxes/{box.id}/generate/", {"prompt": prompt, "ai_model_id": model.id, **extra}, format="json"
    )


def unique(prompt: str) -> str:
    return f"{prompt} #{uuid.uuid4().hex[:8]}"


@pytest.mark.parametrize("name", [entry["name"] for entry in KIE_MODELS])
def test_every_kie_family_generates_and_stores_its_result(api, box, kie, kie_emulator, bucket, name):
    model = AIModel.objects.get(provider=kie, name=name)
    extra = {"parent_asset_id": upload_source(api, box)} if name in NEEDS_SOURCE else {}
    prompt = unique(f"e2e {name}")

    response = generate(api, box, model, prompt, **extra)

    assert response.status_code == 201, response.content
    assert response.json()["status"] == "PENDING"
    asset = wait_for(response.json()["id"])
    assert asset.status == Asset.Status.COMPLETED, asset.error_message

    task = kie_emulator.tasks[asset.external_task_id]
    assert task.prompt == prompt
    assert [s.json for s in kie_emulator.submissions() if s.json and prompt in str(s.json)].__len__() == 1
    if extra:
        assert task.inputs and all(fetched.status == 200 for fetched in task.inputs), task.inputs

    stored = bucket.get_object(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Key=asset.file.name)
    content = stored["Body"].read()
    assert stored["ContentType"] == asset.mime_type
    assert hashlib.sha256(content).hexdigest() == asset.sha256 and len(content) == asset.file_size
    assert asset.asset_type == model.model_type
    assert asset.mime_type == ("video/mp4" if model.model_type == "VIDEO" else "image/png")
    assert asset.width and asset.height

    payload = str(asset.request_payload)
    assert prompt in payload and EMULATOR_KEY not in payload and "X-Amz-Signature" not in payload
    assert asset.created_at <= asset.started_at <= asset.submitted_at <= asset.provider_finished_at <= asset.finished_at
    assert asset.progress == 1.0 and asset.error_message == ""

    detail = api.get(f"/api/assets/{asset.id}/").json()
    assert detail["status"] == "COMPLETED" and detail["external_task_id"] == asset.external_task_id
    assert detail["file_url"] and "X-Amz-Signature=" in detail["file_url"]


def test_quickstart_generate_body_works_unchanged(api, box, kie, kie_emulator, bucket):
    """The seed quickstart's curl body, with our ids."""
    model = AIModel.objects.get(provider=kie, name="Veo 3.1 Fast image-to-video")
    parent_id = upload_source(api, box)

    response = api.post(
        f"/api/boxes/{box.id}/generate/",
        {
            "prompt": "Beautiful cinematic movement",
            "ai_model_id": model.id,
            "parent_asset_id": parent_id,
            "generation_config": {"aspect_ratio": "16:9", "resolution": "720p", "duration": "8"},
        },
        format="json",
    )

    assert response.status_code == 201, response.content
    asset = wait_for(response.json()["id"])
    assert asset.status == "COMPLETED", asset.error_message
    assert asset.parent_asset_id == parent_id and asset.asset_type == "VIDEO"
    sent = kie_emulator.tasks[asset.external_task_id].body
    assert sent["aspect_ratio"] == "16:9" and sent["model"] == "veo3_fast"
    assert isinstance(sent["imageUrls"], list) and len(sent["imageUrls"]) == 1
    assert sent["callBackUrl"].endswith(f"/api/callbacks/{asset.callback_token}/")


@pytest.mark.parametrize(
    ("directive", "message"),
    [
        ("[[fail]]", "Kie.ai: generation failed: Internal generation error"),
        ("[[credits]]", "Kie.ai: insufficient credits (402)"),
        ("[[credits500]]", "Kie.ai: insufficient credits (402)"),
        ("[[validation]]", "Kie.ai: request rejected (422)"),
        ("[[noresult]]", "Kie.ai: the task finished but returned no result"),
        ("[[badresult]]", "returned a result Genbox cannot use"),
    ],
)
def test_provider_failures_fail_the_asset_with_a_reason(api, box, kie, kie_emulator, bucket, directive, message):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    asset = wait_for(generate(api, box, model, unique(f"cat {directive}")).json()["id"])

    assert asset.status == Asset.Status.FAILED
    assert message in asset.error_message
    assert not asset.file
    assert api.get(f"/api/assets/{asset.id}/").json()["error_message"] == asset.error_message


def test_a_malformed_status_answer_is_retried(api, box, kie, kie_emulator, bucket):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    asset = wait_for(generate(api, box, model, unique("cat [[malformed-once]] [[nocallback]]")).json()["id"])

    assert asset.status == Asset.Status.COMPLETED, asset.error_message
    assert kie_emulator.polls_for(asset.external_task_id) >= 2


def test_status_answers_that_stay_malformed_fail_after_the_error_limit(api, box, kie, kie_emulator, bucket):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    asset = wait_for(generate(api, box, model, unique("cat [[malformed]] [[nocallback]]")).json()["id"], timeout=90)

    assert asset.status == Asset.Status.FAILED
    assert "unreadable answer to the status query" in asset.error_message
    assert "3 failed status queries in a row" in asset.error_message


def test_a_truncated_download_is_retried_then_fails_and_stores_nothing(api, box, kie, kie_emulator, bucket):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    asset = wait_for(generate(api, box, model, unique("cat [[truncated]]")).json()["id"], timeout=90)

    assert asset.status == Asset.Status.FAILED
    assert "cut off" in asset.error_message
    listing = bucket.list_objects_v2(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Prefix=f"boxes/{box.id}/")
    assert [o["Key"] for o in listing.get("Contents", [])] == [], "only the failed generation ran in this box"


def test_rate_limited_submissions_are_waited_out(api, box, kie, kie_emulator, bucket):
    kie_emulator.rate_limit, kie_emulator.rate_window_seconds = 2, 3.0
    model = AIModel.objects.get(provider=kie, name="Nano Banana")
    try:
        ids = [generate(api, box, model, unique(f"burst {n}")).json()["id"] for n in range(5)]
        assets = [wait_for(asset_id, timeout=90) for asset_id in ids]
    finally:
        kie_emulator.rate_limit, kie_emulator.rate_window_seconds = None, 10.0

    assert [a.status for a in assets] == ["COMPLETED"] * 5, [a.error_message for a in assets]
    assert sum(a.submit_attempts for a in assets) > 5, "some submissions must have met the 429"
    for asset in assets:
        assert len([s for s in kie_emulator.submissions() if asset.prompt_text in str(s.json)]) == 1


def test_a_signed_callback_with_the_result_completes_the_task_without_a_poll(api, box, kie, kie_emulator, bucket):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    asset = wait_for(generate(api, box, model, unique("cat [[slow:2]]")).json()["id"])

    task = kie_emulator.tasks[asset.external_task_id]
    assert asset.status == Asset.Status.COMPLETED
    assert task.callback_status == 200
    # The first safety-net poll would come no sooner than 3 s (GENBOX_SAFETY_POLL_SECONDS in the test worker).
    assert kie_emulator.polls_for(asset.external_task_id) == 0
    assert asset.metadata["result_urls"][0].startswith(f"{kie_emulator.base_url}/files/{asset.external_task_id}/")
    provider_end = task.created_at + (task.ends_at - task.started)
    lag = asset.finished_at.timestamp() - provider_end
    assert lag < 1.5, f"completed {lag:.1f} s after the provider finished"


def test_a_lost_callback_is_covered_by_the_sweepers_safety_net_poll(api, box, kie, kie_emulator, bucket):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    asset = wait_for(generate(api, box, model, unique("cat [[nocallback]] [[slow:4]]")).json()["id"])

    assert asset.status == Asset.Status.COMPLETED and asset.awaits_callback
    assert kie_emulator.tasks[asset.external_task_id].callback_sent is False
    # The early poll at 2 s finds it running; then only the sweeper's sparse ones (≥ 3 s apart in the test worker).
    assert kie_emulator.polls_for(asset.external_task_id) <= 3
    assert (asset.finished_at - asset.submitted_at).total_seconds() >= 4


def test_callbacks_that_are_unknown_forged_or_late_change_nothing(api, box, kie, kie_emulator, client):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")
    asset = wait_for(generate(api, box, model, unique("cat")).json()["id"])
    body = {"code": 200, "msg": "success", "data": {"taskId": asset.external_task_id, "state": "success"}}

    unknown = client.post("/api/callbacks/not-a-token/", body, content_type="application/json")
    late = client.post(f"/api/callbacks/{asset.callback_token}/", body, content_type="application/json")

    assert unknown.status_code == 404
    assert late.status_code == 200 and late.json() == {"status": "ignored"}
    assert Asset.objects.get(pk=asset.pk).finished_at == asset.finished_at


def signed_headers(task_id: str, key: str = WEBHOOK_KEY) -> dict[str, str]:
    timestamp = str(int(time.time()))
    digest = hmac.new(key.encode(), f"{task_id}.{timestamp}".encode(), hashlib.sha256).digest()
    return {"HTTP_X_WEBHOOK_TIMESTAMP": timestamp, "HTTP_X_WEBHOOK_SIGNATURE": base64.b64encode(digest).decode()}


def test_callbacks_with_bad_signatures_or_another_task_change_nothing(api, box, kie, kie_emulator, client):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")
    asset_id = generate(api, box, model, unique("cat [[slow:30]] [[nocallback]]")).json()["id"]
    for _ in range(100):
        if Asset.objects.get(pk=asset_id).stage == Asset.Stage.POLLING:
            break
        time.sleep(0.1)
    asset = Asset.objects.get(pk=asset_id)
    url = f"/api/callbacks/{asset.callback_token}/"

    def send(task_id, **headers):
        body = {"code": 200, "msg": "success", "data": {"taskId": task_id, "state": "success"}}
        return client.post(url, body, content_type="application/json", **headers)

    sent_at = time.time()
    unsigned = send(asset.external_task_id)
    forged = send(asset.external_task_id, **signed_headers(asset.external_task_id, key="wrong-key"))
    stale = send(asset.external_task_id, HTTP_X_WEBHOOK_TIMESTAMP="1000", HTTP_X_WEBHOOK_SIGNATURE="x")
    other_task = send("someone-elses-task", **signed_headers("someone-elses-task"))

    assert unsigned.status_code == forged.status_code == stale.status_code == 400
    assert "bad signature" in forged.json()["error"]["message"]
    assert other_task.status_code == 200 and other_task.json() == {"status": "ignored"}
    time.sleep(0.5)  # a callback that counted would have triggered a poll by now
    after = Asset.objects.get(pk=asset_id)
    assert (after.status, after.stage) == ("PROCESSING", "POLLING")
    # An accepted callback sets due_at to its own time, earlier than any scheduled poll.
    assert after.due_at >= asset.due_at
    if time.time() - asset.submitted_at.timestamp() < 1.9:  # before the first scheduled poll: none at all
        polls = [r for r in kie_emulator.requests if r.kind == "poll" and r.task_id == asset.external_task_id]
        assert [r for r in polls if r.time >= sent_at] == []


def test_a_generation_past_its_deadline_fails_with_a_timeout(api, box, kie, kie_emulator):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")
    model.timeout_seconds = 3
    model.save()

    asset = wait_for(generate(api, box, model, unique("cat [[slow:60]] [[nocallback]]")).json()["id"])

    assert asset.status == Asset.Status.FAILED
    assert "did not finish within 3 seconds" in asset.error_message


def test_duplicate_task_deliveries_submit_and_store_once(api, box, kie, kie_emulator, bucket):
    from apps.generations.tasks import generation_run_due, generation_submit

    model = AIModel.objects.get(provider=kie, name="Nano Banana")
    asset_id = generate(api, box, model, unique("cat duplicate")).json()["id"]
    for _ in range(3):
        generation_submit.delay(asset_id)
        generation_run_due.delay()

    asset = wait_for(asset_id)
    time.sleep(1)

    assert asset.status == Asset.Status.COMPLETED
    assert len([s for s in kie_emulator.submissions() if asset.prompt_text in str(s.json)]) == 1
    listing = bucket.list_objects_v2(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Prefix=f"boxes/{box.id}/")
    assert [o["Key"] for o in listing["Contents"]] == [asset.file.name]


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        ({"ai_model_id": 999999}, "ai_model_id"),
        ({"generation_config": {"image_size": "7:3"}}, "generation_config.image_size"),
        ({"generation_config": {"colour": "red"}}, "generation_config.colour"),
        ({"prompt": ""}, "prompt"),
        ({"parent_asset_id": 999999}, "parent_asset_id"),
    ],
)
def test_bad_generate_requests_are_400_naming_the_field(api, box, kie, payload, field):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    response = api.post(
        f"/api/boxes/{box.id}/generate/", {"prompt": "cat", "ai_model_id": model.id, **payload}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(f"{field}:")
    assert not Asset.objects.filter(source="GENERATION").exists()


def test_a_model_that_needs_a_source_image_says_so(api, box, kie):
    model = AIModel.objects.get(provider=kie, name="Nano Banana Edit")

    response = generate(api, box, model, "make it blue")

    assert response.status_code == 400
    assert (
        response.json()["error"]["message"] == "parent_asset_id: This model needs a source image: pass parent_asset_id."
    )


def test_another_users_asset_cannot_be_a_source(api, stranger_api, kie, box):
    model = AIModel.objects.get(provider=kie, name="Nano Banana Edit")
    parent_id = upload_source(api, box)
    stranger_box_id = stranger_api.post("/api/boxes/", {"name": "mine"}, format="json").json()["id"]

    response = stranger_api.post(
        f"/api/boxes/{stranger_box_id}/generate/",
        {"prompt": "x", "ai_model_id": model.id, "parent_asset_id": parent_id},
        format="json",
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"] == f"parent_asset_id: No asset with id {parent_id} in your boxes."


def test_generating_into_another_users_box_is_404(stranger_api, box, kie):
    model = AIModel.objects.get(provider=kie, name="Nano Banana")

    assert generate(stranger_api, box, model, "cat").status_code == 404


def test_source_images_go_through_the_providers_upload_when_configured(api, box, kie, kie_emulator, bucket):
    kie.settings = {**kie.settings, "upload_inputs": True, "upload_base_url": kie_emulator.base_url}
    kie.save()
    model = AIModel.objects.get(provider=kie, name="Nano Banana Edit")
    uploads_before = len(kie_emulator.uploads)

    asset = wait_for(generate(api, box, model, unique("blue"), parent_asset_id=upload_source(api, box)).json()["id"])

    assert asset.status == Asset.Status.COMPLETED, asset.error_message
    assert len(kie_emulator.uploads) == uploads_before + 1
    sent_urls = kie_emulator.tasks[asset.external_task_id].body["input"]["image_urls"]
    assert sent_urls[0].startswith(f"{kie_emulator.base_url}/uploads/")
    assert kie_emulator.tasks[asset.external_task_id].inputs[0].status == 200


def seeded_model(kie) -> AIModel:
    from apps.ai_providers.providers.kie.presets import KIE_FAMILIES

    jobs = KIE_FAMILIES["jobs"]
    model = AIModel(
        provider=kie,
        name="Seeded",
        model_type="IMAGE",
        api_endpoint=jobs["submit"],
        poll_endpoint=jobs["poll"],
        response_mapping=jobs["mapping"],
        max_prompt_length=50,
        request_schema={"model": "test/seeded", "input": {"prompt": "<<prompt>>", "seed": "<<seed>>"}},
    )
    model.full_clean()
    model.save()
    return model


def test_sending_the_stored_seed_back_reproduces_the_request_exactly(api, box, kie, kie_emulator, bucket):
    model = seeded_model(kie)

    first = wait_for(generate(api, box, model, "a red fox").json()["id"])
    seed = first.generation_config["seed"]
    again = wait_for(generate(api, box, model, "a red fox", generation_config={"seed": seed}).json()["id"])

    assert first.status == again.status == Asset.Status.COMPLETED
    assert isinstance(seed, int) and kie_emulator.tasks[first.external_task_id].body["input"]["seed"] == seed
    assert first.request_payload == again.request_payload

    def sent(asset):  # each generation has its own callback URL; everything else must match
        return {k: v for k, v in kie_emulator.tasks[asset.external_task_id].body.items() if k != "callBackUrl"}

    assert sent(first) == sent(again)


def test_variants_are_separate_generations_with_distinct_seeds(api, box, kie, kie_emulator, bucket):
    model = seeded_model(kie)

    response = generate(api, box, model, "a red fox", variants=3, generation_config={"seed": 1000})

    assert response.status_code == 201, response.content
    body = response.json()
    assert body["variant_group"] and len(body["assets"]) == 3
    assets = [wait_for(a["id"]) for a in body["assets"]]
    assert [a.status for a in assets] == ["COMPLETED"] * 3
    assert [a.generation_config["seed"] for a in assets] == [1000, 1001, 1002]
    assert [a.metadata["variant"] for a in assets] == [1, 2, 3]
    assert {a.metadata["variant_group"] for a in assets} == {body["variant_group"]}
    assert len({a.external_task_id for a in assets}) == 3 and len({a.sha256 for a in assets}) >= 1


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"variants": 9}, "variants: Ensure this value is less than or equal to 8."),
        ({"variants": 0}, "variants: Ensure this value is greater than or equal to 1."),
        ({"prompt": "x" * 51}, "prompt: At most 50 characters for this model; this one has 51."),
        ({"generation_config": {"seed": -1}}, "generation_config.seed: -1 is not allowed"),
    ],
)
def test_variants_prompt_length_and_seed_are_checked(api, box, kie, payload, message):
    model = seeded_model(kie)

    response = api.post(
        f"/api/boxes/{box.id}/generate/", {"prompt": "cat", "ai_model_id": model.id, **payload}, format="json"
    )

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith(message)
    assert not Asset.objects.filter(source="GENERATION").exists()
