"""Everything that writes assets."""

import hashlib
import logging

from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.files.uploadedfile import UploadedFile
from django.db import transaction
from django.utils import timezone

from apps.boxes.models import Box

from .media import MediaRejected, inspect_media
from .models import Asset
from .storage import delete_files_on_commit

logger = logging.getLogger(__name__)


def asset_create_upload(*, box: Box, uploaded_file: UploadedFile, prompt_text: str = "") -> Asset:
    """Store an uploaded image or video as a COMPLETED asset.

    The type is decided by decoding the file (``inspect_media``), never by its name or the client's
    Content-Type. Raises ``ValidationError({"file": ...})`` when the file is not accepted. The file is
    streamed from its temporary copy to storage; if saving the row fails, the stored object is removed.
    """
    try:
        info = inspect_media(uploaded_file.temporary_file_path(), max_image_side=settings.GENBOX_IMAGE_MAX_SIDE)
    except MediaRejected as exc:
        raise ValidationError({"file": str(exc)}) from exc

    now = timezone.now()
    asset = Asset(
        box=box,
        asset_type=info.asset_type,
        source=Asset.Source.UPLOAD,
        status=Asset.Status.COMPLETED,
        prompt_text=prompt_text,
        mime_type=info.mime_type,
        file_size=uploaded_file.size,
        width=info.width,
        height=info.height,
        sha256=getattr(uploaded_file, "sha256", None) or _sha256_of(uploaded_file),
        metadata={"original_filename": uploaded_file.name or ""},
        started_at=now,
        finished_at=now,
    )
    # Storage backends take the object's Content-Type from here: the detected type, not the client's claim.
    uploaded_file.content_type = info.mime_type
    asset.file.save(f"upload{info.extension}", uploaded_file, save=False)
    try:
        with transaction.atomic():
            asset.save()
    except Exception:
        asset.file.storage.delete(asset.file.name)
        raise
    logger.info("asset %s uploaded to box %s: %s, %s bytes", asset.pk, box.pk, info.mime_type, asset.file_size)
    return asset


def _sha256_of(uploaded_file: UploadedFile) -> str:
    digest = hashlib.sha256()
    for chunk in uploaded_file.chunks():
        digest.update(chunk)
    uploaded_file.seek(0)
    return digest.hexdigest()


@transaction.atomic
def asset_delete(*, asset: Asset) -> None:
    """Delete the asset and, once that commits, its stored file. Children keep existing without a parent."""
    name = asset.file.name
    asset.delete()
    delete_files_on_commit([name])
