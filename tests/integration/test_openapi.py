import pytest
import yaml
from django.core.management import call_command

pytestmark = pytest.mark.django_db

API_PATHS = {
    "/api/auth/token/",
    "/api/boxes/",
    "/api/boxes/{id}/",
    "/api/boxes/{box_id}/assets/",
    "/api/boxes/{box_id}/upload/",
    "/api/boxes/{box_id}/generate/",
    "/api/callbacks/{token}/",
    "/api/assets/{id}/",
    "/api/ai-models/",
    "/api/ai-models/{id}/",
    "/api/health/",
}


def test_schema_validates_without_warnings(tmp_path):
    out = tmp_path / "schema.yaml"
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(out))

    schema = yaml.safe_load(out.read_text())
    assert schema["openapi"].startswith("3.")


def test_schema_endpoint_covers_every_endpoint(api):
    response = api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")

    assert response.status_code == 200
    schema = response.json()
    assert set(schema["paths"]) == API_PATHS
    upload = schema["paths"]["/api/boxes/{box_id}/upload/"]["post"]
    assert "multipart/form-data" in upload["requestBody"]["content"]
    params = {p["name"] for p in schema["paths"]["/api/boxes/{box_id}/assets/"]["get"]["parameters"]}
    assert {"status", "asset_type", "source", "page", "page_size"} <= params


def test_docs_page_renders_with_local_assets(client):
    response = client.get("/api/docs/")

    assert response.status_code == 200
    page = response.content.decode()
    assert "swagger-ui" in page and "/api/schema/" in page
    assert "cdn.jsdelivr.net" not in page
