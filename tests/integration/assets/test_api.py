"""Asset listing, filtering, detail and the isolation rule."""

import pytest

from apps.assets.models import Asset
from tests.support.factories import AIModelFactory, AssetFactory, BoxFactory

pytestmark = pytest.mark.django_db


def test_box_assets_are_paginated_newest_first(api, box):
    assets = AssetFactory.create_batch(25, box=box)
    AssetFactory(box=BoxFactory(owner=box.owner))  # another box of the same user

    first = api.get(f"/api/boxes/{box.id}/assets/").json()
    second = api.get(f"/api/boxes/{box.id}/assets/", {"page": 2}).json()

    assert first["count"] == 25
    ids = [a["id"] for a in first["results"]] + [a["id"] for a in second["results"]]
    assert ids == [a.id for a in reversed(assets)]
    assert first["next"] and second["previous"]


def test_page_size_can_be_chosen(api, box):
    AssetFactory.create_batch(5, box=box)

    body = api.get(f"/api/boxes/{box.id}/assets/", {"page_size": 2}).json()

    assert len(body["results"]) == 2


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ({"status": "FAILED"}, {"failed-video"}),
        ({"asset_type": "VIDEO"}, {"failed-video", "done-video"}),
        ({"source": "UPLOAD"}, {"upload"}),
        ({"status": "COMPLETED", "asset_type": "VIDEO"}, {"done-video"}),
    ],
)
def test_box_assets_filter_by_status_type_and_source(api, box, query, expected):
    AssetFactory(box=box, prompt_text="failed-video", asset_type="VIDEO", status="FAILED")
    AssetFactory(box=box, prompt_text="done-video", asset_type="VIDEO", status="COMPLETED")
    AssetFactory(box=box, prompt_text="upload", source="UPLOAD", status="COMPLETED")

    body = api.get(f"/api/boxes/{box.id}/assets/", query).json()

    assert {a["prompt_text"] for a in body["results"]} == expected


def test_unknown_filter_value_is_a_400_naming_the_filter(api, box):
    response = api.get(f"/api/boxes/{box.id}/assets/", {"status": "DONE"})

    assert response.status_code == 400
    assert response.json()["error"]["message"].startswith("status:")


def test_asset_detail_shows_generation_fields(api, box):
    parent = AssetFactory(box=box, source="UPLOAD", status="COMPLETED")
    model = AIModelFactory()
    asset = AssetFactory(
        box=box,
        parent_asset=parent,
        ai_model=model,
        status="FAILED",
        external_task_id="task-123",
        error_message="Kie.ai: insufficient credits (402)",
        generation_config={"duration": "8"},
    )

    body = api.get(f"/api/assets/{asset.id}/").json()

    assert body["parent_asset"] == parent.id and body["ai_model"] == model.id
    assert body["status"] == "FAILED" and body["external_task_id"] == "task-123"
    assert body["error_message"] == "Kie.ai: insufficient credits (402)"
    assert body["generation_config"] == {"duration": "8"}
    assert body["file_url"] is None


def test_deleting_a_parent_keeps_its_children(api, box):
    parent = AssetFactory(box=box)
    child = AssetFactory(box=box, parent_asset=parent)

    assert api.delete(f"/api/assets/{parent.id}/").status_code == 204

    child.refresh_from_db()
    assert child.parent_asset is None


@pytest.mark.parametrize("method", ["get", "delete"])
def test_another_users_asset_answers_404_and_is_untouched(stranger_api, box, method):
    asset = AssetFactory(box=box)

    response = getattr(stranger_api, method)(f"/api/assets/{asset.id}/")

    assert response.status_code == 404
    assert Asset.objects.filter(pk=asset.pk).exists()


def test_asset_update_is_not_allowed(api, box):
    asset = AssetFactory(box=box)

    response = api.patch(f"/api/assets/{asset.id}/", {"status": "COMPLETED"}, format="json")

    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
