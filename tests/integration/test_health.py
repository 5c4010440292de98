import pytest

from config.celery import app as celery_app

pytestmark = pytest.mark.django_db


def test_health_is_200_when_database_broker_and_storage_answer(client):
    response = client.get("/api/health/")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert {name: check["ok"] for name, check in body["checks"].items()} == {
        "database": True,
        "broker": True,
        "storage": True,
    }


def test_health_is_503_naming_the_broker_when_it_is_down(client, monkeypatch):
    monkeypatch.setitem(celery_app.conf, "broker_write_url", "redis://127.0.0.1:9/0")  # nothing listens there

    response = client.get("/api/health/")

    assert response.status_code == 503
    checks = response.json()["checks"]
    assert checks["broker"]["ok"] is False and checks["broker"]["error"]
    assert checks["database"]["ok"] and checks["storage"]["ok"]


def test_health_is_503_when_the_bucket_is_missing(client, bucket, settings):
    storage = settings.STORAGES["default"]
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {**storage, "OPTIONS": {**storage["OPTIONS"], "bucket_name": "no-such-bucket"}},
    }

    response = client.get("/api/health/")

    assert response.status_code == 503
    assert response.json()["checks"]["storage"]["ok"] is False
