"""A stand-in for ``engine.Engine`` without torch or diffusers, for running the real service without a model.

``main.create_app(settings, engine=FakeEngine(...))`` serves the real HTTP API (validation, auth, errors,
the one-at-a-time lock, loading and reloading) on it; Genbox's sandbox and tests run it that way in Genbox's
own environment. It keeps ``Engine``'s contract (``main.EngineLike``):

* States ``idle`` → ``loading`` → ``ready`` or ``failed``, with the same reasons in ``not_loaded_reason``. A
  load takes ``load_seconds``, then fails with ``LoadError(load_error)`` if ``load_error`` is set by then; clear
  it and ``POST /reload`` to load again, as one would after fixing a real cause.
* ``generate`` answers a real PNG of the size the real engine answers: text to image exactly
  ``width``×``height``; image to image exactly the source's size, ``width``/``height`` ignored. It is drawn at
  the size rounded up to ``SIZE_MULTIPLE`` and resized back, as the decoder's output is. The picture is a
  function of the request (prompt, negative prompt, seed, steps, guidance, size, source, strength), so the
  same seed and body give the same bytes; without a seed one is picked and reported in the ``Result``. Image
  to image blends the source in by ``strength``; at strength 0 the answer is the source itself, as with the
  real engine.
* Each generation takes ``task_seconds`` (read when it starts), so ``/health`` reports ``busy`` meanwhile.

Directives in the prompt (``[[name]]`` or ``[[name:value]]``) make it fail, see ``DIRECTIVES``: as a real
engine can (out of memory, an exception, slowness), or, for ``[[malformed]]``, by handing back bytes that are
not a PNG, which the service passes on as it would any engine's (a client sees what a broken proxy would give).

``release()`` ends every load and generation begun before it at once, for tests and for stopping a server
without waiting out a long ``load_seconds``; ``loads`` counts the loads begun.

Pillow only. Nothing here is used by the service itself.
"""

from __future__ import annotations

import hashlib
import io
import math
import random
import re
import secrets
import textwrap
import threading
import time
from collections import deque
from dataclasses import dataclass
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

if __package__:  # loaded as part of a package: Genbox's sandbox does, under a module name of its own
    from .main import MAX_SEED, LoadError, LoadState, ModelsNotLoaded, Result, Settings
else:  # run from this folder, as uvicorn and the service's tests do
    from main import MAX_SEED, LoadError, LoadState, ModelsNotLoaded, Result, Settings

SIZE_MULTIPLE = 64  # the real decoder's (engine.Pipelines.size_multiple for the real MoVQ)
OUT_OF_MEMORY_MESSAGE = "CUDA out of memory. Tried to allocate 1.50 GiB"
FAILURE_MESSAGE = "Emulated failure"
# What [[malformed]] hands back instead of a PNG: an error page, the usual thing found where a picture should be.
MALFORMED_BODY = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
GENERATIONS_KEPT = 500

DIRECTIVES = {
    "oom": f"500 'Out of memory: {OUT_OF_MEMORY_MESSAGE}' at once (the engine raises an out-of-memory error)",
    "fail": f"500 'Generation failed: RuntimeError: {FAILURE_MESSAGE}' after the generation time",
    "malformed": "200 image/png whose body is an HTML page, not a PNG, after the generation time",
    "slow:S": "the generation takes S seconds (a float) instead of task_seconds",
}

_DIRECTIVE_RE = re.compile(r"\[\[([a-z0-9][a-z0-9-]*)(?::([^\]]*))?\]\]", re.IGNORECASE)
# FreeType rendering is not thread-safe, and several fake engines may draw at once in one process.
_RENDER_LOCK = threading.Lock()


class OutOfMemoryError(RuntimeError):
    """What ``[[oom]]`` raises: like ``torch.OutOfMemoryError``, a ``RuntimeError`` worded the way CUDA's is."""


@dataclass
class FakeGeneration:
    """One call of ``generate`` that found the models loaded. ``width``×``height`` is the answer's size;
    ``outcome`` is ``running``, ``ok``, ``oom``, ``fail`` or ``malformed``."""

    prompt: str
    seed: int
    width: int
    height: int
    mode: str  # "txt2img" or "img2img"
    strength: float
    started: float  # time.time()
    finished: float = 0.0
    outcome: str = "running"


