"""Images: PNG, JPEG and WEBP, decoded by Pillow with size and decompression-bomb checks."""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

from .common import UNSUPPORTED_MESSAGE, MediaInfo, MediaRejected, _read_at

_ACCEPTED_IMAGE_FORMATS: dict[str, tuple[str, str]] = {
    "PNG": ("image/png", ".png"),
    "JPEG": ("image/jpeg", ".jpg"),
    # Pillow reports a JPEG carrying extra pictures (common from cameras) as MPO; the file is still a
    # JPEG whose first picture every viewer shows.
    "MPO": ("image/jpeg", ".jpg"),
    "WEBP": ("image/webp", ".webp"),
}
# Formats Pillow may identify only so that the rejection can name them. They all have unambiguous magic
# numbers; formats with weak signatures (TGA, PCX, ...) are left out so random bytes are never mistaken
# for them, and so that no exotic parser ever sees untrusted input.
_NAMED_REJECTED_IMAGE_FORMATS = ("GIF", "BMP", "TIFF", "ICO", "PSD", "JPEG2000")
# Pillow opener IDs: MPO has no opener of its own (the JPEG opener returns it), so list openers apart.
_ACCEPTED_PILLOW_OPENERS = ("PNG", "JPEG", "WEBP")
_IDENTIFYING_PILLOW_OPENERS = (*_ACCEPTED_PILLOW_OPENERS, *_NAMED_REJECTED_IMAGE_FORMATS)

# The errors Pillow (and the codecs under it) raise for malformed data. Anything else is a bug and
# must surface as such. zlib.error comes from compressed PNG text/ICC chunks; DecompressionBombWarning
# is listed because deployments (and this project's pytest config) escalate RuntimeWarnings to errors.
_PILLOW_DATA_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    SyntaxError,
    ValueError,
    EOFError,
    struct.error,
    zlib.error,
    Image.DecompressionBombError,
    Image.DecompressionBombWarning,
)


def _has_accepted_image_magic(head: bytes) -> bool:
    """True if ``head`` starts like PNG, JPEG or WEBP, so a parse failure means corruption, not another format."""
    return (
        head.startswith(b"\x89PNG\r\n\x1a\n")
        or head.startswith(b"\xff\xd8\xff")
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )


def _size_rejection(width: int, height: int, max_image_side: int) -> MediaRejected | None:
    """The rejection for an image of this declared size, or None if the size is acceptable."""
    if width < 1 or height < 1:
        return MediaRejected(f"The image is truncated or corrupt: it declares a size of {width}×{height}.")
    if max(width, height) > max_image_side:
        return MediaRejected(f"The image is {width}×{height} pixels; the largest side allowed is {max_image_side}.")
    # Pillow only warns between MAX_IMAGE_PIXELS and twice that; we refuse outright instead of relying on
    # how the process's warning filters happen to be configured.
    pixel_limit = Image.MAX_IMAGE_PIXELS
    if pixel_limit is not None and width * height > pixel_limit:
        return MediaRejected(f"The image is {width}×{height} pixels; at most {pixel_limit:,} pixels are allowed.")
    return None


def _bomb_rejection(fh: BinaryIO, max_image_side: int) -> MediaRejected:
    """The rejection when Pillow refused to open an image as a decompression bomb.

    Pillow does not say which size it saw, so read the declared size from the header ourselves to give
    the uploader the same message as for any other oversized image.
    """
    size = _declared_image_size(fh)
    rejection = _size_rejection(*size, max_image_side) if size is not None else None
    if rejection is not None:
        return rejection
    return MediaRejected(
        f"The image has too many pixels to decode safely; the largest side allowed is {max_image_side}."
    )


# JPEG start-of-frame markers (SOF0-SOF15 minus DHT, JPG and DAC, which share the range).
_JPEG_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
# Markers without a length field.
_JPEG_STANDALONE_MARKERS = frozenset({0x01, *range(0xD0, 0xDA)})
_JPEG_MAX_SEGMENTS = 1000


