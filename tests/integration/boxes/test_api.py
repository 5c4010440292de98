import pytest

from apps.boxes.models import Box
from tests.support.factories import AssetFactory, BoxFactory

pytestmark = pytest.mark.django_db


def test_create_box_stores_it_for_the_caller(api, user):
    response = api.post("/api/boxes/", {"name": "Holiday", "description": "Beach shots"}, format="json")

    assert response.status_code == 201, response.content
    box = Box.objects.get(pk=response.json()["id"])
    assert (box.owner, box.name, box.description) == (user, "Holiday", "Beach shots")
    assert response.json()["asset_count"] == 0


def test_create_box_without_name_is_a_400_naming_the_field(api):
    response = api.post("/api/boxes/", {"description": "no name"}, format="json")

    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"].startswith("name:")
    assert "name" in error["details"]
    assert not Box.objects.exists()


def test_list_shows_only_own_boxes_newest_first_with_counts(api, user):
    older = BoxFactory(owner=user, name="older")
    newer = BoxFactory(owner=user, name="newer")
    AssetFactory.create_batch(2, box=newer)
    BoxFactory(name="someone else's")

    response = api.get("/api/boxes/")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [(b["id"], b["asset_count"]) for b in body["results"]] == [(newer.id, 2), (older.id, 0)]


def test_update_box_changes_name_and_description(api, box):
    response = api.patch(f"/api/boxes/{box.id}/", {"name": "Renamed"}, format="json")
    assert response.status_code == 200
    response = api.put(f"/api/boxes/{box.id}/", {"name": "Again", "description": "d"}, format="json")
    assert response.status_code == 200

    box.refresh_from_db()
    assert (box.name, box.description) == ("Again", "d")


def test_update_box_with_overlong_name_is_rejected(api, box):
    response = api.patch(f"/api/boxes/{box.id}/", {"name": "x" * 201}, format="json")

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("name:")


def test_delete_box_removes_it_and_its_assets(api, box):
    AssetFactory(box=box)

    response = api.delete(f"/api/boxes/{box.id}/")

    assert response.status_code == 204
    assert not Box.objects.filter(pk=box.pk).exists()


def test_retrieve_box(api, box):
    response = api.get(f"/api/boxes/{box.id}/")

    assert response.status_code == 200
    assert response.json()["name"] == box.name


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_another_users_box_answers_404_and_is_untouched(stranger_api, box, method):
    response = getattr(stranger_api, method)(f"/api/boxes/{box.id}/", {"name": "hijacked"}, format="json")

    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"
    box.refresh_from_db()
    assert box.name != "hijacked"


def test_another_users_box_assets_answer_404(stranger_api, box):
    AssetFactory(box=box)

    assert stranger_api.get(f"/api/boxes/{box.id}/assets/").status_code == 404


def test_requests_without_a_token_are_refused(client, box):
    response = client.get("/api/boxes/")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_an_invalid_token_is_refused(client, box):
    response = client.get("/api/boxes/", HTTP_AUTHORIZATION="Token not-a-real-token")

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "authentication_failed"
