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
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO

from PIL import Image, UnidentifiedImageError

__all__ = [
    "MAX_EBML_HEADER_BYTES",
    "MAX_MOOV_BYTES",
    "MAX_TOP_LEVEL_ENTRIES",
    "MAX_TRACKS_BYTES",
    "MediaInfo",
    "MediaRejected",
    "inspect_media",
]

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


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------------
# Shared helpers for the video containers
# --------------------------------------------------------------------------------------------------


def _video_truncated(detail: str) -> MediaRejected:
    return MediaRejected(f"The video is truncated or corrupt: {detail}.")


def _read_at(fh: BinaryIO, offset: int, length: int) -> bytes:
    """Read at most ``length`` bytes at ``offset`` (callers bound ``length``; never reads the whole file)."""
    fh.seek(offset)
    return fh.read(length)


def _read_exact(fh: BinaryIO, offset: int, length: int, what: str) -> bytes:
    data = _read_at(fh, offset, length)
    if len(data) != length:
        raise _video_truncated(f"the {what} is cut off")
    return data


def _fourcc(code: bytes) -> str:
    """A box type as text for messages, with unprintable bytes escaped."""
    return "".join(chr(byte) if 0x20 <= byte < 0x7F else f"\\x{byte:02x}" for byte in code)


# --------------------------------------------------------------------------------------------------
# ISO base media file format: MP4 and QuickTime MOV
# --------------------------------------------------------------------------------------------------

