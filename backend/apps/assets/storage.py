"""Where asset files live: URLs for clients, deletion after commit, and the storage health check.

The storage itself is Django's default storage, chosen in settings: S3 (django-storages) when
``AWS_STORAGE_BUCKET_NAME`` is set, local files under ``var/media`` otherwise.
"""

import logging
from collections.abc import Iterable

from django.conf import settings
from django.core.files.storage import default_storage
from django.db import transaction

logger = logging.getLogger(__name__)


def file_url(name: str, *, request=None) -> str | None:
    """A URL a client can fetch the file from.

    S3: a presigned URL valid ``AWS_QUERYSTRING_EXPIRE`` seconds, or a plain URL on ``AWS_S3_CUSTOM_DOMAIN``.
    Local files: ``/media/…`` made absolute with ``PUBLIC_BASE_URL`` or the request's host.
    """
    if not name:
        return None
    url = default_storage.url(name)
    if url.startswith(("http://", "https://")):
        return url
    if settings.PUBLIC_BASE_URL:
        return settings.PUBLIC_BASE_URL + url
    return request.build_absolute_uri(url) if request is not None else url


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
    import os

    location = default_storage.location
    os.makedirs(location, exist_ok=True)
    if not os.access(location, os.W_OK):
        raise OSError(f"media directory {location} is not writable")
