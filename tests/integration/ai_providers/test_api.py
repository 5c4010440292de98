import pytest

from tests.support.factories import AIModelFactory, AIProviderFactory

pytestmark = pytest.mark.django_db


def test_lists_active_models_with_provider_type_and_parameters(api):
    model = AIModelFactory(name="nano-banana", model_type="IMAGE")
    AIModelFactory(is_active=False)
    AIModelFactory(provider=AIProviderFactory(is_active=False))

    body = api.get("/api/ai-models/").json()

    assert body["count"] == 1
    assert body["results"] == [
        {
            "id": model.id,
            "name": "nano-banana",
            "provider": model.provider.name,
            "sandbox": False,
            "model_type": "IMAGE",
            "parameters_schema": model.parameters_schema,
        }
    ]


def test_model_listing_never_exposes_keys_urls_or_the_raw_request(api):
    model = AIModelFactory()

    for path in ("/api/ai-models/", f"/api/ai-models/{model.id}/"):
        text = api.get(path).content.decode()
        assert model.provider.api_key not in text
        assert model.provider.base_url not in text
        assert "request_schema" not in text and "api_key" not in text


def test_models_filter_by_type(api):
    AIModelFactory(model_type="IMAGE")
    video = AIModelFactory(model_type="VIDEO")

    body = api.get("/api/ai-models/", {"model_type": "VIDEO"}).json()

    assert [m["id"] for m in body["results"]] == [video.id]


def test_inactive_model_detail_is_404(api):
    assert api.get(f"/api/ai-models/{AIModelFactory(is_active=False).id}/").status_code == 404


def test_model_detail(api):
    model = AIModelFactory()

    assert api.get(f"/api/ai-models/{model.id}/").json()["name"] == model.name


def test_models_need_authentication(client):
    assert client.get("/api/ai-models/").status_code == 401
