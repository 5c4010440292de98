"""POST /api/boxes/{id}/upload/: the upload matrix, and what really lands in the bucket."""

import hashlib

import httpx
import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile

from apps.assets.models import Asset
from tests.support import media_samples as samples

pytestmark = pytest.mark.django_db


def upload(api, box, content: bytes, name: str = "file.bin", content_type: str = "application/octet-stream", **extra):
    data = {"file": SimpleUploadedFile(name, content, content_type=content_type), **extra}
    return api.post(f"/api/boxes/{box.id}/upload/", data, format="multipart")


def stored_keys(bucket, box) -> list[str]:
    listing = bucket.list_objects_v2(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Prefix=f"boxes/{box.id}/")
    return [item["Key"] for item in listing.get("Contents", [])]


ACCEPTED = [
    pytest.param(samples.png_bytes(64, 48), "IMAGE", "image/png", ".png", 64, 48, id="png"),
    pytest.param(samples.jpeg_bytes(80, 60), "IMAGE", "image/jpeg", ".jpg", 80, 60, id="jpeg"),
    pytest.param(samples.webp_bytes(32, 16), "IMAGE", "image/webp", ".webp", 32, 16, id="webp"),
    pytest.param(samples.mp4_bytes(320, 240), "VIDEO", "video/mp4", ".mp4", 320, 240, id="mp4"),
    pytest.param(samples.webm_bytes(640, 360), "VIDEO", "video/webm", ".webm", 640, 360, id="webm"),
    pytest.param(samples.mov_bytes(1280, 720), "VIDEO", "video/quicktime", ".mov", 1280, 720, id="mov"),
]


@pytest.mark.parametrize(("content", "asset_type", "mime", "ext", "width", "height"), ACCEPTED)
def test_accepted_upload_is_stored_in_the_bucket_with_its_detected_type(
    api, box, bucket, content, asset_type, mime, ext, width, height
):
    response = upload(api, box, content, name="original name.bin", prompt_text="Source image")

    assert response.status_code == 201, response.content
    body = response.json()
    asset = Asset.objects.get(pk=body["id"])
    assert (asset.box, asset.source, asset.status) == (box, Asset.Source.UPLOAD, Asset.Status.COMPLETED)
    assert (asset.asset_type, asset.mime_type, asset.width, asset.height) == (asset_type, mime, width, height)
    assert asset.file_size == len(content)
    assert asset.sha256 == hashlib.sha256(content).hexdigest()
    assert asset.prompt_text == "Source image"
    assert asset.metadata["original_filename"] == "original name.bin"
    assert asset.file.name.startswith(f"boxes/{box.id}/") and asset.file.name.endswith(ext)
    assert "original" not in asset.file.name

    stored = bucket.get_object(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Key=asset.file.name)
    assert stored["ContentType"] == mime
    assert stored["Body"].read() == content
    assert stored_keys(bucket, box) == [asset.file.name]

    assert body["status"] == "COMPLETED" and body["source"] == "UPLOAD" and body["mime_type"] == mime
    assert body["sha256"] == asset.sha256 and body["width"] == width


def test_file_url_is_a_presigned_url_that_downloads_the_file(api, box, bucket):
    content = samples.png_bytes(10, 10)
    file_url = upload(api, box, content, name="a.png").json()["file_url"]

    assert file_url.startswith(settings.AWS_S3_ENDPOINT_URL)
    assert "X-Amz-Signature=" in file_url
    assert httpx.get(file_url).content == content
    unsigned = file_url.split("?")[0]
    assert httpx.get(unsigned).status_code == 403, "the bucket must not be publicly readable"


def test_type_comes_from_the_content_not_the_name_or_header(api, box, bucket):
    response = upload(api, box, samples.png_bytes(20, 20), name="clip.mp4", content_type="video/mp4")

    assert response.status_code == 201
    assert (response.json()["asset_type"], response.json()["mime_type"]) == ("IMAGE", "image/png")
    assert Asset.objects.get().file.name.endswith(".png")


REJECTED = [
    pytest.param(b"", "empty.png", "empty", id="empty"),
    pytest.param(b"#!/bin/sh\necho not an image\n", "photo.jpg", "not a supported image", id="disguised-script"),
    pytest.param(b"\x00\x01garbage" * 100, "photo.png", "not a supported image", id="random-bytes"),
    pytest.param(samples.png_bytes(64, 64)[:-40], "cut.png", "truncated or corrupt", id="truncated-png"),
    pytest.param(samples.jpeg_bytes(64, 64)[:200], "cut.jpg", "truncated or corrupt", id="truncated-jpeg"),
    pytest.param(samples.mp4_bytes(320, 240)[:-10], "cut.mp4", "truncated", id="truncated-mp4"),
    pytest.param(samples.webm_bytes(320, 240)[:-10], "cut.webm", "truncated", id="truncated-webm"),
    pytest.param(samples.png_bytes(4097, 8), "wide.png", "4096", id="oversized-image"),
    pytest.param(samples.png_bomb_bytes(30000, 30000), "bomb.png", "30000", id="decompression-bomb"),
    pytest.param(samples.gif_bytes(), "anim.gif", "GIF", id="gif"),
    pytest.param(samples.m4a_bytes(), "song.mp4", "no video track", id="audio-only-mp4"),
    pytest.param(samples.mkv_bytes(), "film.webm", "Matroska", id="matroska"),
]


