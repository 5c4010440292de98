"""Small, valid sample media files built in memory for tests, without external tools.

Images are encoded by Pillow; containers (MP4, MOV, HEIC, WebM, MKV) are assembled box by box / element
by element, so each test can say exactly which structure it exercises. Every builder is a pure function
returning ``bytes``; truncated or corrupted variants are made by the tests themselves by slicing.
The video samples are structurally valid containers holding a few placeholder bytes of "media"; they
are meant for parsers that check structure, not for players.
"""

from __future__ import annotations

import io
import struct
import zlib
from functools import lru_cache

from PIL import Image

# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------


def _pattern_image(width: int, height: int) -> Image.Image:
    """A deterministic RGB pattern: varied enough that lossy encoders emit real entropy-coded data."""
    pixels = bytearray()
    for y in range(height):
        for x in range(width):
            pixels += bytes(((x * 7 + y * 3) % 256, (x * y) % 256, (x * 13 ^ y * 5) % 256))
    return Image.frombytes("RGB", (width, height), bytes(pixels))


def _encode(image: Image.Image, image_format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format, **options)
    return buffer.getvalue()


def png_bytes(width: int = 64, height: int = 48) -> bytes:
    return _encode(_pattern_image(width, height), "PNG")


def jpeg_bytes(width: int = 64, height: int = 48) -> bytes:
    return _encode(_pattern_image(width, height), "JPEG", quality=90)


def webp_bytes(width: int = 64, height: int = 48) -> bytes:
    return _encode(_pattern_image(width, height), "WEBP", quality=80)


def mpo_bytes(width: int = 64, height: int = 48) -> bytes:
    """A JPEG carrying a second picture (multi-picture format), as some cameras write; Pillow calls it MPO."""
    first = _pattern_image(width, height)
    return _encode(first, "MPO", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_LEFT_RIGHT)])


def animated_png_bytes(width: int = 32, height: int = 24) -> bytes:
    first = _pattern_image(width, height)
    return _encode(first, "PNG", save_all=True, append_images=[first.transpose(Image.Transpose.FLIP_TOP_BOTTOM)])


def gif_bytes(width: int = 16, height: int = 16) -> bytes:
    return _encode(_pattern_image(width, height).convert("P"), "GIF")


def bmp_bytes(width: int = 16, height: int = 16) -> bytes:
    return _encode(_pattern_image(width, height), "BMP")


