"""Kie.ai protocol emulator: a real HTTP server speaking Kie's async task APIs, quirks included.

The wire protocol is the one described in ``docs/providers.md`` (Kie.ai). The emulator exists so
that clients, workers, benchmarks and the sandbox can be exercised end to end over real HTTP without
spending credits. It depends only on the standard library, httpx and Pillow (plus, optionally, the ffmpeg
binary of the dev-only ``imageio-ffmpeg`` package for playable videos): no Django, so it can run in plain
pytest, in benchmarks and inside a management command alike.

Contract, in short:

* ``KieEmulator(...).start()`` binds a ``ThreadingHTTPServer`` (daemon threads) and serves in the
  background; ``base_url`` is then ``http://host:port``. ``stop()`` (or leaving the ``with`` block) shuts
  everything down, including idle keep-alive connections.
* Five task families (jobs, veo, runway, gpt4o, flux), each with its own submit/poll endpoints and its own
  response shapes; plus credit, download-url and the three file-upload endpoints.
* Every ``/api/`` route needs ``Authorization: Bearer <api_key>``; errors come back as HTTP 200 with an
  error ``code`` in the body, exactly as Kie does (except the deliberate HTTP-level faults below).
* A task's state is computed from the clock at poll time: waiting → queuing → generating → success/fail
  after ``duration`` seconds. Results are generated on request and served by the emulator itself under
  ``/files/<task_id>/<n>.<ext>``: real PNG/JPEG pictures and short playable MP4s marked SANDBOX (see
  ``make_mp4``; rendered once, then cached). A video asked for with ``[[size:N]]`` is instead a structurally
  valid MP4 whose ``mdat`` is zeros streamed (never held in memory), so multi-gigabyte results cost nothing.
* Callbacks are POSTed by one scheduler thread (a heap of due times) through a small sender pool,
  optionally signed with ``X-Webhook-Timestamp`` / ``X-Webhook-Signature``; they are never retried.
* Failure modes are driven through the real API by directives in the prompt, e.g. ``[[fail]]``,
  ``[[slow:2.5]]``; see ``DIRECTIVES``.

Everything the emulator sees and does is recorded (``requests``, ``tasks``, ``callbacks``) so tests can
assert on the traffic rather than on internals.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import heapq
import hmac
import io
import itertools
import json
import logging
import math
import os
import queue
import re
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

import httpx
from PIL import Image, ImageDraw, ImageFont

from .server import EmulatorServer, TrackedHandler

logger = logging.getLogger(__name__)

__all__ = [
    "DIRECTIVES",
    "FAMILIES",
    "CallbackAttempt",
    "EmulatedTask",
    "FetchedInput",
    "KieEmulator",
    "RecordedRequest",
    "make_mp4",
    "make_png",
    "mp4_stream_chunks",
]

FAMILIES = ("jobs", "veo", "runway", "gpt4o", "flux")

SUBMIT_PATHS = {
    "/api/v1/jobs/createTask": "jobs",
    "/api/v1/veo/generate": "veo",
    "/api/v1/runway/generate": "runway",
    "/api/v1/gpt4o-image/generate": "gpt4o",
    "/api/v1/flux/kontext/generate": "flux",
}
POLL_PATHS = {
    "/api/v1/jobs/recordInfo": "jobs",
    "/api/v1/veo/record-info": "veo",
    "/api/v1/runway/record-detail": "runway",
    "/api/v1/gpt4o-image/record-info": "gpt4o",
    "/api/v1/flux/kontext/record-info": "flux",
}
CREDIT_PATH = "/api/v1/chat/credit"
DOWNLOAD_URL_PATH = "/api/v1/common/download-url"
UPLOAD_STREAM_PATH = "/api/file-stream-upload"
UPLOAD_URL_PATH = "/api/file-url-upload"
UPLOAD_BASE64_PATH = "/api/file-base64-upload"
_POST_ONLY = {*SUBMIT_PATHS, DOWNLOAD_URL_PATH, UPLOAD_STREAM_PATH, UPLOAD_URL_PATH, UPLOAD_BASE64_PATH}
_GET_ONLY = {*POLL_PATHS, CREDIT_PATH}

# A jobs model produces a video when its name contains one of these (Kie's market has no media-type field).
VIDEO_MODEL_MARKERS = ("video", "veo", "kling", "wan", "hailuo", "seedance", "sora")

DIRECTIVES = {
    "fail": "the task ends in failure (jobs fail/500, veo & flux successFlag 2, runway fail, gpt4o GENERATE_FAILED)",
    "credits": "submit answers code 402 'Credits insufficient'",
    "credits500": "submit answers code 500 'Credits insufficient' (a quirk seen in the wild)",
    "validation": "submit answers code 422 'The model does not support this parameter'",
    "maintenance": "submit answers code 455 (maintenance, retryable)",
    "submit500": "the first submit of this exact prompt answers HTTP 500 with an HTML body; later ones succeed",
    "malformed": "every poll answers HTTP 200 with a truncated JSON body",
    "malformed-once": "only the first poll (not counting [[429poll]] answers) is truncated",
    "truncated": "result files declare Content-Length N but the connection closes after N/2 bytes",
    "badresult": "result URLs serve an HTML error page with HTTP 200 and Content-Type text/html",
    "noresult": "the task succeeds with no result URLs",
    "nocallback": "no callback is ever sent",
    "slow:S": "the task takes S seconds (float) instead of task_seconds",
    "size:N": "a video result is about N bytes long (streamed; N may be 1e9)",
    "429poll": "the first two polls answer HTTP 429 with Retry-After: 1",
}
_DIRECTIVE_RE = re.compile(r"\[\[([a-z0-9][a-z0-9-]*)(?::([^\]]*))?\]\]", re.IGNORECASE)

MESSAGE_KEYS = ("msg", "message", "alternate")
UNAUTHORIZED_MESSAGE = "You do not have access permissions"
RATE_LIMITED_MESSAGE = "Rate limited, please try again later"
GENERATION_FAILED_MESSAGE = "Internal generation error"
UNSUPPORTED_FILE_MESSAGE = "File type not supported"

_MAX_BODY_BYTES = 64 * 1024 * 1024
# Bytes of each input kept for sniffing and for the pasted thumbnail; the rest is counted, not stored.
_MAX_INPUT_KEEP_BYTES = 32 * 1024 * 1024
_INPUT_FETCH_TIMEOUT = 10.0
_CALLBACK_TIMEOUT = 10.0
_FETCH_WORKERS = 16
_CALLBACK_WORKERS = 8
_RESULT_CACHE_ENTRIES = 64  # rendered result files (pictures, sandbox videos of ~50 KB)
_DEFAULT_VIDEO_PAYLOAD = 64 * 1024
_STREAM_CHUNK = 256 * 1024
_ZEROS = memoryview(bytes(_STREAM_CHUNK))
_IMAGE_SHORT_SIDE = 512
_VIDEO_SHORT_SIDE = 720
# Playable sandbox videos (make_mp4): the served clip, the largest side rendered, the longest an encode may take.
_VIDEO_SECONDS = 2.0
_VIDEO_FPS = 12
_MAX_VIDEO_SIDE = 4096
_ENCODE_TIMEOUT = 60.0

# Share of a task's duration spent "waiting", then "queuing", before "generating" (progress still grows
# linearly over the whole duration; the phases only make the state strings realistic).
_WAITING_SHARE = 0.1
_QUEUING_SHARE = 0.2

_MALFORMED_BODY = '{{"code":200,"{key}":"success","data":{{"taskId":'
_HTML_500 = (
    b"<!DOCTYPE html><html><head><title>500 Internal Server Error</title></head>"
    b"<body><h1>500 Internal Server Error</h1><p>nginx</p></body></html>"
)
_HTML_RESULT_ERROR = (
    b"<!DOCTYPE html><html><head><title>Error</title></head>"
    b"<body><h1>Something went wrong</h1><p>The file you requested is not available.</p></body></html>"
)


# --------------------------------------------------------------------------------------------------
# Recorded data
# --------------------------------------------------------------------------------------------------


@dataclass
class RecordedRequest:
    """One request the emulator answered, recorded before its response body was written.

    ``headers`` keep their original names; the Authorization value is always replaced by
    ``"Bearer <redacted>"`` (``authorized`` says whether it matched the API key). ``json`` is the parsed
    JSON body or None; ``form`` the text fields of a multipart body. ``kind`` is one of submit, poll,
    account (credit / download-url), upload, file, other. ``task_id`` is the accepted task's id for a
    submit, or the polled id for a poll. ``code`` is the envelope code when the answer was an envelope.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]
    authorized: bool
    json: Any
    time: float
    form: dict[str, str] | None = None
    kind: str = "other"
    family: str | None = None
    task_id: str | None = None
    http_status: int = 0
    code: int | None = None


@dataclass
class FetchedInput:
    """An input URL the emulator fetched for a task: HTTP status, bytes received, sniffed kind, error."""

    url: str
    status: int | None = None
    content_length: int = 0
    content_type: str | None = None
    kind: str | None = None  # "image" | "video" | None when unrecognised or not fetched
    error: str | None = None


@dataclass
class CallbackAttempt:
    """One callback POST (never retried): where, what, and how the receiver answered."""

    task_id: str
    url: str
    body: dict[str, Any]
    headers: dict[str, str]
    time: float
    status: int | None = None
    error: str | None = None


