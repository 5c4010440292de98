"""What inspection returns or raises, its limits, its messages and bounded reads (shared by images and video)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import BinaryIO

# The moov box holds the sample tables, which grow with duration; 64 MiB covers hours of video while
# keeping a hostile file from making us buffer hundreds of megabytes.
MAX_MOOV_BYTES = 64 * 1024 * 1024
# WebM track headers are small (codec private data is at most a few kilobytes in practice).
MAX_TRACKS_BYTES = 16 * 1024 * 1024
# The EBML header holds a handful of tiny fields.
MAX_EBML_HEADER_BYTES = 4096
# Every box/element costs one seek and a 16-byte read; cap the walk so that a file made of millions of
# empty boxes cannot keep a worker busy. Real files (even fragmented MP4) have far fewer.
MAX_TOP_LEVEL_ENTRIES = 100_000
# Only the major brand is needed from ftyp; never read more of it than this.
_FTYP_READ_BYTES = 64

EMPTY_MESSAGE = "The file is empty."
UNSUPPORTED_MESSAGE = "The file is not a supported image (PNG, JPEG, WEBP) or video (MP4, WebM, MOV)."
NO_VIDEO_TRACK_MESSAGE = "The file has no video track."
NO_MOOV_MESSAGE = "The video has no moov box; it is incomplete or not a playable MP4/MOV."
HEIF_MESSAGE = "HEIF/AVIF images are not supported; upload PNG, JPEG or WEBP."
MATROSKA_MESSAGE = "Matroska (.mkv) is not supported; upload MP4, WebM or MOV."


@dataclass(frozen=True)
class MediaInfo:
    """What an accepted file turned out to be.

    ``width``/``height`` are the stored pixel size (images) or the track header size (videos). They are
    not rotated by EXIF orientation or by a video track matrix. They are ``None`` only for a video whose
    headers do not state a size.
    """

    asset_type: str  # "IMAGE" or "VIDEO"
    mime_type: str  # image/png, image/jpeg, image/webp, video/mp4, video/webm, video/quicktime
    extension: str  # ".png", ".jpg", ".webp", ".mp4", ".webm", ".mov"
    width: int | None
    height: int | None


class MediaRejected(Exception):
    """The file is not an accepted image or video.

    ``str(exc)`` is one sentence a person can act on, e.g. "The file is empty.",
    "The image is truncated or corrupt: ...", "The image is 5000×300 pixels; the largest side allowed is 4096.",
    "GIF images are not supported; upload PNG, JPEG or WEBP.",
    "The file is not a supported image (PNG, JPEG, WEBP) or video (MP4, WebM, MOV)."
    """


def _read_at(fh: BinaryIO, offset: int, length: int) -> bytes:
    """Read at most ``length`` bytes at ``offset`` (callers bound ``length``; never reads the whole file)."""
    fh.seek(offset)
    return fh.read(length)