def _png_chunk(chunk_type: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + chunk_type + data + struct.pack(">I", zlib.crc32(chunk_type + data))


@lru_cache(maxsize=8)
def png_bomb_bytes(width: int = 30000, height: int = 30000) -> bytes:
    """A fully valid 1-bit greyscale PNG of ``width`` × ``height`` black pixels.

    It is a real decompression bomb: ~100 KB on disk for 30000×30000, gigabytes once decoded. The
    scanlines are streamed through zlib so building it never holds the raw image in memory.
    """
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)  # 1-bit greyscale, no interlace
    row = bytes(1 + (width + 7) // 8)  # filter byte 0 + packed pixels
    rows_per_chunk = max(1, (1 << 20) // len(row))
    compressor = zlib.compressobj(9)
    parts: list[bytes] = []
    remaining = height
    while remaining:
        count = min(rows_per_chunk, remaining)
        parts.append(compressor.compress(row * count))
        remaining -= count
    parts.append(compressor.flush())
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", b"".join(parts))
        + _png_chunk(b"IEND", b"")
    )


def jpeg_declaring_size(width: int, height: int) -> bytes:
    """A small JPEG whose frame header (SOF0) claims ``width`` × ``height``: a bomb that cannot decode."""
    data = bytearray(jpeg_bytes(16, 16))
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", height, width)  # after marker (2), length (2), precision (1)
    return bytes(data)


def webp_declaring_size(width: int, height: int) -> bytes:
    """A small lossy WEBP whose VP8 key frame header claims ``width`` × ``height`` (each at most 16383)."""
    data = bytearray(webp_bytes(16, 16))
    assert data[12:16] == b"VP8 " and data[23:26] == b"\x9d\x01\x2a", "expected a simple lossy WEBP"
    data[26:30] = struct.pack("<HH", width, height)  # 14-bit sizes, scale bits left at zero
    return bytes(data)


# --------------------------------------------------------------------------------------------------
# ISO base media file format (MP4, MOV, M4A, HEIC)
# --------------------------------------------------------------------------------------------------

_UNITY_MATRIX = struct.pack(">9I", 0x10000, 0, 0, 0, 0x10000, 0, 0, 0, 0x40000000)


def box(box_type: bytes, *children: bytes) -> bytes:
    """An ISO BMFF box with a 32-bit size around the concatenated ``children`` payload."""
    payload = b"".join(children)
    return struct.pack(">I", 8 + len(payload)) + box_type + payload


def large_box(box_type: bytes, *children: bytes) -> bytes:
    """The same box written with size == 1 and a 64-bit largesize."""
    payload = b"".join(children)
    return struct.pack(">I", 1) + box_type + struct.pack(">Q", 16 + len(payload)) + payload


def _full_box(box_type: bytes, version: int, flags: int, *fields: bytes) -> bytes:
    return box(box_type, struct.pack(">I", (version << 24) | flags), *fields)


def _ftyp(major: bytes, minor: int, *compatible: bytes) -> bytes:
    return box(b"ftyp", major, struct.pack(">I", minor), *compatible)


def _mvhd() -> bytes:
    return _full_box(
        b"mvhd", 0, 0,
        struct.pack(">IIII", 0, 0, 1000, 1000),  # creation, modification, timescale, duration
        struct.pack(">IH", 0x10000, 0x100), bytes(10),  # rate 1.0, volume 1.0, reserved
        _UNITY_MATRIX, bytes(24), struct.pack(">I", 2),  # matrix, pre_defined, next_track_ID
    )  # fmt: skip


def _tkhd(width: int, height: int, version: int) -> bytes:
    if version == 1:
        times = struct.pack(">QQIIQ", 0, 0, 1, 0, 1000)  # creation, modification, track_ID, reserved, duration
    else:
        times = struct.pack(">IIIII", 0, 0, 1, 0, 1000)
    return _full_box(
        b"tkhd", version, 0x7,  # enabled, in movie, in preview
        times, bytes(8), struct.pack(">hhHH", 0, 0, 0, 0),  # reserved, layer, group, volume, reserved
        _UNITY_MATRIX, struct.pack(">II", width << 16, height << 16),
    )  # fmt: skip


def _hdlr(handler: bytes, name: bytes) -> bytes:
    return _full_box(b"hdlr", 0, 0, bytes(4), handler, bytes(12), name + b"\x00")


def _visual_sample_entry(width: int, height: int) -> bytes:
    return box(
        b"avc1",
        bytes(6), struct.pack(">H", 1), bytes(16),  # reserved, data_reference_index, pre_defined/reserved
        struct.pack(">HHIII", width, height, 0x480000, 0x480000, 0),  # size, 72 dpi, reserved
        struct.pack(">H", 1), bytes(32), struct.pack(">Hh", 0x18, -1),  # frame count, compressor, depth
    )  # fmt: skip


def _audio_sample_entry() -> bytes:
    return box(
        b"mp4a",
        bytes(6), struct.pack(">H", 1), bytes(8),  # reserved, data_reference_index, reserved
        struct.pack(">HHHHI", 2, 16, 0, 0, 44100 << 16),  # channels, sample size, sample rate 16.16
    )  # fmt: skip


def _stbl(sample_entry: bytes) -> bytes:
    return box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), sample_entry),
        _full_box(b"stts", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsc", 0, 0, struct.pack(">I", 0)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", 0, 0)),
        _full_box(b"stco", 0, 0, struct.pack(">I", 0)),
    )


def _dinf() -> bytes:
    return box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))


def _mdhd() -> bytes:
    return _full_box(b"mdhd", 0, 0, struct.pack(">IIIIHH", 0, 0, 1000, 1000, 0x55C4, 0))  # language "und"


def video_trak(width: int, height: int, *, tkhd_version: int = 0, tkhd_size: tuple[int, int] | None = None) -> bytes:
    """A video trak; ``tkhd_size`` overrides the tkhd width/height (e.g. (0, 0) to leave them unset)."""
    tkhd_width, tkhd_height = tkhd_size if tkhd_size is not None else (width, height)
    return box(
        b"trak",
        _tkhd(tkhd_width, tkhd_height, tkhd_version),
        box(
            b"mdia",
            _mdhd(),
            _hdlr(b"vide", b"VideoHandler"),
            box(b"minf", _full_box(b"vmhd", 0, 1, bytes(8)), _dinf(), _stbl(_visual_sample_entry(width, height))),
        ),
    )


def audio_trak() -> bytes:
    return box(
        b"trak",
        _tkhd(0, 0, 0),
        box(
            b"mdia",
            _mdhd(),
            _hdlr(b"soun", b"SoundHandler"),
            box(b"minf", _full_box(b"smhd", 0, 0, bytes(4)), _dinf(), _stbl(_audio_sample_entry())),
        ),
    )


def _mdat() -> bytes:
    return box(b"mdat", bytes(range(256)) * 4)


def mp4_bytes(
    width: int = 320,
    height: int = 240,
    *,
    faststart: bool = True,
    tkhd_version: int = 0,
    tkhd_size: tuple[int, int] | None = None,
) -> bytes:
    """ftyp isom + moov (mvhd, audio trak, video trak) + mdat; ``faststart=False`` puts moov last."""
    moov = box(
        b"moov", _mvhd(), audio_trak(), video_trak(width, height, tkhd_version=tkhd_version, tkhd_size=tkhd_size)
    )
    ftyp = _ftyp(b"isom", 0x200, b"isom", b"iso2", b"avc1", b"mp41")
    return ftyp + moov + _mdat() if faststart else ftyp + _mdat() + moov


def mp4_without_moov_bytes() -> bytes:
    return _ftyp(b"isom", 0x200, b"isom", b"mp41") + box(b"free") + _mdat()


