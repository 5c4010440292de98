"""Management commands as an operator runs them."""

import io

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.ai_providers.models import AIModel, AIProvider
from apps.ai_providers.providers.kie.presets import KIE_FAMILIES, KIE_MODELS
from apps.assets.models import Asset


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


@pytest.mark.django_db
def test_setup_kie_ai_creates_the_provider_and_a_model_of_every_family():
    output = run("setup_kie_ai", "--api-key", "k-123456789012345678", "--base-url", "http://kie.test")

    provider = AIProvider.objects.get(name="Kie.ai")
    assert (provider.kind, provider.base_url, provider.api_key) == ("kie", "http://kie.test", "k-123456789012345678")
    models = list(AIModel.objects.filter(provider=provider).order_by("pk"))
    assert [m.name for m in models] == [entry["name"] for entry in KIE_MODELS]
    assert {m.api_endpoint for m in models} == {family["submit"] for family in KIE_FAMILIES.values()}
    for model in models:
        model.full_clean()
    assert "k-123456789012345678" not in output
    for model in models:
        assert model.name in output


@pytest.mark.django_db
def test_setup_kie_ai_twice_changes_nothing():
    run("setup_kie_ai", "--api-key", "k1", "--base-url", "http://kie.test")
    before = {m.pk: m.updated_at for m in AIModel.objects.all()}
    provider_before = AIProvider.objects.get().updated_at

    output = run("setup_kie_ai", "--api-key", "k1", "--base-url", "http://kie.test")

    assert {m.pk: m.updated_at for m in AIModel.objects.all()} == before
    assert AIProvider.objects.get().updated_at == provider_before
    assert "Created" not in output and "Updated" not in output


@pytest.mark.django_db
def test_setup_kie_ai_updates_the_base_url_and_restores_edited_models():
    run("setup_kie_ai", "--api-key", "k1")
    AIModel.objects.filter(name="Nano Banana").update(poll_endpoint="/wrong")

    output = run("setup_kie_ai", "--api-key", "k2", "--base-url", "http://emulator.test")

    provider = AIProvider.objects.get()
    assert (provider.base_url, provider.api_key) == ("http://emulator.test", "k2")
    assert AIModel.objects.get(name="Nano Banana").poll_endpoint == "/api/v1/jobs/recordInfo"
    assert "Updated model Nano Banana: poll_endpoint" in output


@pytest.mark.django_db
def test_list_ai_models_prints_a_table():
    run("setup_kie_ai", "--api-key", "k1")

    lines = run("list_ai_models").splitlines()

    assert lines[0].split() == ["ID", "PROVIDER", "NAME", "TYPE", "ACTIVE", "ENDPOINT"]
    first = AIModel.objects.order_by("pk").first()
    assert lines[1].split()[0] == str(first.pk) and "/api/v1/jobs/createTask" in lines[1]
    assert len(lines) == 1 + len(KIE_MODELS)


@pytest.mark.django_db
def test_list_ai_models_says_how_to_add_models_when_there_are_none():
    assert "setup_kie_ai" in run("list_ai_models")


@pytest.mark.django_db(transaction=True)
def test_test_celery_round_trips_through_the_worker(celery_worker):
    assert "Celery OK: round trip" in run("test_celery")


@pytest.mark.django_db(transaction=True)
def test_test_generation_runs_a_real_generation(kie):
    output = run("test_generation", "--prompt", "a red fox", "--timeout", "60")

    asset = Asset.objects.get(prompt_text="a red fox")
    assert asset.status == "COMPLETED" and asset.mime_type == "image/png"
    assert "COMPLETED" in output and asset.file.name in output


@pytest.mark.django_db(transaction=True)
def test_test_generation_exits_non_zero_with_the_reason_on_failure(kie):
    with pytest.raises(CommandError, match="insufficient credits"):
        run("test_generation", "--prompt", "a red fox [[credits]]", "--timeout", "60")


@pytest.mark.django_db(transaction=True)
def test_test_video_generation_uses_a_sample_image_when_none_is_given(kie):
    output = run("test_video_generation", "--timeout", "60")

    video = Asset.objects.get(asset_type="VIDEO", source="GENERATION")
    assert video.status == "COMPLETED" and video.mime_type == "video/mp4"
    assert video.parent_asset.source == "UPLOAD" and video.parent_asset.width == 768
    assert "Source image" in output


@pytest.mark.django_db(transaction=True)
def test_test_video_generation_takes_an_image_file(kie, tmp_path):
    from tests.support import media_samples as samples

    image = tmp_path / "me.jpg"
    image.write_bytes(samples.jpeg_bytes(320, 240))

    run("test_video_generation", "--image", str(image), "--timeout", "60")

    video = Asset.objects.get(asset_type="VIDEO", source="GENERATION")
    assert (video.parent_asset.width, video.parent_asset.mime_type) == (320, "image/jpeg")


@pytest.mark.django_db
def test_test_video_generation_refuses_a_missing_image(kie_catalogue_only):
    with pytest.raises(CommandError, match="no file at"):
        run("test_video_generation", "--image", "/nonexistent.png")


@pytest.fixture
def kie_catalogue_only(db):
    run("setup_kie_ai", "--api-key", "k1")


@pytest.mark.django_db
def test_admin_checks_a_providers_connection(client, kie_emulator):
    from django.contrib.auth import get_user_model

    from tests.support.helpers import EMULATOR_KEY

    good = AIProvider.objects.create(name="Kie.ai", kind="kie", base_url=kie_emulator.base_url, api_key=EMULATOR_KEY)
    bad = AIProvider.objects.create(name="Wrong key", kind="kie", base_url=kie_emulator.base_url, api_key="nope")
    client.force_login(get_user_model().objects.create_superuser("root", "r@example.com", "pw-for-tests-only"))

    response = client.post(
        "/admin/ai_providers/aiprovider/",
        {"action": "check_connection", "_selected_action": [good.pk, bad.pk]},
        follow=True,
    )

    page = response.content.decode()
    assert "Kie.ai: Kie.ai reachable, credits:" in page
    assert "Wrong key: Kie.ai: invalid API key (401)" in page
