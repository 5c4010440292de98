"""Where asset files live: URLs for clients, deletion after commit, and the storage health check.

The storage itself is Django's default storage, chosen in settings: S3 (``S3Storage`` below, on django-storages)
when ``AWS_STORAGE_BUCKET_NAME`` is set, local files under ``var/media`` otherwise.
"""

import logging
import os
from collections.abc import Iterable
from functools import cache

from django.conf import settings
from django.core.files.storage import default_storage
from django.core.signals import setting_changed
from django.db import transaction
from storages.backends import s3 as storages_s3
from storages.utils import clean_name

logger = logging.getLogger(__name__)


class S3Storage(storages_s3.S3Storage):
    """django-storages' S3 storage, except that a file below the multipart threshold (every picture) is saved
    with one ``PutObject`` on the process's client, instead of a boto3 resource object and a transfer set up
    for each file: about a millisecond of a worker's CPU per result. Larger files stream in parts as before."""

    def _save(self, name, content):
        size = getattr(content, "size", None)
        if self.gzip or size is None or size >= self.transfer_config.multipart_threshold:
            return super()._save(name, content)
        cleaned = clean_name(name)
        key = self._normalize_name(cleaned)
        content.seek(0)
        params = self._get_write_parameters(key, content)
        self.connection.meta.client.put_object(Bucket=self.bucket_name, Key=key, Body=content.read(), **params)
        return cleaned


def file_url(name: str, *, request=None, expire: int | None = None) -> str | None:
    """A URL a client can fetch the file from.

    S3: a presigned URL valid ``AWS_QUERYSTRING_EXPIRE`` seconds (signed for ``AWS_S3_PUBLIC_ENDPOINT_URL``
    when set), or a plain URL on ``AWS_S3_CUSTOM_DOMAIN``.
    Local files: ``/media/…`` made absolute with ``PUBLIC_BASE_URL`` or the request's host.
    ``expire`` overrides the presigned lifetime (a provider may fetch a source image long after submission).
    """
    if not name:
        return None
    if settings.USE_S3:
        storage = _public_url_storage() if settings.AWS_S3_PUBLIC_ENDPOINT_URL else default_storage
        url = storage.url(name, expire=expire) if expire else storage.url(name)
    else:
        url = default_storage.url(name)
    if url.startswith(("http://", "https://")):
        return url
    if settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL + url
    return request.build_absolute_uri(url) if request is not None else url


@cache
def _public_url_storage():
    """The S3 storage as clients see it: same bucket and keys, another endpoint. Only used to sign URLs."""
    from storages.backends.s3 import S3Storage

    options = {**settings.STORAGES["default"]["OPTIONS"], "endpoint_url": settings.AWS_S3_PUBLIC_ENDPOINT_URL}
    return S3Storage(**options)


def _forget_public_storage(*, setting, **kwargs):
    if setting in {"STORAGES", "AWS_S3_PUBLIC_ENDPOINT_URL"}:
        _public_url_storage.cache_clear()


setting_changed.connect(_forget_public_storage)


def delete_files_on_commit(names: Iterable[str]) -> None:
    """Delete stored files once the surrounding transaction commits (a rollback keeps them)."""
    names = [name for name in names if name]
    if not names:
        return

    def _delete() -> None:
        for name in names:
            try:
                default_storage.delete(name)
            except Exception:  # a leftover object must not turn a finished delete into an error
                logger.exception("Could not delete stored file %s; remove it by hand", name)

    transaction.on_commit(_delete)


def check_storage() -> None:
    """Raise if the storage cannot be reached (bucket missing, credentials wrong, directory unwritable)."""
    if settings.USE_S3:
        default_storage.connection.meta.client.head_bucket(Bucket=default_storage.bucket_name)
        return
    location = default_storage.location
    os.makedirs(location, exist_ok=True)
    if not os.access(location, os.W_OK):
        raise OSError(f"media directory {location} is not writable")