def mov_bytes(width: int = 640, height: int = 360, *, with_ftyp: bool = True) -> bytes:
    """QuickTime: ftyp "qt  " (or, for the pre-ftyp layout, none) + wide + mdat + moov."""
    ftyp = _ftyp(b"qt  ", 0x20050300, b"qt  ") if with_ftyp else b""
    return ftyp + box(b"wide") + _mdat() + box(b"moov", _mvhd(), video_trak(width, height))


def m4a_bytes() -> bytes:
    """An audio-only MP4 (sound handler only)."""
    return _ftyp(b"M4A ", 0, b"M4A ", b"mp42", b"isom") + box(b"moov", _mvhd(), audio_trak()) + _mdat()


def heic_bytes() -> bytes:
    """The opening of a HEIF still image: ftyp heic + a meta box with a "pict" handler + mdat."""
    meta = _full_box(b"meta", 0, 0, _hdlr(b"pict", b""), _full_box(b"pitm", 0, 0, struct.pack(">H", 1)))
    return _ftyp(b"heic", 0, b"mif1", b"heic") + meta + _mdat()


# --------------------------------------------------------------------------------------------------
# EBML (WebM, Matroska)
# --------------------------------------------------------------------------------------------------

UNKNOWN_SIZE = b"\x01\xff\xff\xff\xff\xff\xff\xff"  # the 8-byte "unknown size" vint


def ebml_size(size: int) -> bytes:
    """The shortest EBML variable-length integer for ``size`` (all-ones values are reserved)."""
    for length in range(1, 9):
        if size < (1 << (7 * length)) - 1:
            return ((1 << (7 * length)) | size).to_bytes(length, "big")
    raise ValueError(f"size {size} does not fit in an EBML vint")


def element(element_id: int, *children: bytes, unknown_size: bool = False) -> bytes:
    """An EBML element; ``element_id`` is written with its marker bits, as specifications list it."""
    payload = b"".join(children)
    id_bytes = element_id.to_bytes((element_id.bit_length() + 7) // 8, "big")
    return id_bytes + (UNKNOWN_SIZE if unknown_size else ebml_size(len(payload))) + payload


def _uint(element_id: int, value: int) -> bytes:
    return element(element_id, value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big"))


def _ebml_header(doc_type: str) -> bytes:
    return element(
        0x1A45DFA3,
        _uint(0x4286, 1), _uint(0x42F7, 1), _uint(0x42F2, 4), _uint(0x42F3, 8),  # versions, max lengths
        element(0x4282, doc_type.encode("ascii")), _uint(0x4287, 4), _uint(0x4285, 2),
    )  # fmt: skip


def _info() -> bytes:
    return element(
        0x1549A966,
        _uint(0x2AD7B1, 1_000_000),  # TimestampScale: 1 ms
        element(0x4489, struct.pack(">f", 1000.0)),  # Duration
        element(0x4D80, b"genbox-tests"), element(0x5741, b"genbox-tests"),  # MuxingApp, WritingApp
    )  # fmt: skip


def webm_video_track(width: int, height: int, codec: bytes = b"V_VP8") -> bytes:
    return element(
        0xAE,
        _uint(0xD7, 1), _uint(0x73C5, 1), _uint(0x83, 1), element(0x86, codec),  # number, UID, type, codec
        element(0xE0, _uint(0xB0, width), _uint(0xBA, height)),
    )  # fmt: skip


def webm_audio_track() -> bytes:
    return element(
        0xAE,
        _uint(0xD7, 2), _uint(0x73C5, 2), _uint(0x83, 2), element(0x86, b"A_OPUS"),
        element(0xE1, _uint(0x9F, 2), element(0xB5, struct.pack(">f", 48000.0))),  # channels, sampling rate
    )  # fmt: skip


def _cluster(unknown_size: bool = False) -> bytes:
    block = element(0xA3, b"\x81\x00\x00\x80" + bytes(range(64)))  # SimpleBlock: track 1, t=0, keyframe
    return element(0x1F43B675, _uint(0xE7, 0), block, unknown_size=unknown_size)


def webm_bytes(
    width: int = 640,
    height: int = 360,
    *,
    doc_type: str = "webm",
    audio_only: bool = False,
    unknown_sizes: bool = False,
    with_tracks: bool = True,
) -> bytes:
    """EBML header + Segment(Void, Info, Tracks, Cluster).

    ``unknown_sizes`` writes the Segment and Cluster with the "unknown size" marker, as live recorders
    (e.g. browsers' MediaRecorder) do.
    """
    tracks = webm_audio_track() if audio_only else webm_video_track(width, height) + webm_audio_track()
    children = [element(0xEC, bytes(16)), _info()]  # a Void, as muxers leave room for a SeekHead
    if with_tracks:
        children.append(element(0x1654AE6B, tracks))
    children.append(_cluster(unknown_size=unknown_sizes))
    return _ebml_header(doc_type) + element(0x18538067, *children, unknown_size=unknown_sizes)


def mkv_bytes(width: int = 640, height: int = 360) -> bytes:
    return webm_bytes(width, height, doc_type="matroska")