@pytest.mark.parametrize(("content", "name", "message_part"), REJECTED)
def test_rejected_upload_is_a_400_naming_the_file_field_and_stores_nothing(
    api, box, bucket, content, name, message_part
):
    response = upload(api, box, content, name=name)

    assert response.status_code == 400, response.content
    error = response.json()["error"]
    assert error["code"] == "invalid"
    assert error["message"].startswith("file: ")
    assert message_part.lower() in error["message"].lower()
    assert not Asset.objects.exists()
    assert stored_keys(bucket, box) == []


def test_upload_over_the_size_limit_is_rejected(api, box, bucket, settings):
    settings.GENBOX_UPLOAD_MAX_BYTES = 2000
    response = upload(api, box, b"x" * 2001, name="big.png")

    assert response.status_code == 400
    assert "upload limit" in response.json()["error"]["message"]
    assert response.json()["error"]["message"].startswith("file: ")
    assert not Asset.objects.exists()
    assert stored_keys(bucket, box) == []


def test_image_side_limit_is_configurable(api, box, bucket, settings):
    settings.GENBOX_IMAGE_MAX_SIDE = 50

    response = upload(api, box, samples.png_bytes(64, 10), name="a.png")

    assert response.status_code == 400
    assert "50" in response.json()["error"]["message"]


def test_upload_without_a_file_names_the_field(api, box):
    response = api.post(f"/api/boxes/{box.id}/upload/", {"prompt_text": "x"}, format="multipart")

    assert response.status_code == 400
    assert response.json()["error"]["details"] == {"file": ["No file was submitted."]}


def test_upload_into_another_users_box_is_404_and_stores_nothing(stranger_api, box, bucket):
    response = upload(stranger_api, box, samples.png_bytes(8, 8), name="a.png")

    assert response.status_code == 404
    assert not Asset.objects.exists()
    assert stored_keys(bucket, box) == []


def test_upload_into_a_missing_box_is_404(api):
    response = api.post(
        "/api/boxes/999999/upload/", {"file": SimpleUploadedFile("a.png", samples.png_bytes())}, format="multipart"
    )

    assert response.status_code == 404


def test_deleting_an_asset_removes_the_object_from_the_bucket(api, box, bucket, django_capture_on_commit_callbacks):
    asset_id = upload(api, box, samples.png_bytes(), name="a.png").json()["id"]
    assert len(stored_keys(bucket, box)) == 1

    with django_capture_on_commit_callbacks(execute=True):
        response = api.delete(f"/api/assets/{asset_id}/")

    assert response.status_code == 204
    assert not Asset.objects.filter(pk=asset_id).exists()
    assert stored_keys(bucket, box) == []


def test_deleting_a_box_removes_all_its_objects(api, box, bucket, django_capture_on_commit_callbacks):
    upload(api, box, samples.png_bytes(), name="a.png")
    upload(api, box, samples.mp4_bytes(), name="b.mp4")
    assert len(stored_keys(bucket, box)) == 2

    with django_capture_on_commit_callbacks(execute=True):
        assert api.delete(f"/api/boxes/{box.id}/").status_code == 204

    assert stored_keys(bucket, box) == []
    assert not Asset.objects.exists()


def test_local_file_storage_serves_uploads_under_media(api, box, settings, tmp_path):
    """The embedded default (no bucket): files under MEDIA_ROOT, file_url served by the app itself."""
    settings.USE_S3 = False
    settings.STORAGES = {
        **settings.STORAGES,
        "default": {
            "BACKEND": "django.core.files.storage.FileSystemStorage",
            "OPTIONS": {"location": str(tmp_path), "base_url": "/media/"},
        },
    }
    content = samples.jpeg_bytes(30, 20)

    body = upload(api, box, content, name="a.jpg").json()

    assert body["file_url"].startswith("http://testserver/media/boxes/")
    asset = Asset.objects.get(pk=body["id"])
    assert (tmp_path / asset.file.name).read_bytes() == content
    served = api.get(body["file_url"].removeprefix("http://testserver"))
    assert served.status_code == 200
    assert b"".join(served.streaming_content) == content


def test_presigned_urls_use_the_public_endpoint_when_it_differs(api, box, bucket, settings):
    """In docker compose the backend reaches MinIO as http://minio:9000, clients as http://localhost:9000."""
    settings.AWS_S3_PUBLIC_ENDPOINT_URL = "http://files.example.test:9000"

    file_url = upload(api, box, samples.png_bytes(), name="a.png").json()["file_url"]

    assert file_url.startswith(f"http://files.example.test:9000/{settings.AWS_STORAGE_BUCKET_NAME}/boxes/")
    assert "X-Amz-Signature=" in file_url
