"""Decide what an uploaded file really is by decoding it, never by trusting its name.

`inspect_media` is the single entry point. It accepts PNG, JPEG and WEBP images (decoded by Pillow)
and MP4, MOV and WebM videos (checked by walking their container structure) and rejects everything
else with a `MediaRejected` whose message a person can act on.

This module is deliberately free of Django so that it can run in a worker, a management command or a
plain unit test. It never changes Pillow's global settings (``LOAD_TRUNCATED_IMAGES``,
``MAX_IMAGE_PIXELS``) nor the process-wide warning filters.

Limits chosen here (all enforced before anything large is read or allocated):

* images: the longest side must be at most ``max_image_side`` and the pixel count at most
  ``PIL.Image.MAX_IMAGE_PIXELS`` (when Pillow has that limit set);
* ISO BMFF (MP4/MOV): at most ``MAX_TOP_LEVEL_ENTRIES`` top-level boxes and a ``moov`` box of at most
  ``MAX_MOOV_BYTES``;
* WebM: an EBML header of at most ``MAX_EBML_HEADER_BYTES``, at most ``MAX_TOP_LEVEL_ENTRIES`` Segment
  children and a Tracks element of at most ``MAX_TRACKS_BYTES``.

Video files are read with seeks and small bounded reads only, so a 500 MB upload costs a few kilobytes
of memory plus, at most, its ``moov``/Tracks metadata.
"""

from __future__ import annotations

import os

from .common import (
    EMPTY_MESSAGE,
    HEIF_MESSAGE,
    MATROSKA_MESSAGE,
    MAX_EBML_HEADER_BYTES,
    MAX_MOOV_BYTES,
    MAX_TOP_LEVEL_ENTRIES,
    MAX_TRACKS_BYTES,
    NO_MOOV_MESSAGE,
    NO_VIDEO_TRACK_MESSAGE,
    UNSUPPORTED_MESSAGE,
    MediaInfo,
    MediaRejected,
)
from .images import _inspect_image
from .video import _EBML_MAGIC, _ISOBMFF_START_BOXES, _inspect_isobmff, _inspect_webm

__all__ = [
    "MAX_EBML_HEADER_BYTES",
    "MAX_MOOV_BYTES",
    "MAX_TOP_LEVEL_ENTRIES",
    "MAX_TRACKS_BYTES",
    "EMPTY_MESSAGE",
    "HEIF_MESSAGE",
    "MATROSKA_MESSAGE",
    "NO_MOOV_MESSAGE",
    "NO_VIDEO_TRACK_MESSAGE",
    "UNSUPPORTED_MESSAGE",
    "MediaInfo",
    "MediaRejected",
    "inspect_media",
]


def inspect_media(path: str | os.PathLike[str], *, max_image_side: int) -> MediaInfo:
    """Identify the file at ``path`` by its content and return what it is.

    Contract:
    * returns a `MediaInfo` only for a PNG/JPEG/WEBP image that decodes completely and whose sides are at
      most ``max_image_side``, or for an MP4/MOV/WebM file whose container structure is complete and
      which has a video track;
    * raises `MediaRejected` (message meant for the uploader) for anything else, including empty,
      truncated, corrupt and oversized files;
    * ``max_image_side`` applies to images only; a video's size is reported, not limited;
    * raises `ValueError` if ``max_image_side`` is not a positive int, and lets `OSError` from opening
      or reading ``path`` itself propagate (a missing file is the caller's bug, not the uploader's).
    """
    if isinstance(max_image_side, bool) or not isinstance(max_image_side, int) or max_image_side < 1:
        raise ValueError(f"max_image_side must be a positive int, got {max_image_side!r}")

    with open(path, "rb") as fh:
        file_size = os.fstat(fh.fileno()).st_size
        if file_size == 0:
            raise MediaRejected(EMPTY_MESSAGE)
        head = fh.read(16)
        fh.seek(0)
        # Dispatch on magic numbers only; each branch then fully validates its own format.
        if head[:4] == _EBML_MAGIC:
            return _inspect_webm(fh, file_size)
        if len(head) >= 8 and head[4:8] in _ISOBMFF_START_BOXES:
            return _inspect_isobmff(fh, file_size)
        return _inspect_image(fh, head, max_image_side=max_image_side)