# Boxes a file may begin with: ftyp for ISO files, and the atoms pre-ftyp QuickTime files start with.
_ISOBMFF_START_BOXES = frozenset({b"ftyp", b"wide", b"free", b"skip", b"mdat", b"moov", b"pnot"})
_QUICKTIME_BRAND = b"qt  "
_HEIF_BRANDS = frozenset({b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1", b"msf1", b"avif", b"avis"})

# tkhd payload length (after the box header) per version; width and height are its last 8 bytes.
_TKHD_LENGTH = {0: 84, 1: 96}
# Offset of the 16-bit width within a VisualSampleEntry (from the start of the entry's own header).
_VISUAL_SAMPLE_ENTRY_WIDTH_OFFSET = 32


def _inspect_isobmff(fh: BinaryIO, file_size: int) -> MediaInfo:
    """Walk the top-level boxes, then read ``moov`` for a video track; see `inspect_media`."""
    offset = 0
    entries = 0
    major_brand: bytes | None = None
    moov: tuple[int, int] | None = None  # (payload offset, payload length) of the first moov
    while offset < file_size:
        entries += 1
        if entries > MAX_TOP_LEVEL_ENTRIES:
            raise MediaRejected(
                f"The video has more than {MAX_TOP_LEVEL_ENTRIES:,} top-level boxes; it cannot be checked."
            )
        header = _read_at(fh, offset, min(16, file_size - offset))
        if len(header) < 8:
            raise _video_truncated("the last box header is cut off")
        size, box_type = struct.unpack(">I4s", header[:8])
        header_length = 8
        if size == 1:
            if len(header) < 16:
                raise _video_truncated(f"the '{_fourcc(box_type)}' box header is cut off")
            (size,) = struct.unpack(">Q", header[8:16])
            header_length = 16
        elif size == 0:
            size = file_size - offset  # "extends to the end of the file"
        if size < header_length:
            raise _video_truncated(f"the '{_fourcc(box_type)}' box has an invalid size")
        if offset + size > file_size:
            raise _video_truncated(f"the '{_fourcc(box_type)}' box runs past the end of the file")

        if offset == 0 and box_type not in _ISOBMFF_START_BOXES:
            raise MediaRejected(UNSUPPORTED_MESSAGE)
        if box_type == b"ftyp" and major_brand is None:
            brands = _read_at(fh, offset + header_length, min(size - header_length, _FTYP_READ_BYTES))
            if len(brands) < 4:
                raise _video_truncated("the 'ftyp' box is too short")
            major_brand = brands[:4]
            # Still images in an ISO container: say so right away rather than "no video track".
            if major_brand in _HEIF_BRANDS:
                raise MediaRejected(HEIF_MESSAGE)
        elif box_type == b"moov" and moov is None:
            moov = (offset + header_length, size - header_length)
        offset += size

    if moov is None:
        raise MediaRejected(NO_MOOV_MESSAGE)
    moov_offset, moov_length = moov
    if moov_length > MAX_MOOV_BYTES:
        raise MediaRejected(
            f"The video's moov box is larger than {MAX_MOOV_BYTES // (1024 * 1024)} MiB; it cannot be checked."
        )
    found, width, height = _find_video_track(_read_exact(fh, moov_offset, moov_length, "'moov' box"))
    if not found:
        raise MediaRejected(NO_VIDEO_TRACK_MESSAGE)

    # Files without ftyp predate it and are QuickTime by definition.
    if major_brand is None or major_brand == _QUICKTIME_BRAND:
        return MediaInfo("VIDEO", "video/quicktime", ".mov", width, height)
    return MediaInfo("VIDEO", "video/mp4", ".mp4", width, height)


def _iter_boxes(buf: bytes, start: int, end: int) -> Iterator[tuple[bytes, int, int]]:
    """Yield ``(type, payload_start, payload_end)`` for the boxes in ``buf[start:end]``.

    Fewer than 8 trailing bytes are ignored: QuickTime ends some atom lists with a 32-bit zero terminator.
    A child that overruns its parent raises `MediaRejected`.
    """
    pos = start
    while end - pos >= 8:
        size, box_type = struct.unpack_from(">I4s", buf, pos)
        header_length = 8
        if size == 1:
            if end - pos < 16:
                raise _video_truncated(f"the '{_fourcc(box_type)}' box header is cut off")
            (size,) = struct.unpack_from(">Q", buf, pos + 8)
            header_length = 16
        elif size == 0:
            size = end - pos
        if size < header_length or pos + size > end:
            raise _video_truncated(f"the '{_fourcc(box_type)}' box does not fit inside its parent")
        yield box_type, pos + header_length, pos + size
        pos += size


def _find_child(buf: bytes, start: int, end: int, box_type: bytes) -> tuple[int, int] | None:
    for child_type, child_start, child_end in _iter_boxes(buf, start, end):
        if child_type == box_type:
            return child_start, child_end
    return None


def _find_video_track(moov: bytes) -> tuple[bool, int | None, int | None]:
    """Return ``(found, width, height)`` for the first trak whose mdia/hdlr handler is ``vide``.

    The size comes from tkhd; if tkhd states zero (some muxers leave it unset), the first visual sample
    entry in mdia/minf/stbl/stsd is used instead.
    """
    for box_type, trak_start, trak_end in _iter_boxes(moov, 0, len(moov)):
        if box_type != b"trak":
            continue
        mdia = _find_child(moov, trak_start, trak_end, b"mdia")
        if mdia is None or _handler_type(moov, *mdia) != b"vide":
            continue
        size: tuple[int, int] | None = None
        tkhd = _find_child(moov, trak_start, trak_end, b"tkhd")
        if tkhd is not None:
            size = _tkhd_size(moov, *tkhd)
        if size is None:
            size = _sample_entry_size(moov, *mdia)
        return (True, *size) if size is not None else (True, None, None)
    return False, None, None


def _handler_type(buf: bytes, mdia_start: int, mdia_end: int) -> bytes | None:
    hdlr = _find_child(buf, mdia_start, mdia_end, b"hdlr")
    # hdlr payload: version/flags (4), pre_defined or QuickTime component type (4), handler_type (4).
    if hdlr is None or hdlr[1] - hdlr[0] < 12:
        return None
    return buf[hdlr[0] + 8 : hdlr[0] + 12]


def _positive_size(width: int, height: int) -> tuple[int, int] | None:
    return (width, height) if width > 0 and height > 0 else None


def _tkhd_size(buf: bytes, start: int, end: int) -> tuple[int, int] | None:
    """Width/height from a tkhd payload: 16.16 fixed point, the last 8 bytes of the version's layout."""
    length = _TKHD_LENGTH.get(buf[start]) if end > start else None
    if length is None or end - start < length:
        return None
    width, height = struct.unpack_from(">II", buf, start + length - 8)
    # Round to the nearest pixel rather than truncating a fractional presentation size.
    return _positive_size((width + 0x8000) >> 16, (height + 0x8000) >> 16)


def _sample_entry_size(buf: bytes, mdia_start: int, mdia_end: int) -> tuple[int, int] | None:
    minf = _find_child(buf, mdia_start, mdia_end, b"minf")
    stbl = _find_child(buf, *minf, b"stbl") if minf else None
    stsd = _find_child(buf, *stbl, b"stsd") if stbl else None
    if stsd is None:
        return None
    # stsd payload: version/flags (4), entry_count (4), then sample entries with ordinary box headers.
    entry = stsd[0] + 8
    if stsd[1] - entry < _VISUAL_SAMPLE_ENTRY_WIDTH_OFFSET + 4:
        return None
    return _positive_size(*struct.unpack_from(">HH", buf, entry + _VISUAL_SAMPLE_ENTRY_WIDTH_OFFSET))


# --------------------------------------------------------------------------------------------------
# EBML: WebM (and Matroska, which is recognised only to be rejected by name)
# --------------------------------------------------------------------------------------------------

_EBML_MAGIC = b"\x1a\x45\xdf\xa3"
_ID_EBML = 0x1A45DFA3
_ID_DOC_TYPE = 0x4282
_ID_SEGMENT = 0x18538067
_ID_TRACKS = 0x1654AE6B
_ID_CLUSTER = 0x1F43B675
_ID_TRACK_ENTRY = 0xAE
_ID_TRACK_TYPE = 0x83
_ID_VIDEO = 0xE0
_ID_PIXEL_WIDTH = 0xB0
_ID_PIXEL_HEIGHT = 0xBA
_ID_VOID = 0xEC
_ID_CRC32 = 0xBF
_TRACK_TYPE_VIDEO = 1
# Matroska's default DocType, used when the header omits the element.
_DEFAULT_DOC_TYPE = "matroska"


def _parse_ebml_id(buf: bytes, pos: int, end: int) -> tuple[int, int]:
    """Return ``(element_id, length)`` of the ID at ``buf[pos:end]``; IDs keep their length marker bits."""
    if pos >= end:
        raise _video_truncated("an element header is cut off")
    first = buf[pos]
    length = 9 - first.bit_length()  # leading zero bits + 1
    if first == 0 or length > 4:
        raise _video_truncated("an element ID is invalid")
    if pos + length > end:
        raise _video_truncated("an element header is cut off")
    return int.from_bytes(buf[pos : pos + length], "big"), length


def _parse_ebml_size(buf: bytes, pos: int, end: int) -> tuple[int | None, int]:
    """Return ``(size, length)`` of the size at ``buf[pos:end]``; ``size`` is None for "unknown" (all ones)."""
    if pos >= end:
        raise _video_truncated("an element header is cut off")
    first = buf[pos]
    if first == 0:
        raise _video_truncated("an element size is invalid")
    length = 9 - first.bit_length()
    if pos + length > end:
        raise _video_truncated("an element header is cut off")
    value = int.from_bytes(buf[pos : pos + length], "big") & ((1 << (7 * length)) - 1)
    if value == (1 << (7 * length)) - 1:
        return None, length
    return value, length


def _read_element_header(fh: BinaryIO, offset: int, limit: int) -> tuple[int, int | None, int]:
    """Read the element header at ``offset`` (not past ``limit``): ``(id, size or None, payload_offset)``."""
    buf = _read_at(fh, offset, min(12, limit - offset))  # ID ≤ 4 bytes + size ≤ 8 bytes
    element_id, id_length = _parse_ebml_id(buf, 0, len(buf))
    size, size_length = _parse_ebml_size(buf, id_length, len(buf))
    return element_id, size, offset + id_length + size_length


def _iter_elements(buf: bytes, start: int, end: int) -> Iterator[tuple[int, int, int]]:
    """Yield ``(id, payload_start, payload_end)`` for the elements in ``buf[start:end]``.

    Elements inside buffered metadata must have known sizes that fit their parent.
    """
    pos = start
    while pos < end:
        element_id, id_length = _parse_ebml_id(buf, pos, end)
        size, size_length = _parse_ebml_size(buf, pos + id_length, end)
        payload = pos + id_length + size_length
        if size is None or payload + size > end:
            raise _video_truncated(f"element 0x{element_id:X} does not fit inside its parent")
        yield element_id, payload, payload + size
        pos = payload + size


def _ebml_uint(buf: bytes, start: int, end: int) -> int:
    if end - start > 8:
        raise _video_truncated("an integer element is too long")
    return int.from_bytes(buf[start:end], "big")


def _inspect_webm(fh: BinaryIO, file_size: int) -> MediaInfo:
    """Check the EBML header's DocType, then walk the Segment to its Tracks; see `inspect_media`."""
    element_id, size, payload = _read_element_header(fh, 0, file_size)
    if element_id != _ID_EBML or size is None or size > MAX_EBML_HEADER_BYTES:
        raise MediaRejected(UNSUPPORTED_MESSAGE)
    header = _read_exact(fh, payload, size, "EBML header")
    doc_type = _DEFAULT_DOC_TYPE
    for child_id, child_start, child_end in _iter_elements(header, 0, len(header)):
        if child_id == _ID_DOC_TYPE:
            doc_type = header[child_start:child_end].rstrip(b"\x00").decode("ascii", "replace")
    if doc_type == "matroska":
        raise MediaRejected(MATROSKA_MESSAGE)
    if doc_type != "webm":
        raise MediaRejected(UNSUPPORTED_MESSAGE)

    # Find the Segment; only Void and CRC-32 elements may sit between it and the EBML header.
    offset = payload + size
    while True:
        if offset >= file_size:
            raise _video_truncated("the Segment is missing")
        element_id, size, payload = _read_element_header(fh, offset, file_size)
        if element_id == _ID_SEGMENT:
            break
        if element_id not in (_ID_VOID, _ID_CRC32) or size is None:
            raise _video_truncated(f"element 0x{element_id:X} appears where the Segment should start")
        offset = payload + size
    # An unknown-size Segment (live recordings, MediaRecorder) runs to the end of the file.
    segment_end = file_size if size is None else payload + size
    if segment_end > file_size:
        raise _video_truncated("the Segment runs past the end of the file")

    found = False
    width: int | None = None
    height: int | None = None
    offset = payload
    entries = 0
    # Keep walking after Tracks so that a Cluster cut off at the end of the file is reported.
    while offset < segment_end:
        entries += 1
        if entries > MAX_TOP_LEVEL_ENTRIES:
            raise MediaRejected(
                f"The video has more than {MAX_TOP_LEVEL_ENTRIES:,} top-level elements; it cannot be checked."
            )
        element_id, size, payload = _read_element_header(fh, offset, segment_end)
        if element_id == _ID_CLUSTER and not found:
            # Tracks must precede the media data; a file without them has nothing we can play.
            raise MediaRejected(NO_VIDEO_TRACK_MESSAGE)
        if element_id == _ID_TRACKS and not found:
            if size is None:
                raise _video_truncated("the Tracks element has no size")
            if size > MAX_TRACKS_BYTES:
                raise MediaRejected(
                    f"The video's track list is larger than {MAX_TRACKS_BYTES // (1024 * 1024)} MiB; "
                    "it cannot be checked."
                )
            if payload + size > segment_end:
                raise _video_truncated("the Tracks element runs past the end of the file")
            tracks = _read_exact(fh, payload, size, "Tracks element")
            found, width, height = _find_webm_video_track(tracks)
            if not found:
                raise MediaRejected(NO_VIDEO_TRACK_MESSAGE)
        if size is None:
            # An unknown-size child (a live Cluster) can only be skipped by parsing inside it; the
            # structure up to here is sound, which is all we promise for streamed files.
            break
        if payload + size > segment_end:
            raise _video_truncated(f"element 0x{element_id:X} runs past the end of the file")
        offset = payload + size

    if not found:
        raise MediaRejected(NO_VIDEO_TRACK_MESSAGE)
    return MediaInfo("VIDEO", "video/webm", ".webm", width, height)


def _find_webm_video_track(tracks: bytes) -> tuple[bool, int | None, int | None]:
    """Return ``(found, width, height)`` for the first TrackEntry whose TrackType is video."""
    for entry_id, entry_start, entry_end in _iter_elements(tracks, 0, len(tracks)):
        if entry_id != _ID_TRACK_ENTRY:
            continue
        track_type: int | None = None
        width: int | None = None
        height: int | None = None
        for child_id, child_start, child_end in _iter_elements(tracks, entry_start, entry_end):
            if child_id == _ID_TRACK_TYPE:
                track_type = _ebml_uint(tracks, child_start, child_end)
            elif child_id == _ID_VIDEO:
                for video_id, video_start, video_end in _iter_elements(tracks, child_start, child_end):
                    if video_id == _ID_PIXEL_WIDTH:
                        width = _ebml_uint(tracks, video_start, video_end) or None
                    elif video_id == _ID_PIXEL_HEIGHT:
                        height = _ebml_uint(tracks, video_start, video_end) or None
        if track_type == _TRACK_TYPE_VIDEO:
            return True, width, height
    return False, None, None