def _declared_image_size(fh: BinaryIO) -> tuple[int, int] | None:
    """Best-effort ``(width, height)`` from a PNG, JPEG or WEBP header, with a few small bounded reads.

    Only used to word a message; returns None for anything it does not understand.
    """
    head = _read_at(fh, 0, 30)
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR" and len(head) >= 24:
        return struct.unpack(">II", head[16:24])
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP" and len(head) >= 30:
        chunk = head[12:16]
        if chunk == b"VP8X":  # 24-bit little-endian canvas width - 1 and height - 1
            return int.from_bytes(head[24:27], "little") + 1, int.from_bytes(head[27:30], "little") + 1
        if chunk == b"VP8L" and head[20] == 0x2F:  # 14-bit width - 1, then 14-bit height - 1
            bits = int.from_bytes(head[21:25], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
        if chunk == b"VP8 " and head[23:26] == b"\x9d\x01\x2a":  # key frame start code, then 14-bit sizes
            width, height = struct.unpack("<HH", head[26:30])
            return width & 0x3FFF, height & 0x3FFF
        return None
    if not head.startswith(b"\xff\xd8"):
        return None
    # Walk the JPEG marker segments up to the first start-of-frame, which holds the size.
    offset = 2
    for _ in range(_JPEG_MAX_SEGMENTS):
        segment = _read_at(fh, offset, 9)
        if len(segment) < 4 or segment[0] != 0xFF:
            return None
        marker = segment[1]
        if marker == 0xFF:  # fill byte before the marker
            offset += 1
            continue
        if marker in _JPEG_STANDALONE_MARKERS:
            offset += 2
            continue
        if marker in _JPEG_SOF_MARKERS:
            if len(segment) < 9:
                return None
            height, width = struct.unpack(">HH", segment[5:9])  # after length (2) and precision (1)
            return width, height
        (length,) = struct.unpack(">H", segment[2:4])
        if marker == 0xDA or length < 2:  # scan data reached without a frame header, or a bad length
            return None
        offset += 2 + length
    return None


def _pillow_detail(exc: BaseException) -> str:
    """A short, single-line description of a Pillow error for the rejection message."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200].rstrip(".")


def _inspect_image(fh: BinaryIO, head: bytes, *, max_image_side: int) -> MediaInfo:
    """Identify, size-check, verify and fully decode an image; see `inspect_media` for the contract."""
    try:
        # First open: header only. Image.open never decodes pixels, so the size check below happens
        # before anything proportional to width × height is allocated.
        with Image.open(fh, formats=_IDENTIFYING_PILLOW_OPENERS) as image:
            image_format = image.format or ""
            width, height = image.size
            if image_format not in _ACCEPTED_IMAGE_FORMATS:
                raise MediaRejected(f"{image_format} images are not supported; upload PNG, JPEG or WEBP.")
            size_rejection = _size_rejection(width, height, max_image_side)
            if size_rejection is not None:
                raise size_rejection
            # verify() checks structure and checksums (PNG CRCs) without decoding; it leaves the image
            # unusable, hence the second open below.
            image.verify()
        fh.seek(0)
        # Second open: decode every pixel. With LOAD_TRUNCATED_IMAGES left at its default (False), a
        # cut-off file raises here instead of being silently padded with grey.
        with Image.open(fh, formats=_ACCEPTED_PILLOW_OPENERS) as image:
            if (image.format, image.size) != (image_format, (width, height)):
                # Cannot happen for an unchanged file; guards against it changing between the two opens.
                raise MediaRejected("The image is truncated or corrupt: it changed while being checked.")
            image.load()
    except MediaRejected:
        raise
    except UnidentifiedImageError as exc:
        if _has_accepted_image_magic(head):
            raise MediaRejected("The image is truncated or corrupt: its header could not be read.") from exc
        raise MediaRejected(UNSUPPORTED_MESSAGE) from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise _bomb_rejection(fh, max_image_side) from exc
    except _PILLOW_DATA_ERRORS as exc:
        raise MediaRejected(f"The image is truncated or corrupt: {_pillow_detail(exc)}.") from exc

    mime_type, extension = _ACCEPTED_IMAGE_FORMATS[image_format]
    return MediaInfo("IMAGE", mime_type, extension, width, height)
