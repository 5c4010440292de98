"""Video containers: MP4/MOV (ISO BMFF) and WebM (EBML), walked with small bounded reads."""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import BinaryIO

from .common import (
    _FTYP_READ_BYTES,
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
    _read_at,
)

# --------------------------------------------------------------------------------------------------
# Shared helpers for the video containers
# --------------------------------------------------------------------------------------------------


def _video_truncated(detail: str) -> MediaRejected:
    return MediaRejected(f"The video is truncated or corrupt: {detail}.")


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
