"""The S3 storage over HTTP (moto's server): what lands in the bucket, for small and multipart files."""

import io

from django.conf import settings
from django.core.files import File
from django.core.files.storage import default_storage


def saved(bucket, content: bytes, content_type: str) -> tuple[bytes, str]:
    upload = File(io.BytesIO(content), name="x")
    upload.content_type = content_type
    name = default_storage.save("tests/storage/result.bin", upload)
    stored = bucket.get_object(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Key=name)
    return stored["Body"].read(), stored["ContentType"]


def test_a_small_file_is_stored_whole_with_its_type(bucket):
    content = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
    assert saved(bucket, content, "image/png") == (content, "image/png")


def test_a_file_above_the_multipart_threshold_is_stored_in_parts_whole(bucket):
    size = default_storage.transfer_config.multipart_threshold + 1024
    content = (bytes(range(256)) * (size // 256 + 1))[:size]
    assert saved(bucket, content, "video/mp4") == (content, "video/mp4")