def parse_directives(prompt: str) -> dict[str, str | None]:
    """``[[name]]`` / ``[[name:value]]`` markers in a prompt, as ``{name (lower case): value or None}``."""
    return {match.group(1).lower(): match.group(2) for match in _DIRECTIVE_RE.finditer(prompt)}


def _seconds(value: str | None) -> float | None:
    """A ``[[slow:S]]`` value, or None when it is not a finite, non-negative number."""
    try:
        seconds = float(value or "")
    except ValueError:
        return None
    return seconds if seconds >= 0 and math.isfinite(seconds) else None


class FakeEngine(LoadState):
    """``engine.Engine``'s interface, drawing pictures with Pillow; see the module docstring.

    ``device`` is what ``/health`` reports: ``settings.device``, with ``auto`` read as ``cuda`` (it stands in
    for a GPU box). The knobs (``task_seconds``, ``load_seconds``, ``load_error``) may be changed at any time.
    """

    out_of_memory_error = OutOfMemoryError
    size_multiple = SIZE_MULTIPLE

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        task_seconds: float = 0.2,
        load_seconds: float = 0.0,
        load_error: str | None = None,
    ):
        super().__init__()
        self.settings = settings or Settings()
        self.device = "cuda" if self.settings.device == "auto" else self.settings.device
        self.task_seconds = task_seconds
        self.load_seconds = load_seconds
        self.load_error = load_error
        self.generations: deque[FakeGeneration] = deque(maxlen=GENERATIONS_KEPT)
        self.loads = 0  # loads begun
        self._models = False  # "the pipelines": set by a successful load, dropped by unload
        self._wakeup = threading.Condition()
        self._releases = 0

    # ---- the Engine interface ------------------------------------------------------------------------

    def load(self) -> None:
        """Take ``load_seconds`` (or until ``release()``), then become ``ready``, or ``failed`` with
        ``LoadError(load_error)`` if ``load_error`` is set by then."""
        begun = self._releases  # before ``loads`` counts this one: once it does, a release() ends it
        with self._state_lock:
            self.state = "loading"
            self.error = ""
            self.loads += 1
        self.unload()
        self._pause(self.load_seconds, begun)
        error = self.load_error
        with self._state_lock:
            if error:
                self.state, self.error = "failed", error
            else:
                self.state, self._models = "ready", True
        if error:
            raise LoadError(error)

    def unload(self) -> None:
        with self._state_lock:
            self._models = False

    def free_memory(self) -> None:
        """Nothing to free: there is no device memory."""

    def generate(
        self,
        *,
        prompt: str,
        negative_prompt: str = "",
        width: int = 768,
        height: int = 768,
        num_inference_steps: int = 50,
        guidance_scale: float = 4.0,
        prior_guidance_scale: float = 1.0,
        seed: int | None = None,
        source: Image.Image | None = None,
        strength: float = 0.65,
    ) -> Result:
        """Text to image, or image to image when ``source`` is given; see the module docstring. Directives
        in ``prompt`` turn it into a failure (``DIRECTIVES``)."""
        begun = self._releases  # before the generation is recorded: once it is, a release() ends it
        if not self._models or not self.loaded:
            raise ModelsNotLoaded(self.not_loaded_reason())
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        directives = parse_directives(prompt)
        slow = _seconds(directives.get("slow"))
        duration = slow if slow is not None else max(0.0, float(self.task_seconds))
        target = source.size if source is not None else (width, height)
        generation = FakeGeneration(
            prompt=prompt,
            seed=seed,
            width=target[0],
            height=target[1],
            mode="img2img" if source is not None else "txt2img",
            strength=strength,
            started=time.time(),
        )
        self.generations.append(generation)
        started = time.monotonic()
        try:
            if "oom" in directives:
                generation.outcome = "oom"
                raise OutOfMemoryError(OUT_OF_MEMORY_MESSAGE)
            fingerprint = (prompt, negative_prompt, seed, num_inference_steps, guidance_scale, prior_guidance_scale)
            png = render(repr(fingerprint), prompt, seed, target, source, strength)
            self._pause(duration - (time.monotonic() - started), begun)
            if "fail" in directives:
                generation.outcome = "fail"
                raise RuntimeError(FAILURE_MESSAGE)
            if "malformed" in directives:
                generation.outcome = "malformed"
                png = MALFORMED_BODY
            else:
                generation.outcome = "ok"
            return Result(png=png, seed=seed, width=target[0], height=target[1])
        finally:
            generation.finished = time.time()

    # ---- for tests and the sandbox -------------------------------------------------------------------

    def release(self) -> None:
        """End the loads and generations begun before this call now: a load finishes (as ``load_error`` says),
        a generation answers. Later ones take their full time again."""
        with self._wakeup:
            self._releases += 1
            self._wakeup.notify_all()

    def _pause(self, seconds: float, begun: int) -> None:
        """Sleep ``seconds``, or until a ``release()`` after the ``_releases`` count ``begun``."""
        if seconds <= 0:
            return
        with self._wakeup:
            self._wakeup.wait_for(lambda: self._releases != begun, timeout=min(seconds, threading.TIMEOUT_MAX))