@dataclass(eq=False)
class EmulatedTask:
    """A task the emulator accepted. Its state is derived from the monotonic clock, never stored.

    ``created_at`` is wall-clock seconds; ``duration`` the planned generation time. A task with input
    URLs (and ``fetch_inputs`` on) is not finished before its inputs were fetched; a failed fetch ends it
    at once with ``fetch_error``. ``result_urls`` are fixed at submit (empty with ``[[noresult]]``) and
    shown by polls only once the task succeeded. ``callback_sent`` turns True when the callback POST
    starts; ``callback_status`` / ``callback_error`` record how it went.
    """

    task_id: str
    family: str
    model: str
    prompt: str
    body: dict[str, Any]
    created_at: float
    duration: float
    callback_url: str | None
    directives: dict[str, str | None]
    media: str  # "image" | "video"
    width: int
    height: int
    files: dict[str, str]  # served file name ("0.png") → renderer ("png" | "jpeg" | "mp4")
    result_urls: list[str]
    input_urls: list[str]
    video_size: int | None
    cost: float
    started: float  # time.monotonic() at submit
    inputs: list[FetchedInput] = field(default_factory=list)
    fetch_error: str | None = None
    fetch_done_at: float | None = None  # monotonic; None while input fetches are still running
    source_thumbnail: bytes | None = None
    callback_sent: bool = False
    callback_status: int | None = None
    callback_error: str | None = None
    polls: int = 0
    malformed_sent: bool = False

    @property
    def input(self) -> dict[str, Any]:
        """The model-specific parameters: ``body["input"]`` for jobs, the whole body for the other families."""
        if self.family == "jobs":
            task_input = self.body.get("input")
            return task_input if isinstance(task_input, dict) else {}
        return self.body

    @property
    def ends_at(self) -> float | None:
        """Monotonic time at which the task is terminal, or None while that is not known yet."""
        if self.fetch_done_at is None:
            return None
        if self.fetch_error is not None:
            return self.fetch_done_at
        return max(self.started + self.duration, self.fetch_done_at)

    @property
    def failed(self) -> bool:
        return self.fetch_error is not None or "fail" in self.directives

    @property
    def fail_message(self) -> str:
        return self.fetch_error or GENERATION_FAILED_MESSAGE

    def phase(self, now: float | None = None) -> tuple[str, float]:
        """``(state, progress)`` at ``now``: state ∈ waiting|queuing|generating|success|fail, progress 0..1."""
        now = time.monotonic() if now is None else now
        end = self.ends_at
        if end is not None and now >= end:
            return ("fail" if self.failed else "success"), 1.0
        fraction = (now - self.started) / self.duration if self.duration > 0 else 1.0
        progress = min(max(fraction, 0.0), 0.99)
        if fraction < _WAITING_SHARE:
            return "waiting", progress
        if fraction < _QUEUING_SHARE:
            return "queuing", progress
        return "generating", progress

    @property
    def state(self) -> str:
        """The family-neutral state now: waiting, queuing, generating, success or fail."""
        return self.phase()[0]

    @property
    def create_ms(self) -> int:
        return int(self.created_at * 1000)

    def wall_ms(self, monotonic_time: float) -> int:
        """Wall-clock milliseconds of a monotonic instant of this task's life."""
        return int((self.created_at + (monotonic_time - self.started)) * 1000)


# --------------------------------------------------------------------------------------------------
# Media: PNG/JPEG pictures and streamable MP4s
# --------------------------------------------------------------------------------------------------

# Pillow's FreeType faces are shared between server threads; FreeType itself is not thread-safe per face.
_RENDER_LOCK = threading.Lock()


@lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError, ImportError):
        # Pillow without FreeType: the fixed bitmap font, which only knows Latin-1.
        return ImageFont.load_default()


def _drawable(text: str, font: ImageFont.FreeTypeFont | ImageFont.ImageFont) -> str:
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _open_thumbnail(source: bytes, max_width: int, max_height: int) -> Image.Image | None:
    """Decode ``source`` scaled to fit the box, or None when it is not a picture Pillow can read safely."""
    try:
        with Image.open(io.BytesIO(source)) as opened:
            # Image.open already refuses real decompression bombs; draft() lets JPEG decode at reduced scale.
            opened.draft("RGB", (max_width, max_height))
            picture = opened.convert("RGB")
        picture.thumbnail((max(1, max_width), max(1, max_height)))
        return picture
    except Exception:  # noqa: BLE001 - any undecodable input simply means "nothing to paste"
        return None


