"""The admin renders every page, masks provider keys, and validates model JSON on save."""

import re

import pytest
from django.contrib.auth import get_user_model

from apps.ai_providers.models import AIModel, AIProvider
from apps.assets.models import Asset
from tests.support import media_samples as samples
from tests.support.factories import AIModelFactory, AIProviderFactory, AssetFactory, BoxFactory

pytestmark = pytest.mark.django_db

SECRET = "sk-live-0123456789abcdef-SECRET"


@pytest.fixture
def staff(client):
    admin_user = get_user_model().objects.create_superuser("admin", "admin@example.com", "pw-for-tests-only")
    client.force_login(admin_user)
    return client


@pytest.mark.parametrize("model", ["boxes/box", "assets/asset", "ai_providers/aiprovider", "ai_providers/aimodel"])
def test_changelist_and_add_pages_render(staff, model):
    BoxFactory()
    AssetFactory(asset_type="VIDEO")
    AIModelFactory()

    assert staff.get(f"/admin/{model}/").status_code == 200
    assert staff.get(f"/admin/{model}/add/").status_code == 200


def test_change_pages_render_with_previews(staff, api, box):
    image = api.post(f"/api/boxes/{box.id}/upload/", {"file": _file("a.png", samples.png_bytes())}, format="multipart")
    video = api.post(f"/api/boxes/{box.id}/upload/", {"file": _file("b.mp4", samples.mp4_bytes())}, format="multipart")
    model = AIModelFactory()

    image_page = staff.get(f"/admin/assets/asset/{image.json()['id']}/change/").content.decode()
    video_page = staff.get(f"/admin/assets/asset/{video.json()['id']}/change/").content.decode()
    listing = staff.get("/admin/assets/asset/").content.decode()

    image_name = Asset.objects.get(pk=image.json()["id"]).file.name
    video_name = Asset.objects.get(pk=video.json()["id"]).file.name
    for page in (image_page, listing):
        assert re.search(f'<img src="[^"]*{re.escape(image_name)}', page)
    for page in (video_page, listing):
        assert re.search(f'<video src="[^"]*{re.escape(video_name)}', page)
    assert staff.get(f"/admin/boxes/box/{box.id}/change/").status_code == 200
    assert staff.get(f"/admin/ai_providers/aimodel/{model.id}/change/").status_code == 200


def test_asset_search_on_prompt(staff):
    AssetFactory(prompt_text="a red fox in snow")
    AssetFactory(prompt_text="city at night")

    page = staff.get("/admin/assets/asset/", {"q": "fox"}).content.decode()

    assert "red fox" in page and "city at night" not in page


def _file(name, content):
    from django.core.files.uploadedfile import SimpleUploadedFile

    return SimpleUploadedFile(name, content)


def test_provider_key_is_masked_and_never_rendered(staff):
    provider = AIProviderFactory(api_key=SECRET)

    for path in ("/admin/ai_providers/aiprovider/", f"/admin/ai_providers/aiprovider/{provider.id}/change/"):
        page = staff.get(path).content.decode()
        assert SECRET not in page
        assert "…CRET" in page


def _provider_form(provider, **changes):
    data = {
        "name": provider.name,
        "kind": provider.kind,
        "base_url": provider.base_url,
        "api_key": "",
        "is_active": "on",
        "settings": "{}",
    }
    data.update(changes)
    return data


def test_saving_a_provider_with_an_empty_key_field_keeps_the_key(staff):
    provider = AIProviderFactory(api_key=SECRET)

    response = staff.post(
        f"/admin/ai_providers/aiprovider/{provider.id}/change/",
        _provider_form(provider, base_url="https://kie.example.test"),
    )

    assert response.status_code == 302
    provider.refresh_from_db()
    assert (provider.api_key, provider.base_url) == (SECRET, "https://kie.example.test")


def test_a_new_key_replaces_the_old_one_and_clearing_removes_it(staff):
    provider = AIProviderFactory(api_key=SECRET)
    url = f"/admin/ai_providers/aiprovider/{provider.id}/change/"

    staff.post(url, _provider_form(provider, api_key="new-key-value"))
    provider.refresh_from_db()
    assert provider.api_key == "new-key-value"

    staff.post(url, _provider_form(provider, clear_api_key="on"))
    provider.refresh_from_db()
    assert provider.api_key == ""


def test_provider_settings_must_be_an_object(staff):
    provider = AIProviderFactory()

    response = staff.post(
        f"/admin/ai_providers/aiprovider/{provider.id}/change/", _provider_form(provider, settings="[1, 2]")
    )

    assert response.status_code == 200
    assert "Must be a JSON object" in response.content.decode()


def _model_form(provider, **changes):
    data = {
        "provider": provider.id,
        "name": "veo",
        "model_type": "VIDEO",
        "api_endpoint": "/api/v1/veo/generate",
        "request_schema": '{"prompt": "<<prompt>>"}',
        "parameters_schema": "{}",
        "is_active": "on",
    }
    data.update(changes)
    return data


def test_admin_creates_a_model_with_valid_json(staff):
    provider = AIProviderFactory()

    response = staff.post(
        "/admin/ai_providers/aimodel/add/",
        _model_form(
            provider, parameters_schema='{"duration": {"type": "select", "options": ["5", "10"], "default": "5"}}'
        ),
    )

    assert response.status_code == 302
    assert AIModel.objects.get(name="veo").parameters_schema["duration"]["default"] == "5"


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("parameters_schema", '{"duration": {"type": "select"}}', "non-empty &#x27;options&#x27;"),
        ("parameters_schema", "[]", "Must be a JSON object"),
        ("request_schema", "{}", "Must be a non-empty JSON object"),
        ("request_schema", "{not json", "Enter a valid JSON"),
    ],
)
def test_admin_rejects_invalid_model_json(staff, field, value, message):
    provider = AIProviderFactory()

    response = staff.post("/admin/ai_providers/aimodel/add/", _model_form(provider, **{field: value}))

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not AIModel.objects.exists()


def test_provider_kind_must_be_known(staff):
    response = staff.post(
        "/admin/ai_providers/aiprovider/add/",
        {"name": "X", "kind": "magic", "base_url": "https://x.test", "settings": "{}"},
    )

    assert response.status_code == 200
    assert not AIProvider.objects.exists()