def render(
    fingerprint: str,
    prompt: str,
    seed: int,
    size: tuple[int, int],
    source: Image.Image | None = None,
    strength: float = 0.65,
) -> bytes:
    """The PNG the fake engine answers: ``size`` exactly, a function of its arguments only.

    Shapes and colours come from ``fingerprint`` (everything in the request that changes a real picture); the
    prompt, the seed and a SANDBOX label are written over them. A ``source`` shows through the shapes, the
    more the lower ``strength`` is; at ``strength`` 0 the answer is the source itself, as the real engine's is.
    """
    if source is not None and strength <= 0:
        return _encode(source.convert("RGB"))
    width, height = size
    work = tuple(math.ceil(side / SIZE_MULTIPLE) * SIZE_MULTIPLE for side in size)
    digest = hashlib.sha256(fingerprint.encode("utf-8", "replace")).digest()
    rng = random.Random(digest)
    background = tuple(40 + value % 120 for value in digest[:3])
    image = Image.new("RGB", work, background)
    draw = ImageDraw.Draw(image)
    # Shapes, so that different requests differ all over the picture, not only in the text.
    for _ in range(6):
        x, y = rng.randrange(work[0]), rng.randrange(work[1])
        radius = rng.randrange(max(2, min(work) // 8), max(3, min(work) // 3))
        colour = tuple(rng.randrange(256) for _ in range(3))
        draw.ellipse((x - radius, y - radius, x + radius, y + radius), fill=colour)
    if source is not None:
        image = Image.blend(source.convert("RGB").resize(work, Image.Resampling.BILINEAR), image, min(strength, 1.0))
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    _label(image, prompt, seed)
    return _encode(image)


def _label(image: Image.Image, prompt: str, seed: int) -> None:
    """Write the prompt and the seed, and a SANDBOX band along the bottom."""
    width, height = image.size
    short = min(width, height)
    margin = max(4, short // 32)
    text_size = max(8, short // 24)
    label_size = max(10, short // 10)
    band = label_size + 2 * margin
    draw = ImageDraw.Draw(image)
    with _RENDER_LOCK:
        font = _font(text_size)
        columns = max(8, int((width - 2 * margin) / (text_size * 0.55)))
        line_height = int(text_size * 1.25)
        room = max(1, (height - band - 2 * margin) // line_height)
        # The prompt as far as it fits, and the seed on the last line.
        lines = [*(textwrap.wrap(prompt, columns) or ["(empty prompt)"])[: room - 1], f"seed {seed}"]
        for index, line in enumerate(lines):
            draw.text((margin, margin + index * line_height), _drawable(line, font), fill=(255, 255, 255), font=font)
        draw.rectangle((0, height - band, width, height), fill=(0, 0, 0))
        draw.text((margin, height - band + margin), "SANDBOX", fill=(255, 214, 0), font=_font(label_size))


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


def _encode(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    # Fast compression: these pictures are throwaway, and a sandbox may serve many of them.
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