def _layout(width: int, height: int) -> tuple[int, int, int, int]:
    """``(margin, circle radius, SANDBOX label size, band height)`` of the sandbox picture at this size."""
    short = min(width, height)
    margin = max(6, short // 32)
    label_size = max(14, short // 10)
    return margin, short // 4, label_size, label_size + margin * 2


def _palette(prompt: str) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(background, accent)`` colours of the sandbox picture for ``prompt``: a hash colour and its inverse."""
    digest = hashlib.sha256(prompt.encode("utf-8", "replace")).digest()
    background = (40 + digest[0] % 120, 40 + digest[1] % 120, 40 + digest[2] % 120)
    return background, (255 - background[0], 255 - background[1], 255 - background[2])


def _render_image(prompt: str, width: int, height: int, source: bytes | None) -> Image.Image:
    """Draw the sandbox picture: a colour from the prompt's hash, the prompt text, a SANDBOX band."""
    background, accent = _palette(prompt)
    image = Image.new("RGB", (width, height), background)
    draw = ImageDraw.Draw(image)
    short = min(width, height)
    margin, radius, label_size, band_height = _layout(width, height)
    # A shape so the result is not a flat colour (some image checks treat uniform pictures as broken).
    centre_x, centre_y = width - margin - radius, height // 2
    draw.ellipse((centre_x - radius, centre_y - radius, centre_x + radius, centre_y + radius), outline=accent, width=3)

    top = margin
    if source is not None:
        thumbnail = _open_thumbnail(source, int(width * 0.45), int(height * 0.45))
        if thumbnail is not None:
            draw.rectangle(
                (margin - 2, margin - 2, margin + thumbnail.width + 1, margin + thumbnail.height + 1), fill=accent
            )
            image.paste(thumbnail, (margin, margin))
            top = margin * 2 + thumbnail.height

    text_size = max(10, short // 24)
    line_height = int(text_size * 1.25)
    with _RENDER_LOCK:
        font = _font(text_size)
        columns = max(8, int((width - 2 * margin) / (text_size * 0.55)))
        lines = textwrap.wrap(prompt, columns) or ["(empty prompt)"]
        room = max(1, (height - band_height - top - margin) // line_height)
        if len(lines) > room:
            lines = [*lines[: room - 1], lines[room - 1][: columns - 1] + "…"]
        for index, line in enumerate(lines):
            draw.text((margin, top + index * line_height), _drawable(line, font), fill=(255, 255, 255), font=font)
        draw.rectangle((0, height - band_height, width, height), fill=(0, 0, 0))
        draw.text((margin, height - band_height + margin), "SANDBOX", fill=(255, 214, 0), font=_font(label_size))
    return image


def _encode_image(image: Image.Image, image_format: str) -> bytes:
    buffer = io.BytesIO()
    if image_format == "JPEG":
        image.save(buffer, format="JPEG", quality=88)
    else:
        # Fast compression: these pictures are throwaway and served at a few hundred requests/second.
        image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def make_png(prompt: str, width: int, height: int, source: bytes | None = None) -> bytes:
    """A real ``width`` × ``height`` PNG showing ``prompt`` and a "SANDBOX" label.

    ``source`` (any picture Pillow reads) is pasted in, scaled to fit under half of each side; an
    unreadable source is ignored. Deterministic for equal arguments.
    """
    return _encode_image(_render_image(prompt, width, height, source), "PNG")


def _box(kind: bytes, *payload: bytes) -> bytes:
    body = b"".join(payload)
    return struct.pack(">I", 8 + len(body)) + kind + body


def _full_box(kind: bytes, version: int, flags: int, *payload: bytes) -> bytes:
    return _box(kind, struct.pack(">I", (version << 24) | flags), *payload)


# Identity transformation matrix of mvhd/tkhd (16.16 except the last column, which is 2.30).
_MATRIX = struct.pack(">9I", 0x00010000, 0, 0, 0, 0x00010000, 0, 0, 0, 0x40000000)
_FRAMES = 120  # 5 s at 24 fps
_MEDIA_TIMESCALE = 24
_MOVIE_TIMESCALE = 1000


def _mp4_head(width: int, height: int, payload_size: int, mdat_offset: int = 0) -> bytes:
    """ftyp + moov + the mdat header for a one-track video whose mdat payload is ``payload_size`` bytes.

    The payload is split into up to 120 equal samples in a single chunk (bytes left over after the last
    sample stay unreferenced, which the format allows). ``mdat_offset`` is where the payload starts in the
    file; the box sizes do not depend on it, so callers build once to learn it and once for real.
    """
    samples = max(1, min(_FRAMES, payload_size))
    sample_size = payload_size // samples
    movie_duration = samples * _MOVIE_TIMESCALE // _MEDIA_TIMESCALE
    ftyp = _box(b"ftyp", b"isom", struct.pack(">I", 0x200), b"isom", b"iso2", b"avc1", b"mp41")
    mvhd = _full_box(
        b"mvhd",
        0,
        0,
        struct.pack(">IIII", 0, 0, _MOVIE_TIMESCALE, movie_duration),
        struct.pack(">IH", 0x00010000, 0x0100) + bytes(10),  # rate 1.0, volume 1.0, reserved
        _MATRIX,
        bytes(24),  # pre_defined
        struct.pack(">I", 2),  # next_track_ID
    )
    tkhd = _full_box(
        b"tkhd",
        0,
        0x000003,  # enabled | in movie
        struct.pack(">IIIII", 0, 0, 1, 0, movie_duration),
        bytes(8),
        struct.pack(">hhhH", 0, 0, 0, 0),  # layer, alternate_group, volume (0 for video), reserved
        _MATRIX,
        struct.pack(">II", width << 16, height << 16),
    )
    mdhd = _full_box(
        b"mdhd", 0, 0, struct.pack(">IIII", 0, 0, _MEDIA_TIMESCALE, samples), struct.pack(">HH", 0x55C4, 0)
    )
    hdlr = _full_box(b"hdlr", 0, 0, struct.pack(">I", 0), b"vide", bytes(12), b"VideoHandler\x00")
    vmhd = _full_box(b"vmhd", 0, 1, bytes(8))
    dinf = _box(b"dinf", _full_box(b"dref", 0, 0, struct.pack(">I", 1), _full_box(b"url ", 0, 1)))
    # avcC with no parameter sets: structurally an H.264 sample entry, honestly not decodable.
    avcc = _box(b"avcC", bytes([1, 66, 0, 30, 0xFF, 0xE0, 0x00]))
    avc1 = _box(
        b"avc1",
        bytes(6),
        struct.pack(">H", 1),  # data_reference_index
        bytes(16),  # pre_defined / reserved
        struct.pack(">HH", width, height),
        struct.pack(">III", 0x00480000, 0x00480000, 0),  # 72 dpi, reserved
        struct.pack(">H", 1),  # frame_count
        bytes([7]) + b"Sandbox" + bytes(24),  # compressorname: Pascal string in 32 bytes
        struct.pack(">Hh", 0x0018, -1),  # depth, pre_defined
        avcc,
    )
    stbl = _box(
        b"stbl",
        _full_box(b"stsd", 0, 0, struct.pack(">I", 1), avc1),
        _full_box(b"stts", 0, 0, struct.pack(">III", 1, samples, 1)),
        _full_box(b"stsc", 0, 0, struct.pack(">IIII", 1, 1, samples, 1)),
        _full_box(b"stsz", 0, 0, struct.pack(">II", sample_size, samples)),
        _full_box(b"stco", 0, 0, struct.pack(">II", 1, mdat_offset)),
    )
    moov = _box(b"moov", mvhd, _box(b"trak", tkhd, _box(b"mdia", mdhd, hdlr, _box(b"minf", vmhd, dinf, stbl))))
    if payload_size + 8 <= 0xFFFFFFFF:
        mdat_header = struct.pack(">I4s", payload_size + 8, b"mdat")
    else:
        mdat_header = struct.pack(">I4sQ", 1, b"mdat", payload_size + 16)  # 64-bit largesize
    return ftyp + moov + mdat_header


def mp4_stream_chunks(width: int, height: int, total_size: int | None = None) -> tuple[int, Iterator[bytes]]:
    """A structurally valid MP4 of ``width`` × ``height``, as ``(content_length, chunks)``.

    Layout: ftyp, moov (one 'vide' track; tkhd and the avc1 sample entry carry the size), then mdat — moov
    first, so the file can be streamed and inspected from its head. The mdat payload is zeros, generated
    while iterating in chunks of at most 256 KiB, so any size (even many GB) costs no memory.
    ``total_size`` is the exact file length wanted (raised to the smallest valid file when too small);
    None means a 64 KiB payload. Iterating yields exactly ``content_length`` bytes.
    """
    width = max(2, min(int(width), 0xFFFF))
    height = max(2, min(int(height), 0xFFFF))
    fixed = len(_mp4_head(width, height, 1)) - 8  # ftyp + moov; their size does not depend on the payload
    if total_size is None:
        payload = _DEFAULT_VIDEO_PAYLOAD
    else:
        payload = max(1, int(total_size) - fixed - 8)
        if payload + 8 > 0xFFFFFFFF:
            payload = int(total_size) - fixed - 16
    mdat_header = 8 if payload + 8 <= 0xFFFFFFFF else 16
    head = _mp4_head(width, height, payload, mdat_offset=fixed + mdat_header)

    def chunks() -> Iterator[bytes]:
        yield head
        remaining = payload
        while remaining > 0:
            size = min(remaining, _STREAM_CHUNK)
            yield _ZEROS[:size]  # a view of one shared zero buffer: no copy, no allocation
            remaining -= size

    return len(head) + payload, chunks()


# Why videos are placeholders (logged once per process and kind, so a missing ffmpeg does not flood the log).
_fallback_warnings: set[str] = set()
_fallback_warnings_lock = threading.Lock()
# Concurrent ffmpeg runs: a burst of first downloads must not start one encoder per request.
_ENCODE_SLOTS = threading.BoundedSemaphore(max(1, os.cpu_count() or 1))


class _EncodeError(Exception):
    """ffmpeg ran but did not produce a video."""


def _warn_fallback(kind: str, detail: str) -> None:
    with _fallback_warnings_lock:
        if kind in _fallback_warnings:
            return
        _fallback_warnings.add(kind)
    logger.warning("Kie emulator: %s; videos fall back to undecodable placeholder MP4s (logged once)", detail)


@lru_cache(maxsize=1)
def _ffmpeg() -> tuple[str, tuple[str, ...]] | None:
    """``(ffmpeg executable, encoder arguments)``, or None (and one warning) when there is no usable ffmpeg.

    The binary is the one shipped by ``imageio_ffmpeg``, a dev-only dependency. The encoder is H.264
    (libx264) when the build has it, else MPEG-4 part 2, which MP4 players decode as well. Probed once.
    """
    try:
        import imageio_ffmpeg

        executable = imageio_ffmpeg.get_ffmpeg_exe()
        listing = subprocess.run(
            [executable, "-hide_banner", "-encoders"], capture_output=True, timeout=_ENCODE_TIMEOUT, check=True
        ).stdout
    except Exception as exc:  # noqa: BLE001 - ImportError, no binary (RuntimeError), OSError, a failing binary
        _warn_fallback("unavailable", f"no usable ffmpeg ({type(exc).__name__}: {exc})")
        return None
    if re.search(rb"^\s*V\S*\s+libx264\s", listing, re.MULTILINE):
        return executable, ("-c:v", "libx264", "-preset", "ultrafast", "-crf", "28")
    return executable, ("-c:v", "mpeg4", "-q:v", "5")


def _video_frames(prompt: str, width: int, height: int, source: bytes | None, frames: int, fps: int) -> Iterator[bytes]:
    """Raw RGB24 frames: the sandbox picture with a dot circling, a bar filling up and a running timecode."""
    base = _render_image(prompt, width, height, source)
    _, accent = _palette(prompt)
    margin, radius, label_size, band_height = _layout(width, height)
    centre_x, centre_y = width - margin - radius, height // 2
    dot = max(4, radius // 6)
    bar_height = max(3, margin // 2)
    bar_top = height - band_height - bar_height
    with _RENDER_LOCK:
        clock_font = _font(max(10, label_size // 2))
    for index in range(frames):
        frame = base.copy()
        draw = ImageDraw.Draw(frame)
        angle = 2 * math.pi * index / frames - math.pi / 2
        dot_x, dot_y = centre_x + radius * math.cos(angle), centre_y + radius * math.sin(angle)
        draw.ellipse((dot_x - dot, dot_y - dot, dot_x + dot, dot_y + dot), fill=accent)
        draw.rectangle((0, bar_top, width * (index + 1) // frames, bar_top + bar_height), fill=(255, 214, 0))
        clock = f"{index / fps:4.2f} s"
        with _RENDER_LOCK:
            clock_width = draw.textlength(clock, font=clock_font)
            draw.text(
                (width - margin - clock_width, height - band_height + margin),
                clock,
                fill=(255, 255, 255),
                font=clock_font,
            )
        yield frame.tobytes()


def _encode_mp4(
    tool: tuple[str, tuple[str, ...]], prompt: str, width: int, height: int, source: bytes | None, frames: int, fps: int
) -> bytes:
    """Pipe the frames through ffmpeg into a temporary file (``+faststart`` rewrites it, so not a pipe)."""
    executable, encoder = tool
    descriptor, output = tempfile.mkstemp(prefix="kie-emulator-", suffix=".mp4")
    os.close(descriptor)
    command = [
        executable,
        *("-hide_banner", "-loglevel", "error", "-y"),
        *("-f", "rawvideo", "-pix_fmt", "rgb24", "-video_size", f"{width}x{height}", "-framerate", str(fps)),
        *("-i", "-", "-an", *encoder, "-pix_fmt", "yuv420p"),
        # No creation time or encoder tag: equal arguments give equal files.
        *("-map_metadata", "-1", "-fflags", "+bitexact", "-movflags", "+faststart", "-f", "mp4", output),
    ]
    try:
        with _ENCODE_SLOTS, tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors)
            assert process.stdin is not None
            watchdog = threading.Timer(_ENCODE_TIMEOUT, process.kill)
            watchdog.start()
            try:
                try:
                    for frame in _video_frames(prompt, width, height, source, frames, fps):
                        process.stdin.write(frame)
                except BrokenPipeError:
                    pass  # ffmpeg quit early; its exit status and stderr say why
                finally:
                    with contextlib.suppress(BrokenPipeError):
                        process.stdin.close()
                status = process.wait()
            finally:
                watchdog.cancel()
                if process.poll() is None:  # rendering a frame raised: do not leave ffmpeg behind
                    process.kill()
                    process.wait()
            if status != 0:
                errors.seek(0)
                message = errors.read()[-800:].decode("utf-8", "replace").strip()
                raise _EncodeError(f"ffmpeg exited with status {status}: {message or 'no message'}")
        with open(output, "rb") as written:
            data = written.read()
    finally:
        with contextlib.suppress(OSError):
            os.unlink(output)
    if data[4:8] != b"ftyp":
        raise _EncodeError("ffmpeg wrote no MP4")
    return data


def make_mp4(
    prompt: str,
    width: int,
    height: int,
    source: bytes | None = None,
    *,
    seconds: float = _VIDEO_SECONDS,
    fps: int = _VIDEO_FPS,
) -> bytes:
    """A short, playable MP4 of about ``seconds`` at ``fps``, visibly marked as sandbox output.

    Every frame is the `make_png` picture (prompt text, ``source`` pasted in when Pillow reads it, a large
    "SANDBOX" label) plus a dot circling, a bar filling up and a running timecode, so it plainly moves.
    Sides are clamped to 16..4096 and rounded down to even numbers (4:2:0 video needs them); ``fps`` is at
    least 1 and there are at least two frames. Encoded by ffmpeg as H.264 (yuv420p; MPEG-4 part 2 when the
    build lacks libx264), ``moov`` ahead of ``mdat``. Equal arguments give equal bytes with one ffmpeg build.
    About 0.15 s (0.25 s of CPU) at 1280×720 with the defaults; at most ``os.cpu_count()`` encodes run at once.

    Never fails for want of ffmpeg: when ``imageio_ffmpeg`` is not importable, or ffmpeg is missing or fails,
    it returns the structural placeholder of `mp4_stream_chunks` (same size and container, 64 KiB of zeros,
    not decodable) and logs a warning once per process.
    """
    width = max(16, min(int(width), _MAX_VIDEO_SIDE)) // 2 * 2
    height = max(16, min(int(height), _MAX_VIDEO_SIDE)) // 2 * 2
    fps = max(1, int(fps))
    frames = max(2, round(seconds * fps))
    tool = _ffmpeg()
    if tool is not None:
        try:
            return _encode_mp4(tool, prompt, width, height, source, frames, fps)
        except (OSError, subprocess.SubprocessError, _EncodeError) as exc:
            _warn_fallback("failed", f"ffmpeg failed to encode a video ({exc})")
    return b"".join(mp4_stream_chunks(width, height)[1])


def _sniff(head: bytes) -> str | None:
    """ "image" / "video" by magic bytes, or None."""
    if head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a", b"BM")):
        return "image"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        return "image" if brand in (b"heic", b"heix", b"mif1", b"avif", b"msf1") else "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video"
    return None


_CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "mp4": "video/mp4"}


def _content_type_for(data: bytes) -> str:
    head = data[:16]
    if head.startswith(b"\x89PNG"):
        return "image/png"
    if head.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if head.startswith(b"GIF8"):
        return "image/gif"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[4:8] == b"ftyp":
        return "video/mp4"
    if head.startswith(b"\x1a\x45\xdf\xa3"):
        return "video/webm"
    return "application/octet-stream"


# --------------------------------------------------------------------------------------------------
# Request parsing helpers
# --------------------------------------------------------------------------------------------------


def parse_directives(prompt: str) -> dict[str, str | None]:
    """``[[name]]`` / ``[[name:value]]`` markers in a prompt, as ``{name (lower case): value or None}``."""
    return {match.group(1).lower(): match.group(2) for match in _DIRECTIVE_RE.finditer(prompt)}


def _float_directive(directives: dict[str, str | None], name: str) -> float | None:
    value = directives.get(name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if number >= 0 and math.isfinite(number) else None


_PIXELS_RE = re.compile(r"^\s*(\d{2,5})\s*[x×*]\s*(\d{2,5})\s*$", re.IGNORECASE)
_RATIO_RE = re.compile(r"(\d+(?:\.\d+)?)\s*[:_/]\s*(\d+(?:\.\d+)?)")


def _parse_size(value: Any) -> tuple[str, float, float] | None:
    """("pixels", w, h) for "1024x768", ("ratio", w, h) for "16:9" / "landscape_16_9" / "square"; else None."""
    if not isinstance(value, str):
        return None
    pixels = _PIXELS_RE.match(value)
    if pixels:
        return "pixels", float(pixels.group(1)), float(pixels.group(2))
    lowered = value.lower()
    if lowered.startswith("square"):
        return "ratio", 1.0, 1.0
    ratio = _RATIO_RE.search(lowered)
    if not ratio:
        return None
    first, second = float(ratio.group(1)), float(ratio.group(2))
    if first <= 0 or second <= 0:
        return None
    # fal-style names give the ratio landscape-first: "portrait_4_3" means 3 wide by 4 high.
    if lowered.startswith("portrait") and first > second:
        first, second = second, first
    return "ratio", first, second


def _dimensions(value: Any, short_side: int, default_ratio: tuple[float, float], limit: int) -> tuple[int, int]:
    """Pixel size for a requested aspect ratio (short side ``short_side``) or explicit size, rounded to 16."""
    parsed = _parse_size(value)
    if parsed is not None and parsed[0] == "pixels":
        width, height = parsed[1], parsed[2]
        return max(16, min(limit, int(width) // 2 * 2)), max(16, min(limit, int(height) // 2 * 2))
    ratio_w, ratio_h = (parsed[1], parsed[2]) if parsed is not None else default_ratio
    ratio = max(0.25, min(4.0, ratio_w / ratio_h))
    if ratio >= 1:
        return min(limit, round(short_side * ratio / 16) * 16), short_side
    return short_side, min(limit, round(short_side / ratio / 16) * 16)


def _int_or(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _first_present(mapping: dict[str, Any], *keys: str) -> Any:
    for key in keys:
        value = mapping.get(key)
        if value not in (None, ""):
            return value
    return None


def _url_list(*values: Any) -> list[str]:
    """Strings and lists of strings flattened into a de-duplicated list of non-empty URLs."""
    urls: list[str] = []
    for value in values:
        items = value if isinstance(value, list) else [value]
        for item in items:
            if isinstance(item, str) and item.strip() and item.strip() not in urls:
                urls.append(item.strip())
    return urls


def _prompt_of(family: str, body: dict[str, Any]) -> Any:
    if family == "jobs":
        task_input = body.get("input")
        return task_input.get("prompt") if isinstance(task_input, dict) else None
    return body.get("prompt")


def _is_video_model(model: str) -> bool:
    lowered = model.lower()
    return any(marker in lowered for marker in VIDEO_MODEL_MARKERS)


def _header_param(header: str, name: str) -> str | None:
    match = re.search(rf'(?:^|;)\s*{name}="([^"]*)"', header) or re.search(rf"(?:^|;)\s*{name}=([^;\s]+)", header)
    return match.group(1) if match else None


def _parse_multipart(body: bytes, content_type: str) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    """Split a multipart/form-data body into text fields and ``{field: (filename, bytes)}`` file parts."""
    boundary = _header_param(content_type, "boundary")
    if not boundary:
        raise ValueError("multipart body without a boundary")
    fields: dict[str, str] = {}
    files: dict[str, tuple[str, bytes]] = {}
    for raw in body.split(b"--" + boundary.encode("latin-1"))[1:]:
        if raw.startswith(b"--"):
            break  # the closing delimiter
        part = raw[2:] if raw.startswith(b"\r\n") else raw
        head, separator, content = part.partition(b"\r\n\r\n")
        if not separator:
            continue
        # The CRLF before the next delimiter belongs to the delimiter, not to the content.
        content = content[:-2] if content.endswith(b"\r\n") else content
        headers = {}
        for line in head.decode("utf-8", "replace").split("\r\n"):
            key, _, value = line.partition(":")
            headers[key.strip().lower()] = value.strip()
        disposition = headers.get("content-disposition", "")
        name = _header_param(disposition, "name")
        if name is None:
            continue
        filename = _header_param(disposition, "filename")
        if filename is not None:
            files[name] = (filename, content)
        else:
            fields[name] = content.decode("utf-8", "replace")
    return fields, files


_SAFE_NAME_RE = re.compile(r"[^A-Za-z0-9._-]+")


def _safe_name(name: str, fallback: str) -> str:
    cleaned = _SAFE_NAME_RE.sub("_", name.rsplit("/", 1)[-1]).strip("._")
    return cleaned[:120] or fallback


# --------------------------------------------------------------------------------------------------
# Background machinery: worker pools and the callback scheduler
# --------------------------------------------------------------------------------------------------


class _WorkerPool:
    """A fixed set of daemon threads running submitted calls; daemon so a forgotten stop() never hangs exit."""

    def __init__(self, name: str, size: int) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[..., None], tuple[Any, ...]] | None] = queue.SimpleQueue()
        self._threads = [threading.Thread(target=self._run, name=f"{name}-{i}", daemon=True) for i in range(size)]
        for thread in self._threads:
            thread.start()

    def submit(self, function: Callable[..., None], *args: Any) -> None:
        self._queue.put((function, args))

    def stop(self) -> None:
        for _ in self._threads:
            self._queue.put(None)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            function, args = item
            try:
                function(*args)
            except Exception:  # noqa: BLE001 - a bug in one job must not kill the worker
                traceback.print_exc(file=sys.stderr)


class _Scheduler:
    """One thread and a heap of (due, task_id): calls ``fire(task_id)`` once each due time has passed."""

    def __init__(self, fire: Callable[[str], None]) -> None:
        self._fire = fire
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = itertools.count()
        self._condition = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="kie-emulator-scheduler", daemon=True)
        self._thread.start()

    def schedule(self, due: float, task_id: str) -> None:
        with self._condition:
            heapq.heappush(self._heap, (due, next(self._sequence), task_id))
            self._condition.notify()

    def stop(self) -> None:
        with self._condition:
            self._stopped = True
            self._condition.notify()
        self._thread.join(timeout=2)

    def _run(self) -> None:
        while True:
            with self._condition:
                while not self._stopped:
                    if not self._heap:
                        self._condition.wait()
                        continue
                    delay = self._heap[0][0] - time.monotonic()
                    if delay <= 0:
                        break
                    self._condition.wait(delay)
                if self._stopped:
                    return
                _, _, task_id = heapq.heappop(self._heap)
            try:
                self._fire(task_id)
            except Exception:  # noqa: BLE001 - keep scheduling the other tasks
                traceback.print_exc(file=sys.stderr)


# --------------------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------------------


@dataclass
class _Response:
    status: int
    body: bytes | Iterable[bytes]
    content_type: str
    length: int | None = None  # required when body is an iterable; defaults to len(body) for bytes
    headers: dict[str, str] = field(default_factory=dict)
    close_after: bool = False  # drop the connection after writing (a truncated body must end with EOF)
    code: int | None = None


class _BodyTooLarge(Exception):
    pass


class _Handler(TrackedHandler):
    server_version = "KieEmulator/1.0"
    sys_version = ""
    timeout = 60  # idle keep-alive connections are dropped after a minute

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.emulator._handle(self, "GET")

    def do_HEAD(self) -> None:  # noqa: N802
        self.server.emulator._handle(self, "HEAD")

    def do_POST(self) -> None:  # noqa: N802
        self.server.emulator._handle(self, "POST")

    def do_PUT(self) -> None:  # noqa: N802
        self.server.emulator._handle(self, "PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self.server.emulator._handle(self, "DELETE")

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - base class signature
        pass  # a line per request on stderr would drown test output and slow benchmarks


def _read_body(handler: BaseHTTPRequestHandler) -> bytes:
    """The request body (Content-Length or chunked), refusing more than 64 MiB."""
    if "chunked" in handler.headers.get("Transfer-Encoding", "").lower():
        parts: list[bytes] = []
        total = 0
        while True:
            size_line = handler.rfile.readline(1024)
            size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
            if size == 0:
                while handler.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(parts)
            total += size
            if total > _MAX_BODY_BYTES:
                raise _BodyTooLarge
            parts.append(handler.rfile.read(size))
            handler.rfile.readline(1024)
    length = int(handler.headers.get("Content-Length") or 0)
    if length > _MAX_BODY_BYTES:
        raise _BodyTooLarge
    return handler.rfile.read(length) if length > 0 else b""


# --------------------------------------------------------------------------------------------------
# The emulator
# --------------------------------------------------------------------------------------------------


class KieEmulator:
    """A Kie.ai look-alike HTTP server; see the module docstring for the contract.

    Settings readable and writable at run time from any thread (plain attribute stores, read once per
    request): ``task_seconds`` (applies to tasks submitted afterwards), ``rate_limit`` (None = unlimited),
    ``rate_window_seconds``, ``webhook_hmac_key``, ``message_key`` ("msg", "message" or "alternate",
    which switches on every envelope), ``fetch_inputs`` and ``credits`` (reported by the credit endpoint,
    decreased by each accepted task's cost, never below zero; running out does not reject tasks — use
    ``[[credits]]`` for that).

    Result URLs are built on ``public_base_url`` when given (for clients reaching the emulator through
    another address, e.g. from a container), else on ``base_url``.
    """

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        api_key: str = "test-kie-key",
        task_seconds: float = 0.5,
        rate_limit: int | None = 20,
        rate_window_seconds: float = 10.0,
        webhook_hmac_key: str | None = None,
        message_key: str = "msg",
        fetch_inputs: bool = True,
        credits: float = 1000.0,
        public_base_url: str | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self.api_key = api_key
        self.task_seconds = task_seconds
        self.rate_limit = rate_limit
        self.rate_window_seconds = rate_window_seconds
        self.webhook_hmac_key = webhook_hmac_key
        self.message_key = message_key
        self.fetch_inputs = fetch_inputs
        self.credits = credits
        self.public_base_url = public_base_url.rstrip("/") if public_base_url else None

        self.requests: list[RecordedRequest] = []
        self.tasks: dict[str, EmulatedTask] = {}
        self.callbacks: list[CallbackAttempt] = []
        self.uploads: dict[str, tuple[bytes, str]] = {}  # name under /uploads/ → (bytes, content type)

        self._lock = threading.Lock()
        self._accepted_times: list[float] = []  # monotonic times of accepted tasks, for the rolling window
        self._submit500_seen: set[str] = set()
        self._envelopes = itertools.count()
        # Rendered result files by (task id, file name): a small LRU, plus a lock per file being rendered so
        # concurrent first downloads of one video encode it once.
        self._result_cache: OrderedDict[tuple[str, str], bytes] = OrderedDict()
        self._result_cache_lock = threading.Lock()
        self._rendering: dict[tuple[str, str], threading.Lock] = {}
        self._server: EmulatorServer | None = None
        self._thread: threading.Thread | None = None
        self._scheduler: _Scheduler | None = None
        self._fetchers: _WorkerPool | None = None
        self._senders: _WorkerPool | None = None
        # Outbound clients are made on first use: building one loads TLS certificates (~50 ms), which
        # would otherwise be paid by every test that starts an emulator and never fetches or calls back.
        self._fetch_http: httpx.Client | None = None
        self._callback_http: httpx.Client | None = None
        self._clients_lock = threading.Lock()
        self._base_url: str | None = None

    # ---- lifecycle -------------------------------------------------------------------------------

    @property
    def message_key(self) -> str:
        return self._message_key

    @message_key.setter
    def message_key(self, value: str) -> None:
        if value not in MESSAGE_KEYS:
            raise ValueError(f"message_key must be one of {', '.join(MESSAGE_KEYS)}")
        self._message_key = value

    @property
    def base_url(self) -> str:
        """``http://host:port`` of the running server (127.0.0.1 when bound to all interfaces)."""
        if self._base_url is None:
            raise RuntimeError("the emulator is not started")
        return self._base_url

    @property
    def result_base_url(self) -> str:
        return self.public_base_url or self.base_url

    def start(self) -> KieEmulator:
        """Bind and serve in a background thread; returns self. Starting twice is an error."""
        if self._server is not None:
            raise RuntimeError("the emulator is already started")
        self._server = EmulatorServer((self.host, self.port), self, _Handler)
        bound_host, bound_port = self._server.server_address[:2]
        self.port = int(bound_port)
        shown_host = "127.0.0.1" if bound_host in ("0.0.0.0", "", "::") else str(bound_host)
        self._base_url = f"http://{shown_host}:{self.port}"
        self._fetchers = _WorkerPool("kie-emulator-fetch", _FETCH_WORKERS)
        self._senders = _WorkerPool("kie-emulator-callback", _CALLBACK_WORKERS)
        self._scheduler = _Scheduler(self._task_finished)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, name="kie-emulator", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, drop open connections and background workers. Idempotent."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for worker in (self._scheduler, self._fetchers, self._senders):
            if worker is not None:
                worker.stop()
        with self._clients_lock:
            clients, self._fetch_http, self._callback_http = (self._fetch_http, self._callback_http), None, None
        for client in clients:
            if client is not None:
                client.close()

    def _fetch_client(self) -> httpx.Client:
        with self._clients_lock:
            if self._server is None:
                raise RuntimeError("the emulator is stopped")
            if self._fetch_http is None:
                self._fetch_http = httpx.Client(timeout=_INPUT_FETCH_TIMEOUT, follow_redirects=True)
            return self._fetch_http

    def _callback_client(self) -> httpx.Client:
        with self._clients_lock:
            if self._server is None:
                raise RuntimeError("the emulator is stopped")
            if self._callback_http is None:
                self._callback_http = httpx.Client(timeout=_CALLBACK_TIMEOUT)
            return self._callback_http

    def __enter__(self) -> KieEmulator:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # ---- queries on recorded data ----------------------------------------------------------------

    def submissions(self, family: str | None = None) -> list[RecordedRequest]:
        """Accepted submit requests (those answered with a taskId), optionally of one family, in order."""
        with self._lock:
            return [
                record
                for record in self.requests
                if record.kind == "submit"
                and record.task_id is not None
                and (family is None or record.family == family)
            ]

    def polls_for(self, task_id: str) -> int:
        """How many poll requests named ``task_id`` (whatever they were answered)."""
        with self._lock:
            return sum(1 for record in self.requests if record.kind == "poll" and record.task_id == task_id)

    # ---- request handling ------------------------------------------------------------------------

    def _handle(self, handler: _Handler, method: str) -> None:
        split = urlsplit(handler.path)
        path = split.path
        query = dict(parse_qsl(split.query, keep_blank_values=True))
        authorization = handler.headers.get("Authorization")
        authorized = self._authorized(authorization)
        headers = {
            name: ("Bearer <redacted>" if name.lower() == "authorization" else value)
            for name, value in handler.headers.items()
        }
        record = RecordedRequest(
            method=method, path=path, query=query, headers=headers, authorized=authorized, json=None, time=time.time()
        )
        try:
            raw = _read_body(handler)
        except (_BodyTooLarge, ValueError) as exc:
            too_large = isinstance(exc, _BodyTooLarge)
            response = self._envelope_response(
                413 if too_large else 400,
                "Request body too large" if too_large else "Malformed request body",
                status=413 if too_large else 400,
            )
            response.close_after = True  # whatever is left of the body is still on the socket
            self._finish(handler, method, record, response)
            return
        content_type = handler.headers.get("Content-Type", "")
        parsed: Any = None
        json_ok = False
        if raw and "multipart/" not in content_type:
            try:
                parsed = json.loads(raw)
                json_ok = True
            except (ValueError, UnicodeDecodeError):
                parsed = None
        record.json = parsed
        try:
            response = self._route(method, path, query, raw, content_type, parsed, json_ok, authorized, record)
        except Exception:  # noqa: BLE001 - answer like a server error instead of dropping the connection
            traceback.print_exc(file=sys.stderr)
            response = self._envelope_response(500, "Internal server error")
        self._finish(handler, method, record, response)

    def _finish(self, handler: _Handler, method: str, record: RecordedRequest, response: _Response) -> None:
        record.http_status = response.status
        record.code = response.code
        with self._lock:
            self.requests.append(record)
        self._write(handler, response, head_only=method == "HEAD")

    def _authorized(self, header: str | None) -> bool:
        if not header:
            return False
        scheme, _, token = header.strip().partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())

    @staticmethod
    def _write(handler: _Handler, response: _Response, *, head_only: bool) -> None:
        body = response.body
        length = len(body) if isinstance(body, bytes | bytearray) else response.length
        try:
            handler.send_response(response.status)
            handler.send_header("Content-Type", response.content_type)
            handler.send_header("Content-Length", str(length or 0))
            for name, value in response.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            if not head_only:
                if isinstance(body, bytes | bytearray):
                    handler.wfile.write(body)
                else:
                    for chunk in body:
                        handler.wfile.write(chunk)
            handler.wfile.flush()
        except (ConnectionError, TimeoutError, OSError):
            handler.close_connection = True
            return
        if response.close_after:
            handler.close_connection = True

    def _envelope(self, code: int, message: str, data: Any = None) -> dict[str, Any]:
        """``{"code", "msg" | "message", "data"}``; the message key follows ``message_key``."""
        key = self.message_key
        if key == "alternate":
            key = "msg" if next(self._envelopes) % 2 == 0 else "message"
        return {"code": code, key: message, "data": data}

    def _envelope_response(
        self, code: int, message: str, data: Any = None, *, status: int = 200, headers: dict[str, str] | None = None
    ) -> _Response:
        body = json.dumps(self._envelope(code, message, data), ensure_ascii=False).encode()
        return _Response(status, body, "application/json", headers=headers or {}, code=code)

    def _route(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        raw: bytes,
        content_type: str,
        parsed: Any,
        json_ok: bool,
        authorized: bool,
        record: RecordedRequest,
    ) -> _Response:
        if path.startswith("/api/"):
            if path in SUBMIT_PATHS:
                record.kind, record.family = "submit", SUBMIT_PATHS[path]
            elif path in POLL_PATHS:
                record.kind, record.family = "poll", POLL_PATHS[path]
                record.task_id = query.get("taskId") or None
            elif path in (CREDIT_PATH, DOWNLOAD_URL_PATH):
                record.kind = "account"
            elif path in (UPLOAD_STREAM_PATH, UPLOAD_URL_PATH, UPLOAD_BASE64_PATH):
                record.kind = "upload"
            if not authorized:
                return self._envelope_response(401, UNAUTHORIZED_MESSAGE)
            if (method == "POST" and path in _GET_ONLY) or (method != "POST" and path in _POST_ONLY):
                return self._envelope_response(405, "Method not allowed", status=405)
            if path in SUBMIT_PATHS:
                return self._submit(SUBMIT_PATHS[path], parsed if json_ok else None, record)
            if path in POLL_PATHS:
                return self._poll(POLL_PATHS[path], query.get("taskId") or "")
            if path == CREDIT_PATH:
                return self._envelope_response(200, "success", self.credits)
            if path == DOWNLOAD_URL_PATH:
                url = parsed.get("url") if isinstance(parsed, dict) else None
                if not isinstance(url, str) or not url:
                    return self._envelope_response(422, "url is required")
                return self._envelope_response(200, "success", url)
            if path == UPLOAD_STREAM_PATH:
                return self._upload_stream(raw, content_type, record)
            if path == UPLOAD_URL_PATH:
                return self._upload_from_url(parsed if isinstance(parsed, dict) else {})
            if path == UPLOAD_BASE64_PATH:
                return self._upload_base64(parsed if isinstance(parsed, dict) else {})
            return self._envelope_response(404, "Not found", status=404)
        if path.startswith("/files/"):
            record.kind = "file"
            if method not in ("GET", "HEAD"):
                return _Response(405, b"Method not allowed", "text/plain")
            return self._serve_result(path)
        if path.startswith("/uploads/"):
            record.kind = "file"
            if method not in ("GET", "HEAD"):
                return _Response(405, b"Method not allowed", "text/plain")
            stored = self.uploads.get(unquote(path[len("/uploads/") :]))
            if stored is None:
                return _Response(404, b"Not found", "text/plain")
            return _Response(200, stored[0], stored[1])
        return _Response(404, b"Not found", "text/plain")

    # ---- submit ----------------------------------------------------------------------------------

    def _submit(self, family: str, body: Any, record: RecordedRequest) -> _Response:
        if not isinstance(body, dict):
            return self._envelope_response(422, "Request body must be a JSON object")
        prompt = _prompt_of(family, body)
        directives = parse_directives(prompt) if isinstance(prompt, str) else {}

        if "submit500" in directives:
            with self._lock:
                first_attempt = prompt not in self._submit500_seen
                self._submit500_seen.add(prompt)
            if first_attempt:
                return _Response(500, _HTML_500, "text/html; charset=utf-8")
        if "maintenance" in directives:
            return self._envelope_response(455, "Service is under maintenance, please try again later")
        problem = self._validate(family, body, prompt)
        if problem is not None:
            return self._envelope_response(*problem)
        if "credits" in directives:
            return self._envelope_response(402, "Credits insufficient")
        if "credits500" in directives:
            return self._envelope_response(500, "Credits insufficient")
        if "validation" in directives:
            return self._envelope_response(422, "The model does not support this parameter")

        now = time.monotonic()
        with self._lock:
            limit = self.rate_limit
            if limit is not None:
                horizon = now - self.rate_window_seconds
                self._accepted_times = [t for t in self._accepted_times if t > horizon]
                if len(self._accepted_times) >= limit:
                    return self._envelope_response(429, RATE_LIMITED_MESSAGE)
                self._accepted_times.append(now)
            task = self._new_task(family, body, prompt, directives, now)
            self.tasks[task.task_id] = task
            self.credits = max(0.0, self.credits - task.cost)
        record.task_id = task.task_id

        if task.input_urls and self.fetch_inputs and self._fetchers is not None:
            self._fetchers.submit(self._fetch_inputs, task)
        else:
            task.fetch_done_at = task.started
            self._schedule_end(task)

        data: dict[str, Any] = {"taskId": task.task_id}
        if family == "jobs":
            data["recordId"] = task.task_id.split("_", 1)[1]
        return self._envelope_response(200, "success", data)

    @staticmethod
    def _validate(family: str, body: dict[str, Any], prompt: Any) -> tuple[int, str] | None:
        """``(code, message)`` of the first validation error, in Kie's style, or None."""
        if family == "jobs":
            model = body.get("model")
            if not isinstance(model, str) or not model.strip():
                return 422, "model is required"
            if body.get("input") is not None and not isinstance(body.get("input"), dict):
                return 422, "input must be an object"
        if not isinstance(prompt, str) or not prompt.strip():
            return 422, "prompt is required"
        callback = body.get("callBackUrl")
        if callback not in (None, "") and (
            not isinstance(callback, str) or not callback.startswith(("http://", "https://"))
        ):
            return 422, "callBackUrl is invalid"
        if family == "veo":
            model = body.get("model")
            if model is not None and model not in ("veo3", "veo3_fast"):
                return 422, "model must be veo3 or veo3_fast"
            if len(_url_list(body.get("imageUrls"))) > 2:
                return 422, "imageUrls accepts at most 2 images"
        elif family == "runway":
            duration = body.get("duration")
            if str(duration) not in ("5", "10"):
                return 422, "duration must be 5 or 10"
            quality = body.get("quality") or "720p"
            if quality not in ("720p", "1080p"):
                return 422, "quality must be 720p or 1080p"
            if quality == "1080p" and str(duration) == "10":
                return 422, "1080p quality is not available for 10-second videos"
            if not body.get("imageUrl") and not body.get("aspectRatio"):
                return 500, "aspectRatio is required"  # ⚠ a validation error under code 500, as seen in the wild
        elif family == "gpt4o":
            size = body.get("size")
            if size is not None and size not in ("1:1", "3:2", "2:3"):
                return 422, "size must be 1:1, 3:2 or 2:3"
            variants = body.get("nVariants")
            if variants is not None and str(variants) not in ("1", "2", "4"):
                return 422, "nVariants must be 1, 2 or 4"
        elif family == "flux":
            output_format = body.get("outputFormat")
            if output_format is not None and output_format not in ("jpeg", "png"):
                return 422, "outputFormat must be jpeg or png"
            model = body.get("model")
            if model is not None and model not in ("flux-kontext-pro", "flux-kontext-max"):
                return 422, "model must be flux-kontext-pro or flux-kontext-max"
        return None

    def _new_task(
        self, family: str, body: dict[str, Any], prompt: str, directives: dict[str, str | None], now: float
    ) -> EmulatedTask:
        """Plan a task from its request: media, size, files, result URLs, inputs, cost."""
        task_id = f"{family}_{uuid.uuid4().hex}"
        task_input: dict[str, Any] = (body.get("input") or {}) if family == "jobs" else body
        count = 1
        image_format = "png"
        if family == "jobs":
            model = str(body["model"])
            media = "video" if _is_video_model(model) else "image"
            input_urls = _url_list(
                task_input.get("image_urls"), task_input.get("image_url"), task_input.get("input_urls")
            )
            if media == "image":
                count = max(1, min(4, _int_or(task_input.get("num_images"), 1)))
                if str(task_input.get("output_format", "")).lower() in ("jpeg", "jpg"):
                    image_format = "jpeg"
        elif family == "veo":
            model, media = str(body.get("model") or "veo3_fast"), "video"
            input_urls = _url_list(body.get("imageUrls"))
        elif family == "runway":
            model, media = "runway", "video"
            input_urls = _url_list(body.get("imageUrl"))
        elif family == "gpt4o":
            model, media = "gpt-4o-image", "image"
            input_urls = _url_list(body.get("filesUrl"))
            count = _int_or(body.get("nVariants"), 1)
        else:
            model, media = str(body.get("model") or "flux-kontext-pro"), "image"
            input_urls = _url_list(body.get("inputImage"))
            if body.get("outputFormat") == "jpeg":
                image_format = "jpeg"

        size_hint = _first_present(task_input, "aspect_ratio", "aspectRatio", "size", "image_size", "ratio")
        if media == "video":
            short_side = _VIDEO_SHORT_SIDE
            resolution = task_input.get("resolution") if family == "jobs" else None
            if family == "runway" and body.get("quality") == "1080p":
                resolution = "1080p"
            match = re.fullmatch(r"(\d{3,4})p", str(resolution or ""))
            if match:
                short_side = max(144, min(2160, int(match.group(1))))
            width, height = _dimensions(size_hint, short_side, (16, 9), 3840)
            files = {"0.mp4": "mp4"}
            if family == "runway":
                files["0.png"] = "png"  # the cover image Runway reports next to the video
        else:
            width, height = _dimensions(size_hint, _IMAGE_SHORT_SIDE, (1, 1), 2048)
            extension = "jpg" if image_format == "jpeg" else "png"
            files = {f"{n}.{extension}": image_format for n in range(count)}

        results = [name for name in files if name.endswith(".mp4")] if media == "video" else list(files)
        base = self.result_base_url
        result_urls = [] if "noresult" in directives else [f"{base}/files/{task_id}/{name}" for name in results]
        slow = _float_directive(directives, "slow")
        size = _float_directive(directives, "size")
        return EmulatedTask(
            task_id=task_id,
            family=family,
            model=model,
            prompt=prompt,
            body=body,
            created_at=time.time(),
            duration=slow if slow is not None else max(0.0, float(self.task_seconds)),
            callback_url=body.get("callBackUrl") or None,
            directives=directives,
            media=media,
            width=width,
            height=height,
            files=files,
            result_urls=result_urls,
            input_urls=input_urls,
            video_size=int(size) if size is not None and media == "video" else None,
            cost=20.0 if media == "video" else 4.0 * count,
            started=now,
        )

    # ---- input fetching and completion ------------------------------------------------------------

    def _fetch_inputs(self, task: EmulatedTask) -> None:
        """Fetch each input URL (worker thread); the first failure fails the task at once."""
        error: str | None = None
        for url in task.input_urls:
            fetched = FetchedInput(url=url)
            task.inputs.append(fetched)
            kept = bytearray()
            try:
                if not url.startswith(("http://", "https://")):
                    raise httpx.InvalidURL("not an http(s) URL")
                with self._fetch_client().stream("GET", url) as response:
                    fetched.status = response.status_code
                    fetched.content_type = response.headers.get("Content-Type")
                    if response.status_code != 200:
                        error = f"Failed to fetch input image: {response.status_code}"
                    else:
                        for chunk in response.iter_bytes():
                            fetched.content_length += len(chunk)
                            if len(kept) < _MAX_INPUT_KEEP_BYTES:
                                kept += chunk[: _MAX_INPUT_KEEP_BYTES - len(kept)]
            except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the emulator stopped meanwhile
                error = f"Failed to fetch input image: {type(exc).__name__}"
            if error is None:
                fetched.kind = _sniff(bytes(kept[:16]))
                if fetched.kind is None:
                    error = UNSUPPORTED_FILE_MESSAGE
                elif fetched.kind == "image" and task.source_thumbnail is None:
                    task.source_thumbnail = self._thumbnail_bytes(bytes(kept))
            if error is not None:
                fetched.error = error
                break
        # fetch_error first: readers treat fetch_done_at as the signal that the outcome is known.
        task.fetch_error = error
        task.fetch_done_at = time.monotonic()
        self._schedule_end(task)

    @staticmethod
    def _thumbnail_bytes(data: bytes) -> bytes | None:
        """A small JPEG of an input picture, so a thousand tasks in flight do not hold their full inputs."""
        picture = _open_thumbnail(data, 384, 384)
        return _encode_image(picture, "JPEG") if picture is not None else None

    def _schedule_end(self, task: EmulatedTask) -> None:
        end = task.ends_at
        if end is not None and task.callback_url and "nocallback" not in task.directives and self._scheduler:
            self._scheduler.schedule(end, task.task_id)

    def _task_finished(self, task_id: str) -> None:
        """Scheduler hook: a task reached its end; hand its callback to the sender pool."""
        task = self.tasks.get(task_id)
        if task is not None and self._senders is not None and not task.callback_sent:
            task.callback_sent = True
            self._senders.submit(self._send_callback, task)

    def _send_callback(self, task: EmulatedTask) -> None:
        """POST the family's callback body once, signed when ``webhook_hmac_key`` is set; never retried."""
        now = max(time.monotonic(), task.ends_at or 0.0)
        body = self._callback_body(task, now)
        headers = {"Content-Type": "application/json"}
        key = self.webhook_hmac_key
        if key:
            timestamp = str(int(time.time()))
            digest = hmac.new(key.encode(), f"{task.task_id}.{timestamp}".encode(), hashlib.sha256).digest()
            headers["X-Webhook-Timestamp"] = timestamp
            headers["X-Webhook-Signature"] = base64.b64encode(digest).decode()
        attempt = CallbackAttempt(
            task_id=task.task_id, url=str(task.callback_url), body=body, headers=headers, time=time.time()
        )
        try:
            response = self._callback_client().post(
                str(task.callback_url), content=json.dumps(body, ensure_ascii=False).encode(), headers=headers
            )
            attempt.status = task.callback_status = response.status_code
        except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: the emulator stopped meanwhile
            attempt.error = task.callback_error = f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.callbacks.append(attempt)

    # ---- poll and callback bodies ------------------------------------------------------------------

    def _poll(self, family: str, task_id: str) -> _Response:
        if not task_id:
            return self._envelope_response(422, "taskId is required")
        task = self.tasks.get(task_id)
        if task is None or task.family != family:
            return self._envelope_response(404, "Task not found")
        with self._lock:
            task.polls += 1
            poll_number = task.polls
            malformed = "malformed" in task.directives
            rate_limited = "429poll" in task.directives and poll_number <= 2
            if not rate_limited and "malformed-once" in task.directives and not task.malformed_sent:
                task.malformed_sent = malformed = True
        if rate_limited:
            return self._envelope_response(
                429, "Too many requests, please slow down", status=429, headers={"Retry-After": "1"}
            )
        if malformed:
            key = self.message_key if self.message_key != "alternate" else "msg"
            return _Response(200, _MALFORMED_BODY.format(key=key).encode(), "application/json", code=200)
        return self._envelope_response(200, "success", self._poll_data(task, time.monotonic()))

    def _poll_data(self, task: EmulatedTask, now: float) -> dict[str, Any]:
        """The family's record-info ``data`` for ``task`` as of ``now``."""
        state, progress = task.phase(now)
        done = state in ("success", "fail")
        success = state == "success"
        end = task.ends_at
        complete_ms = task.wall_ms(end) if done and end is not None else None
        param = json.dumps(task.body, ensure_ascii=False)
        input_failed = task.fetch_error is not None
        if task.family == "jobs":
            return {
                "taskId": task.task_id,
                "model": task.model,
                "state": state,
                "param": param,
                "resultJson": json.dumps({"resultUrls": task.result_urls}) if success else "",
                # ⚠ Kie reports these as null while pending and "" once done: clients must accept both.
                "failCode": ("422" if input_failed else "500") if state == "fail" else ("" if done else None),
                "failMsg": task.fail_message if state == "fail" else ("" if done else None),
                "costTime": int((end - task.started) * 1000) if done and end is not None else None,
                "creditsConsumed": task.cost if success else 0,
                "completeTime": complete_ms,
                "createTime": task.create_ms,
                "updateTime": complete_ms if done else task.wall_ms(now),
            }
        if success:
            flag = 1
        elif state == "fail":
            flag = 3 if input_failed else 2  # 3: "created but generation failed"
        else:
            flag = 0
        error_message = task.fail_message if state == "fail" else None
        if task.family == "veo":
            return {
                "taskId": task.task_id,
                "paramJson": param,
                "completeTime": complete_ms,
                "response": self._veo_info(task) if success else None,
                "successFlag": flag,
                "errorCode": (422 if input_failed else 500) if state == "fail" else None,
                "errorMessage": error_message,
                "createTime": task.create_ms,
                "fallbackFlag": False,
            }
        if task.family == "runway":
            runway_state = {"waiting": "wait", "queuing": "queueing"}.get(state, state)
            video_url = task.result_urls[0] if task.result_urls else ""
            cover_url = f"{self.result_base_url}/files/{task.task_id}/0.png" if task.result_urls else ""
            return {
                "taskId": task.task_id,
                "parentTaskId": "",
                "generateParam": {
                    "prompt": task.prompt,
                    "imageUrl": task.body.get("imageUrl") or "",
                    "expandPrompt": bool(task.body.get("expandPrompt", False)),
                },
                "state": runway_state,
                "generateTime": complete_ms,
                "videoInfo": (
                    {
                        "videoId": task.task_id.split("_", 1)[1],
                        "taskId": task.task_id,
                        "videoUrl": video_url,
                        "imageUrl": cover_url,
                    }
                    if success
                    else None
                ),
                "failCode": (422 if input_failed else 500) if state == "fail" else None,
                "failMsg": error_message or "",
                "expireFlag": 0,
                "createTime": task.create_ms,
            }
        if task.family == "gpt4o":
            if success:
                status = "SUCCESS"
            elif state == "fail":
                status = "CREATE_TASK_FAILED" if input_failed else "GENERATE_FAILED"
            else:
                status = "GENERATING"
            return {
                "taskId": task.task_id,
                "paramJson": param,
                "completeTime": complete_ms,
                "response": {"resultUrls": task.result_urls} if success else None,
                "successFlag": 1 if success else (2 if state == "fail" else 0),
                "status": status,
                "errorCode": (422 if input_failed else 500) if state == "fail" else None,
                "errorMessage": error_message or "",
                "createTime": task.create_ms,
                "progress": f"{progress:.2f}",
            }
        result_url = task.result_urls[0] if task.result_urls else ""
        return {
            "taskId": task.task_id,
            "paramJson": param,
            "completeTime": complete_ms,
            "response": {"originImageUrl": result_url, "resultImageUrl": result_url} if success else None,
            "successFlag": flag,
            "errorCode": (422 if input_failed else 500) if state == "fail" else None,
            "errorMessage": error_message,
            "createTime": task.create_ms,
        }

    @staticmethod
    def _veo_info(task: EmulatedTask) -> dict[str, Any]:
        return {
            "resultUrls": list(task.result_urls),
            "originUrls": list(task.result_urls),
            "resolution": f"{min(task.width, task.height)}p",
        }

    def _callback_body(self, task: EmulatedTask, now: float) -> dict[str, Any]:
        """The callback JSON of ``task`` (which has ended): code 200 on success, 501 on failure."""
        state, _ = task.phase(now)
        success = state == "success"
        code = 200 if success else 501
        if task.family == "veo":
            message = "Veo3 video generated successfully." if success else task.fail_message
            info = self._veo_info(task) if success else None
            return self._envelope(code, message, {"taskId": task.task_id, "info": info, "fallbackFlag": False})
        message = "Playground task completed successfully." if success else task.fail_message
        return self._envelope(code, message, self._poll_data(task, now))

    # ---- result files -------------------------------------------------------------------------------

    def _serve_result(self, path: str) -> _Response:
        parts = path.split("/")
        if len(parts) != 4:
            return _Response(404, b"Not found", "text/plain")
        task = self.tasks.get(parts[2])
        name = parts[3]
        if task is None or name not in task.files or task.phase()[0] != "success":
            return _Response(404, b"Not found", "text/plain")
        if "badresult" in task.directives:
            return _Response(200, _HTML_RESULT_ERROR, "text/html; charset=utf-8")
        renderer = task.files[name]
        body: bytes | Iterable[bytes]
        if renderer == "mp4" and task.video_size is not None:
            length, chunks = mp4_stream_chunks(task.width, task.height, task.video_size)
            body = chunks
        else:
            body = self._result_file(task, name, renderer)
            length = len(body)
        if "truncated" in task.directives:
            return _Response(200, _cut(body, length // 2), _CONTENT_TYPES[renderer], length=length, close_after=True)
        return _Response(200, body, _CONTENT_TYPES[renderer], length=length)

    def _result_file(self, task: EmulatedTask, name: str, renderer: str) -> bytes:
        """One result picture or (not ``[[size:N]]``) video: rendered on first request, then from a small LRU.

        Concurrent first requests for one file wait for a single render. A file evicted from the cache is
        rendered again, to the same bytes.
        """
        key = (task.task_id, name)
        with self._result_cache_lock:
            cached = self._result_cache.get(key)
            if cached is not None:
                self._result_cache.move_to_end(key)
                return cached
            rendering = self._rendering.setdefault(key, threading.Lock())
        with rendering:
            with self._result_cache_lock:
                cached = self._result_cache.get(key)
            if cached is not None:
                return cached  # rendered by the request this one waited for
            try:
                data = self._render_result(task, name, renderer)
                with self._result_cache_lock:
                    self._result_cache[key] = data
                    while len(self._result_cache) > _RESULT_CACHE_ENTRIES:
                        self._result_cache.popitem(last=False)
            finally:
                with self._result_cache_lock:
                    self._rendering.pop(key, None)
        return data

    @staticmethod
    def _render_result(task: EmulatedTask, name: str, renderer: str) -> bytes:
        label = task.prompt if name.startswith("0.") else f"{task.prompt} (#{name.split('.')[0]})"
        if renderer == "mp4":
            return make_mp4(label, task.width, task.height, task.source_thumbnail)
        image = _render_image(label, task.width, task.height, task.source_thumbnail)
        return _encode_image(image, "JPEG" if renderer == "jpeg" else "PNG")

    # ---- uploads ----------------------------------------------------------------------------------------

    def _store_upload(self, data: bytes, upload_path: str, file_name: str | None) -> _Response:
        token = uuid.uuid4().hex[:16]
        content_type = _content_type_for(data)
        extension = {"image/png": "png", "image/jpeg": "jpg", "video/mp4": "mp4"}.get(content_type, "bin")
        name = _safe_name(file_name or "", f"{token}.{extension}")
        key = f"{token}/{name}"
        with self._lock:
            self.uploads[key] = (data, content_type)
        folder = upload_path.strip("/")
        return self._envelope_response(
            200,
            "success",
            {
                "fileName": name,
                "filePath": f"{folder}/{name}" if folder else name,
                "downloadUrl": f"{self.result_base_url}/uploads/{quote(key)}",
                "fileSize": len(data),
                "mimeType": content_type,
                "uploadedAt": time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime()),
            },
        )

    def _upload_stream(self, raw: bytes, content_type: str, record: RecordedRequest) -> _Response:
        if "multipart/form-data" not in content_type:
            return self._envelope_response(400, "Content-Type must be multipart/form-data")
        try:
            fields, files = _parse_multipart(raw, content_type)
        except ValueError as exc:
            return self._envelope_response(400, str(exc))
        record.form = fields
        if "file" not in files:
            return self._envelope_response(400, "file is required")
        if not fields.get("uploadPath"):
            return self._envelope_response(400, "uploadPath is required")
        filename, data = files["file"]
        return self._store_upload(data, fields["uploadPath"], fields.get("fileName") or filename)

    def _upload_from_url(self, body: dict[str, Any]) -> _Response:
        url, upload_path = body.get("fileUrl"), body.get("uploadPath")
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            return self._envelope_response(400, "fileUrl is required")
        if not isinstance(upload_path, str) or not upload_path:
            return self._envelope_response(400, "uploadPath is required")
        try:
            response = self._fetch_client().get(url)
        except (httpx.HTTPError, RuntimeError) as exc:
            return self._envelope_response(500, f"Failed to download file: {type(exc).__name__}")
        if response.status_code != 200:
            return self._envelope_response(500, f"Failed to download file: {response.status_code}")
        fallback = urlsplit(url).path.rsplit("/", 1)[-1]
        return self._store_upload(response.content, upload_path, body.get("fileName") or fallback)

    def _upload_base64(self, body: dict[str, Any]) -> _Response:
        encoded, upload_path = body.get("base64Data"), body.get("uploadPath")
        if not isinstance(encoded, str) or not encoded:
            return self._envelope_response(400, "base64Data is required")
        if not isinstance(upload_path, str) or not upload_path:
            return self._envelope_response(400, "uploadPath is required")
        if encoded.startswith("data:"):
            encoded = encoded.split(",", 1)[-1]  # data URL: keep only the payload
        try:
            data = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError):
            return self._envelope_response(400, "base64Data is not valid base64")
        return self._store_upload(data, upload_path, body.get("fileName"))


def _cut(body: bytes | Iterable[bytes], limit: int) -> Iterator[bytes]:
    """The first ``limit`` bytes of a body, for responses that deliberately end early."""
    chunks = [body] if isinstance(body, bytes | bytearray) else body
    remaining = limit
    for chunk in chunks:
        if remaining <= 0:
            return
        piece = chunk[:remaining]
        remaining -= len(piece)
        yield piece
