"""Receiving uploaded files: straight to a temporary file on disk, cut off at the size limit.

Django hands uploads to ``FILE_UPLOAD_HANDLERS``; Genbox uses only this one (see settings), so no upload is
ever held whole in memory. The SHA-256 and the size are computed while the bytes arrive, so the file is not
read again to hash it.
"""

import hashlib

from django.conf import settings
from django.core.files.uploadhandler import TemporaryFileUploadHandler
from rest_framework.exceptions import ValidationError

# Multipart framing and the small text fields around the file.
_FORM_OVERHEAD_BYTES = 1024 * 1024


def human_size(num_bytes: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if num_bytes < 1024 or unit == "GB":
            return f"{num_bytes:g} {unit}" if unit == "bytes" else f"{num_bytes:.4g} {unit}"
        num_bytes /= 1024
    raise AssertionError("unreachable")


def too_large_error(field_name: str) -> ValidationError:
    limit = settings.GENBOX_UPLOAD_MAX_BYTES
    return ValidationError({field_name: [f"The file is larger than the {human_size(limit)} upload limit."]})


class LimitedTemporaryFileUploadHandler(TemporaryFileUploadHandler):
    """Streams each file to a temp file, hashing as it goes; rejects a body over ``GENBOX_UPLOAD_MAX_BYTES``.

    The rejection is a DRF ``ValidationError`` on the file's field, so the API answers 400 in the usual shape.
    """

    def handle_raw_input(self, input_data, META, content_length, boundary, encoding=None):
        # Refuse before reading a byte when the declared body is already too large.
        if content_length and content_length > settings.GENBOX_UPLOAD_MAX_BYTES + _FORM_OVERHEAD_BYTES:
            raise too_large_error("file")
        return None

    def new_file(self, field_name, *args, **kwargs):
        super().new_file(field_name, *args, **kwargs)
        self._sha256 = hashlib.sha256()
        self._received = 0

    def receive_data_chunk(self, raw_data, start):
        self._received += len(raw_data)
        if self._received > settings.GENBOX_UPLOAD_MAX_BYTES:
            self.file.close()
            raise too_large_error(self.field_name)
        self._sha256.update(raw_data)
        return super().receive_data_chunk(raw_data, start)

    def file_complete(self, file_size):
        uploaded = super().file_complete(file_size)
        uploaded.sha256 = self._sha256.hexdigest()
        return uploaded
