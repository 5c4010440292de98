"""AUTOMATIC1111 / Forge WebUI API emulator: a synchronous local GPU server over real HTTP.

The wire protocol is the WebUI's ``/sdapi/v1`` API (FastAPI + pydantic v1), as ``docs/providers.md`` describes
it. Standard library and Pillow only, no Django.

Contract, in short:

* ``A1111Emulator(...).start()`` serves in the background (see ``LocalEmulator``); with ``auth=(user, password)``
  every route needs HTTP Basic auth, else 401 ``{"detail": "Not authenticated"}`` (or
  ``"Incorrect username or password"``) with ``WWW-Authenticate: Basic``. Unknown paths answer 404, known
  paths with another method 405, both in the error shape below.
* ``POST /sdapi/v1/txt2img`` / ``img2img`` block for ``task_seconds`` (read at request time; ``[[slow:S]]``
  overrides it) and run one at a time (``gpu``, a lock, like one GPU); other routes keep answering meanwhile.
  They answer ``{"images": [base64 PNG], "parameters": <body echoed over the defaults>, "info": "<JSON>"}``
  with ``batch_size * n_iter`` images; image ``i`` uses seed ``seed + i`` (``seed`` -1 → a random one).
  Each picture is ``make_png`` of ``"seed <n> · <prompt>"``, so equal requests give identical bytes.
  Sizes: txt2img ``width`` × ``height`` (default 512), or the hires size with ``enable_hr`` (``hr_resize_x/y``
  or ``hr_scale`` × the base size); img2img the body's ``width`` × ``height`` (default 512, not the source's),
  the first init image pasted in; with a ``mask``, the picture replaces the (resized) init image only where
  the mask is white (``mask_blur`` softens the edge, ``inpainting_mask_invert`` flips it).
* ``POST /sdapi/v1/extra-single-image`` really resizes the image with Pillow: ``upscaling_resize`` × the size
  rounded down to a multiple of 8 (as A1111's upscalers do), or ``upscaling_resize_w/h`` with resize_mode 1.
* ``GET /sdapi/v1/progress`` reports the running job, advancing linearly with time; ``POST /sdapi/v1/interrupt``
  (and ``/skip``) ends it early, the request still answering its images. ``GET /sdapi/v1/sd-models``,
  ``samplers``, ``upscalers``, ``options`` (``POST`` switches ``sd_model_checkpoint``), ``GET /internal/ping``.
* Errors: 422 pydantic v1 ``{"detail": [{"loc": ["body", field], "msg", "type"}]}`` for bad fields; everything
  else ``{"error": <exception name>, "detail": <message>, "body": "", "errors": <str(exception)>}`` with the
  HTTP status (404 unknown sampler/upscaler, 500 undecodable image, 500 ``OutOfMemoryError``, ...).
  Real A1111 leaves ``detail`` empty for non-HTTP exceptions and puts the message only in ``errors``; the
  emulator fills both, so read ``detail or errors``.
* Failure modes are driven by directives in ``prompt``, see ``DIRECTIVES``. A batch (or an extras result) of
  more than ``MAX_BATCH_PIXELS`` output pixels, or a request of more than ``MAX_TOTAL_PIXELS``, also answers
  ``OutOfMemoryError`` (the emulator refuses to draw gigapixels). Emulator-only checks (not in A1111): steps,
  batch_size, n_iter ≥ 1 and width, height ≥ 64, else 422.

Recorded for tests: ``requests`` (every request, see ``LocalEmulator``) and ``generations`` (one
``A1111Generation`` per job that reached the GPU: body, seeds, output size, start/end time, outcome).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import html
import io
import json
import math
import random
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from PIL import Image, ImageFilter, ImageOps

from .kie import make_png, parse_directives
from .server import LocalEmulator, Reply, Request, slow_seconds

DIRECTIVES = {
    "oom": "500 OutOfMemoryError 'CUDA out of memory. ...' as soon as the job reaches the GPU",
    "fail": "500 RuntimeError 'Emulated failure' after the generation time",
    "malformed": "200 application/json with a truncated JSON body, after the generation time",
    "slow:S": "the generation takes S seconds (float) instead of task_seconds",
}

OOM_MESSAGE = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. "
    "GPU 0 has a total capacity of 8.00 GiB of which 512.00 MiB is free."
)
MAX_BATCH_PIXELS = 4096 * 4096  # output pixels of one batch (batch_size pictures)
MAX_TOTAL_PIXELS = 64 * 1024 * 1024  # output pixels of all pictures of one request

SAMPLERS: list[dict[str, Any]] = [
    {"name": "Euler", "aliases": ["k_euler"], "options": {}},
    {"name": "Euler a", "aliases": ["k_euler_a", "k_euler_ancestral"], "options": {"uses_ensd": "True"}},
    {"name": "DPM++ 2M", "aliases": ["k_dpmpp_2m"], "options": {}},
    {"name": "DPM++ 2M Karras", "aliases": ["k_dpmpp_2m_ka"], "options": {"scheduler": "karras"}},
    {"name": "DPM++ SDE", "aliases": ["k_dpmpp_sde"], "options": {"second_order": "True", "brownian_noise": "True"}},
    {"name": "DDIM", "aliases": ["ddim"], "options": {}},
    {"name": "UniPC", "aliases": ["unipc"], "options": {}},
]
SAMPLER_NAMES = frozenset(sampler["name"] for sampler in SAMPLERS)

_ESRGAN = "https://github.com/xinntao/Real-ESRGAN/releases/download"
UPSCALERS: list[dict[str, Any]] = [
    {"name": "None", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
    {"name": "Lanczos", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
    {"name": "Nearest", "model_name": None, "model_path": None, "model_url": None, "scale": 4},
    {
        "name": "R-ESRGAN 4x+",
        "model_name": "R-ESRGAN 4x+",
        "model_path": f"{_ESRGAN}/v0.1.0/RealESRGAN_x4plus.pth",
        "model_url": None,
        "scale": 4,
    },
    {
        "name": "R-ESRGAN 4x+ Anime6B",
        "model_name": "R-ESRGAN 4x+ Anime6B",
        "model_path": f"{_ESRGAN}/v0.2.2.4/RealESRGAN_x4plus_anime_6B.pth",
        "model_url": None,
        "scale": 4,
    },
    {
        "name": "SwinIR 4x",
        "model_name": "SwinIR 4x",
        "model_path": "https://github.com/JingyunLiang/SwinIR/releases/download/v0.0/"
        "003_realSR_BSRGAN_DFOWMFC_s64w8_SwinIR-L_x4_GAN.pth",
        "model_url": None,
        "scale": 4,
    },
]
UPSCALER_NAMES = frozenset(upscaler["name"] for upscaler in UPSCALERS)

_MODELS_DIR = "/stable-diffusion-webui/models/Stable-diffusion"
SD_MODELS: list[dict[str, Any]] = [
    {
        "title": "sd_xl_base_1.0.safetensors [31e35c80fc]",
        "model_name": "sd_xl_base_1.0",
        "hash": "31e35c80fc",
        "sha256": "31e35c80fc4829d14f90153f4c74cd59c90b779f6afe05a74cd6120b893f7e5b",
        "filename": f"{_MODELS_DIR}/sd_xl_base_1.0.safetensors",
        "config": None,
    },
    {
        "title": "v1-5-pruned-emaonly.safetensors [6ce0161689]",
        "model_name": "v1-5-pruned-emaonly",
        "hash": "6ce0161689",
        "sha256": "6ce0161689b3853acaa03779ec93eafe75a02f4ced659bee03f50797806fa2fa",
        "filename": f"{_MODELS_DIR}/v1-5-pruned-emaonly.safetensors",
        "config": None,
    },
]
VERSION = "v1.10.1"

# The request models' fields and defaults (a subset of A1111's; unknown keys are accepted and echoed).
_COMMON_DEFAULTS: dict[str, Any] = {
    "prompt": "",
    "negative_prompt": "",
    "styles": None,
    "seed": -1,
    "subseed": -1,
    "subseed_strength": 0.0,
    "seed_resize_from_h": -1,
    "seed_resize_from_w": -1,
    "sampler_name": None,
    "scheduler": None,
    "batch_size": 1,
    "n_iter": 1,
    "steps": 20,
    "cfg_scale": 7.0,
    "width": 512,
    "height": 512,
    "restore_faces": None,
    "tiling": None,
    "do_not_save_samples": False,
    "do_not_save_grid": False,
    "eta": None,
    "override_settings": None,
    "override_settings_restore_afterwards": True,
    "refiner_checkpoint": None,
    "refiner_switch_at": None,
    "disable_extra_networks": False,
    "comments": None,
    "sampler_index": "Euler",
    "script_name": None,
    "script_args": [],
    "send_images": True,
    "save_images": False,
    "alwayson_scripts": {},
}
TXT2IMG_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "denoising_strength": None,
    "enable_hr": False,
    "firstphase_width": 0,
    "firstphase_height": 0,
    "hr_scale": 2.0,
    "hr_upscaler": None,
    "hr_second_pass_steps": 0,
    "hr_resize_x": 0,
    "hr_resize_y": 0,
    "hr_sampler_name": None,
    "hr_prompt": "",
    "hr_negative_prompt": "",
}
IMG2IMG_DEFAULTS: dict[str, Any] = {
    **_COMMON_DEFAULTS,
    "init_images": None,
    "resize_mode": 0,
    "image_cfg_scale": None,
    "mask": None,
    "mask_blur": None,
    "mask_blur_x": 4,
    "mask_blur_y": 4,
    "inpainting_fill": 0,
    "inpaint_full_res": True,
    "inpaint_full_res_padding": 0,
    "inpainting_mask_invert": 0,
    "initial_noise_multiplier": None,
    "denoising_strength": 0.75,
    "include_init_images": False,
}
EXTRAS_DEFAULTS: dict[str, Any] = {
    "resize_mode": 0,
    "show_extras_results": True,
    "gfpgan_visibility": 0.0,
    "codeformer_visibility": 0.0,
    "codeformer_weight": 0.0,
    "upscaling_resize": 2.0,
    "upscaling_resize_w": 512,
    "upscaling_resize_h": 512,
    "upscaling_crop": True,
    "upscaler_1": "None",
    "upscaler_2": "None",
    "extras_upscaler_2_visibility": 0.0,
    "upscale_first": False,
    "image": "",
}

_INT_FIELDS = frozenset(
    (
        "seed subseed seed_resize_from_h seed_resize_from_w steps width height batch_size n_iter "
        "hr_second_pass_steps hr_resize_x hr_resize_y firstphase_width firstphase_height resize_mode "
        "mask_blur mask_blur_x mask_blur_y inpainting_fill inpaint_full_res_padding inpainting_mask_invert "
        "upscaling_resize_w upscaling_resize_h"
    ).split()
)
_FLOAT_FIELDS = frozenset(
    (
        "cfg_scale denoising_strength subseed_strength hr_scale eta image_cfg_scale initial_noise_multiplier "
        "refiner_switch_at gfpgan_visibility codeformer_visibility codeformer_weight upscaling_resize "
        "extras_upscaler_2_visibility"
    ).split()
)
_STR_FIELDS = frozenset(
    (
        "prompt negative_prompt sampler_name sampler_index scheduler hr_upscaler hr_sampler_name hr_prompt "
        "hr_negative_prompt mask image upscaler_1 upscaler_2"
    ).split()
)
_BOOL_FIELDS = frozenset(
    (
        "enable_hr restore_faces tiling send_images save_images include_init_images inpaint_full_res "
        "do_not_save_samples do_not_save_grid upscaling_crop show_extras_results upscale_first"
    ).split()
)
_LIST_FIELDS = frozenset({"init_images", "styles", "script_args"})
_DICT_FIELDS = frozenset({"override_settings", "alwayson_scripts"})
# (ge, le) bounds checked like pydantic's Field(ge=..., le=...); None = unbounded on that side.
_BOUNDS: dict[str, dict[str, tuple[float | None, float | None]]] = {
    "txt2img": {
        "steps": (1, None),
        "width": (64, None),
        "height": (64, None),
        "batch_size": (1, None),
        "n_iter": (1, None),
    },
    "img2img": {
        "steps": (1, None),
        "width": (64, None),
        "height": (64, None),
        "batch_size": (1, None),
        "n_iter": (1, None),
        "denoising_strength": (0, 1),
    },
    "extras": {
        "upscaling_resize": (1, 8),
        "upscaling_resize_w": (1, None),
        "upscaling_resize_h": (1, None),
        "extras_upscaler_2_visibility": (0, 1),
    },
}
_TRUE_WORDS = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE_WORDS = frozenset({"0", "off", "f", "false", "n", "no"})


@dataclass
class A1111Generation:
    """One job that reached the GPU. ``seeds`` holds one seed per picture (empty for extras); ``width`` ×
    ``height`` is the output size; ``outcome`` is "ok", "oom", "fail" or "malformed"."""

    route: str  # "txt2img", "img2img" or "extra-single-image"
    body: dict[str, Any]
    started: float
    seeds: list[int] = field(default_factory=list)
    width: int = 0
    height: int = 0
    images: int = 0
    masked: bool = False
    finished: float = 0.0
    outcome: str = "ok"
    interrupted: bool = False

    @property
    def seed(self) -> int | None:
        return self.seeds[0] if self.seeds else None


@dataclass
class _Job:
    """The job holding the GPU, as ``/progress`` reports it."""

    started: float
    duration: float
    steps: int
    n_iter: int
    timestamp: str
    stop: threading.Event = field(default_factory=threading.Event)
    interrupted: bool = False
    skipped: bool = False

    def wait(self) -> None:
        """Block until the generation time is over or the job is interrupted."""
        self.stop.wait(max(0.0, self.started + self.duration - time.monotonic()))


class _Problem(Exception):
    """An answer other than 200, raised from deep inside a route."""

    def __init__(self, reply: Reply):
        super().__init__(reply.status)
        self.reply = reply


def error_reply(status: int, error: str, detail: str, headers: dict[str, str] | None = None) -> Reply:
    """A1111's error body: its exception handler answers every error (HTTPException or not) in this shape,
    with ``errors`` = ``str(exception)`` ("404: Not Found" for an HTTPException)."""
    errors = f"{status}: {detail}" if error == "HTTPException" else detail
    reply = Reply.json({"error": error, "detail": detail, "body": "", "errors": errors}, status=status)
    reply.headers.update(headers or {})
    return reply


def _v1_error(field_name: str | int | None, msg: str, kind: str, /, **ctx: Any) -> dict[str, Any]:
    loc: list[Any] = ["body"] if field_name is None else ["body", field_name]
    error: dict[str, Any] = {"loc": loc, "msg": msg, "type": kind}
    if ctx:
        error["ctx"] = ctx
    return error


def _coerce(name: str, value: Any) -> tuple[Any, dict[str, Any] | None]:
    """Validate one field the way pydantic v1 does (lax coercion); ``(value, None)`` or ``(None, error)``."""
    if value is None:  # A1111's request fields are all Optional
        return None, None
    if name in _INT_FIELDS:
        try:
            return int(value), None
        except (TypeError, ValueError, OverflowError):
            return None, _v1_error(name, "value is not a valid integer", "type_error.integer")
    if name in _FLOAT_FIELDS:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        if not math.isfinite(number):
            return None, _v1_error(name, "value is not a valid float", "type_error.float")
        return number, None
    if name in _STR_FIELDS:
        if isinstance(value, str):
            return value, None
        if isinstance(value, int | float):
            return str(value), None
        return None, _v1_error(name, "str type expected", "type_error.str")
    if name in _BOOL_FIELDS:
        if isinstance(value, bool):
            return value, None
        if isinstance(value, int) and value in (0, 1):
            return bool(value), None
        if isinstance(value, str) and value.strip().lower() in _TRUE_WORDS | _FALSE_WORDS:
            return value.strip().lower() in _TRUE_WORDS, None
        return None, _v1_error(name, "value could not be parsed to a boolean", "type_error.bool")
    if name in _LIST_FIELDS:
        if isinstance(value, list | tuple):
            return list(value), None
        return None, _v1_error(name, "value is not a valid list", "type_error.list")
    if name in _DICT_FIELDS:
        if isinstance(value, dict):
            return value, None
        return None, _v1_error(name, "value is not a valid dict", "type_error.dict")
    return value, None


def _json_object(request: Request) -> dict[str, Any]:
    """The JSON object of the body, or a 422 in FastAPI's shape (missing body, bad JSON, not an object)."""
    content_type = request.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if not request.body:
        raise _Problem(Reply.json({"detail": [_v1_error(None, "field required", "value_error.missing")]}, 422))
    if content_type and not content_type.endswith("json"):
        raise _Problem(Reply.json({"detail": [_v1_error(None, "value is not a valid dict", "type_error.dict")]}, 422))
    try:
        value = json.loads(request.body)
    except ValueError as exc:
        position = getattr(exc, "pos", 0)
        message = getattr(exc, "msg", str(exc))
        error = _v1_error(position, message, "value_error.jsondecode", msg=message, pos=position)
        raise _Problem(Reply.json({"detail": [error]}, 422)) from None
    if not isinstance(value, dict):
        raise _Problem(Reply.json({"detail": [_v1_error(None, "value is not a valid dict", "type_error.dict")]}, 422))
    return value


def _validate(
    body: dict[str, Any], defaults: dict[str, Any], bounds: dict[str, tuple[float | None, float | None]]
) -> dict[str, Any]:
    """The body coerced and merged over ``defaults`` (None → the default), or a 422 listing every bad field."""
    params = dict(defaults)
    errors: list[dict[str, Any]] = []
    for name, raw in body.items():
        value, error = _coerce(name, raw)
        if error is not None:
            errors.append(error)
            continue
        if value is None and name in defaults:
            continue
        low, high = bounds.get(name, (None, None))
        if value is not None and low is not None and value < low:
            errors.append(
                _v1_error(
                    name,
                    f"ensure this value is greater than or equal to {low}",
                    "value_error.number.not_ge",
                    limit_value=low,
                )
            )
        elif value is not None and high is not None and value > high:
            errors.append(
                _v1_error(
                    name,
                    f"ensure this value is less than or equal to {high}",
                    "value_error.number.not_le",
                    limit_value=high,
                )
            )
        else:
            params[name] = value
    if errors:
        raise _Problem(Reply.json({"detail": errors}, 422))
    return params


def _decode_image(encoded: Any) -> tuple[bytes, Image.Image]:
    """Raw bytes and the decoded RGB(A) picture of a base64 image (``data:`` URLs accepted), or a 500."""
    try:
        if not isinstance(encoded, str):
            raise ValueError("not a string")
        if encoded.startswith("data:image/"):
            encoded = encoded.split(",", 1)[1]
        raw = base64.b64decode(encoded)
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as opened:
                picture = opened.convert("RGBA" if "A" in opened.getbands() else "RGB")
    except (
        ValueError,
        IndexError,
        binascii.Error,
        OSError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ):
        raise _Problem(error_reply(500, "UnidentifiedImageError", "cannot identify image file")) from None
    return raw, picture


def _png(picture: Image.Image) -> bytes:
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _fit(picture: Image.Image, width: int, height: int, resize_mode: int) -> Image.Image:
    """``picture`` brought to exactly ``width`` × ``height`` by img2img's resize_mode
    (0 just resize, 1 crop and resize, 2 resize and fill, 3 latent upscale = just resize)."""
    if picture.size == (width, height):
        return picture.copy()
    if resize_mode == 1:
        return ImageOps.fit(picture, (width, height), Image.Resampling.LANCZOS)
    if resize_mode == 2:
        return ImageOps.pad(picture, (width, height), Image.Resampling.LANCZOS)
    return picture.resize((width, height), Image.Resampling.LANCZOS)


def _number(value: float | int) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _infotext(prompt: str, negative_prompt: str, fields: dict[str, Any]) -> str:
    """A1111's "parameters" text of one picture: prompt, negative prompt line, "Key: value, ..." line."""
    text = prompt
    if negative_prompt:
        text += f"\nNegative prompt: {negative_prompt}"
    line = ", ".join(
        f"{key}: {_number(value) if isinstance(value, float) else value}"
        for key, value in fields.items()
        if value is not None
    )
    return f"{text}\n{line}"


class A1111Emulator(LocalEmulator):
    """An AUTOMATIC1111 / Forge WebUI API server (``/sdapi/v1``) on a background thread; see the module docstring."""

    server_version = "uvicorn"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_base_url: str | None = None,
        task_seconds: float = 0.2,
        auth: tuple[str, str] | None = None,
    ):
        super().__init__(host=host, port=port, public_base_url=public_base_url)
        self.task_seconds = task_seconds
        self.auth = auth
        self.sd_model_checkpoint: str = SD_MODELS[0]["title"]
        self.generations: list[A1111Generation] = []
        self.gpu = threading.Lock()  # one job at a time, like one GPU
        self._state_lock = threading.Lock()
        self._job: _Job | None = None
        self._last_timestamp = "0"
        self._routes: dict[str, dict[str, Callable[[Request], Reply]]] = {
            "/sdapi/v1/txt2img": {"POST": self._txt2img},
            "/sdapi/v1/img2img": {"POST": self._img2img},
            "/sdapi/v1/extra-single-image": {"POST": self._extras},
            "/sdapi/v1/progress": {"GET": self._progress},
            "/sdapi/v1/interrupt": {"POST": self._interrupt},
            "/sdapi/v1/skip": {"POST": self._skip},
            "/sdapi/v1/sd-models": {"GET": lambda request: Reply.json(SD_MODELS)},
            "/sdapi/v1/samplers": {"GET": lambda request: Reply.json(SAMPLERS)},
            "/sdapi/v1/upscalers": {"GET": lambda request: Reply.json(UPSCALERS)},
            "/sdapi/v1/options": {"GET": self._get_options, "POST": self._set_options},
            "/internal/ping": {"GET": lambda request: Reply.json({})},
        }

    # ---- dispatch -----------------------------------------------------------------------------------

    def handle(self, request: Request) -> Reply:
        methods = self._routes.get(request.path.rstrip("/") or "/")
        if methods is None:
            return error_reply(404, "HTTPException", "Not Found")
        route = methods.get(request.method)
        if route is None:
            return error_reply(405, "HTTPException", "Method Not Allowed")
        refusal = self._check_auth(request)
        if refusal is not None:
            return refusal
        try:
            return route(request)
        except _Problem as problem:
            return problem.reply

    def _check_auth(self, request: Request) -> Reply | None:
        if self.auth is None:
            return None
        scheme, _, credentials = request.authorization.partition(" ")
        if scheme.lower() != "basic" or not credentials:
            return error_reply(401, "HTTPException", "Not authenticated", {"WWW-Authenticate": "Basic"})
        try:
            user, _, password = base64.b64decode(credentials, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, ValueError):
            return error_reply(
                401, "HTTPException", "Invalid authentication credentials", {"WWW-Authenticate": "Basic"}
            )
        expected_user, expected_password = self.auth
        user_ok = hmac.compare_digest(user.encode(), expected_user.encode())
        password_ok = hmac.compare_digest(password.encode(), expected_password.encode())
        if not (user_ok and password_ok):
            return error_reply(401, "HTTPException", "Incorrect username or password", {"WWW-Authenticate": "Basic"})
        return None

    # ---- the GPU ------------------------------------------------------------------------------------

    def _begin(self, duration: float, steps: int, n_iter: int) -> _Job:
        job = _Job(time.monotonic(), duration, steps, n_iter, datetime.now().strftime("%Y%m%d%H%M%S"))
        with self._state_lock:
            self._job = job
            self._last_timestamp = job.timestamp
        return job

    def _end(self, job: _Job, generation: A1111Generation) -> None:
        generation.finished = time.time()
        generation.interrupted = job.interrupted or job.skipped
        with self._state_lock:
            if self._job is job:
                self._job = None
        with self.lock:
            self.generations.append(generation)

    def _duration(self, prompt: str) -> tuple[dict[str, str | None], float]:
        directives = parse_directives(prompt)
        slow = slow_seconds(directives)
        return directives, slow if slow is not None else max(0.0, float(self.task_seconds))

    # ---- txt2img / img2img --------------------------------------------------------------------------

    def _txt2img(self, request: Request) -> Reply:
        body = _json_object(request)
        params = _validate(body, TXT2IMG_DEFAULTS, _BOUNDS["txt2img"])
        sampler = self._sampler(params)
        width, height = params["width"], params["height"]
        if params["enable_hr"]:
            width, height = self._hires_size(params)
        return self._generate("txt2img", body, params, sampler, width, height, sources=[], mask=None)

    def _img2img(self, request: Request) -> Reply:
        body = _json_object(request)
        params = _validate(body, IMG2IMG_DEFAULTS, _BOUNDS["img2img"])
        init_images = params["init_images"]
        if init_images is None:
            raise _Problem(
                Reply.json({"detail": [_v1_error("init_images", "field required", "value_error.missing")]}, 422)
            )
        if not init_images:
            error = _v1_error(
                "init_images", "ensure this value has at least 1 items", "value_error.list.min_items", limit_value=1
            )
            raise _Problem(Reply.json({"detail": [error]}, 422))
        sampler = self._sampler(params)
        sources = [_decode_image(encoded) for encoded in init_images]
        mask = _decode_image(params["mask"])[1] if params["mask"] else None
        return self._generate("img2img", body, params, sampler, params["width"], params["height"], sources, mask)

    @staticmethod
    def _sampler(params: dict[str, Any]) -> str:
        name = params["sampler_name"] or params["sampler_index"] or "Euler"
        if name not in SAMPLER_NAMES:
            raise _Problem(error_reply(404, "HTTPException", "Sampler not found"))
        return name

    @staticmethod
    def _hires_size(params: dict[str, Any]) -> tuple[int, int]:
        width, height = params["width"], params["height"]
        resize_x, resize_y = params["hr_resize_x"], params["hr_resize_y"]
        if resize_x > 0 and resize_y > 0:
            return resize_x, resize_y
        if resize_x > 0:
            return resize_x, max(1, round(resize_x * height / width))
        if resize_y > 0:
            return max(1, round(resize_y * width / height)), resize_y
        return max(1, int(width * params["hr_scale"])), max(1, int(height * params["hr_scale"]))

    def _model(self, params: dict[str, Any]) -> dict[str, Any]:
        override = (params["override_settings"] or {}).get("sd_model_checkpoint")
        return self._find_model(override) or self._find_model(self.sd_model_checkpoint) or SD_MODELS[0]

    @staticmethod
    def _find_model(name: Any) -> dict[str, Any] | None:
        if not isinstance(name, str) or not name:
            return None
        for model in SD_MODELS:
            if name in (model["title"], model["model_name"], model["hash"], model["filename"].rsplit("/", 1)[-1]):
                return model
        return None

    def _generate(
        self,
        route: str,
        body: dict[str, Any],
        params: dict[str, Any],
        sampler: str,
        width: int,
        height: int,
        sources: list[tuple[bytes, Image.Image]],
        mask: Image.Image | None,
    ) -> Reply:
        prompt = params["prompt"]
        batch_size, n_iter = params["batch_size"], params["n_iter"]
        count = batch_size * n_iter
        directives, duration = self._duration(prompt)
        model = self._model(params)
        with self.gpu:
            job = self._begin(duration, params["steps"], n_iter)
            generation = A1111Generation(
                route, body, started=time.time(), width=width, height=height, images=count, masked=mask is not None
            )
            try:
                if (
                    "oom" in directives
                    or width * height * batch_size > MAX_BATCH_PIXELS
                    or width * height * count > MAX_TOTAL_PIXELS
                ):
                    generation.outcome = "oom"
                    return error_reply(500, "OutOfMemoryError", OOM_MESSAGE)
                seed = params["seed"] if params["seed"] not in (None, -1) else random.randrange(4294967294)
                subseed = params["subseed"] if params["subseed"] not in (None, -1) else random.randrange(4294967294)
                generation.seeds = [seed + index for index in range(count)]
                images = [
                    self._picture(
                        prompt,
                        index_seed,
                        width,
                        height,
                        params,
                        sources[index % len(sources)] if sources else None,
                        mask,
                    )
                    for index, index_seed in enumerate(generation.seeds)
                ]
                job.wait()
                if "fail" in directives:
                    generation.outcome = "fail"
                    return error_reply(500, "RuntimeError", "Emulated failure")
                info = self._info(route, params, sampler, model, generation.seeds, subseed, job, mask is not None)
                parameters = dict(params)
                if route == "img2img" and not params["include_init_images"]:
                    parameters["init_images"] = None
                    parameters["mask"] = None
                encoded = [_b64(image) for image in images] if params["send_images"] else []
                if "malformed" in directives:
                    generation.outcome = "malformed"
                    first = encoded[0][:64] if encoded else ""
                    return Reply(200, f'{{"images": ["{first}'.encode())
                return Reply.json({"images": encoded, "parameters": parameters, "info": json.dumps(info)})
            finally:
                self._end(job, generation)

    @staticmethod
    def _picture(
        prompt: str,
        seed: int,
        width: int,
        height: int,
        params: dict[str, Any],
        source: tuple[bytes, Image.Image] | None,
        mask: Image.Image | None,
    ) -> bytes:
        png = make_png(f"seed {seed} · {prompt}", width, height, source=source[0] if source else None)
        if source is None or mask is None:
            return png
        resize_mode = params.get("resize_mode") or 0
        with Image.open(io.BytesIO(png)) as opened:
            generated = opened.convert("RGB")
        base = _fit(source[1].convert("RGB"), width, height, resize_mode)
        alpha = _fit(mask.convert("L"), width, height, resize_mode)
        if params.get("inpainting_mask_invert"):
            alpha = ImageOps.invert(alpha)
        blur = params["mask_blur"] if params.get("mask_blur") is not None else params.get("mask_blur_x", 4)
        if blur and blur > 0:
            alpha = alpha.filter(ImageFilter.GaussianBlur(blur))
        return _png(Image.composite(generated, base, alpha))

    def _info(
        self,
        route: str,
        params: dict[str, Any],
        sampler: str,
        model: dict[str, Any],
        seeds: list[int],
        subseed: int,
        job: _Job,
        masked: bool,
    ) -> dict[str, Any]:
        prompt, negative_prompt = params["prompt"], params["negative_prompt"]
        count = len(seeds)
        denoising = params["denoising_strength"]
        if route == "txt2img" and params["enable_hr"] and denoising is None:
            denoising = 0.7
        scheduler = params["scheduler"] if params["scheduler"] not in (None, "", "Automatic") else None
        infotexts = []
        for seed in seeds:
            fields: dict[str, Any] = {
                "Steps": params["steps"],
                "Sampler": sampler,
                "Schedule type": scheduler,
                "CFG scale": params["cfg_scale"],
                "Seed": seed,
                "Size": f"{params['width']}x{params['height']}",
                "Model hash": model["hash"],
                "Model": model["model_name"],
                "Denoising strength": denoising if route == "img2img" or params.get("enable_hr") else None,
                "Mask blur": (params["mask_blur"] if params["mask_blur"] is not None else params["mask_blur_x"])
                if masked
                else None,
                "Hires upscale": params["hr_scale"] if params.get("enable_hr") else None,
                "Hires upscaler": (params["hr_upscaler"] or "Latent") if params.get("enable_hr") else None,
                "Version": VERSION,
            }
            infotexts.append(_infotext(prompt, negative_prompt, fields))
        return {
            "prompt": prompt,
            "all_prompts": [prompt] * count,
            "negative_prompt": negative_prompt,
            "all_negative_prompts": [negative_prompt] * count,
            "seed": seeds[0],
            "all_seeds": seeds,
            "subseed": subseed,
            "all_subseeds": [subseed + index for index in range(count)],
            "subseed_strength": params["subseed_strength"],
            "width": params["width"],
            "height": params["height"],
            "sampler_name": sampler,
            "cfg_scale": params["cfg_scale"],
            "steps": params["steps"],
            "batch_size": params["batch_size"],
            "restore_faces": bool(params["restore_faces"]),
            "face_restoration_model": None,
            "sd_model_name": model["model_name"],
            "sd_model_hash": model["hash"],
            "sd_vae_name": None,
            "sd_vae_hash": None,
            "seed_resize_from_w": params["seed_resize_from_w"],
            "seed_resize_from_h": params["seed_resize_from_h"],
            "denoising_strength": denoising,
            "extra_generation_params": {"Schedule type": scheduler} if scheduler else {},
            "index_of_first_image": 0,
            "infotexts": infotexts,
            "styles": params["styles"] or [],
            "job_timestamp": job.timestamp,
            "clip_skip": 1,
            "is_using_inpainting_conditioning": masked,
            "version": VERSION,
        }

    # ---- extras -------------------------------------------------------------------------------------

    def _extras(self, request: Request) -> Reply:
        body = _json_object(request)
        if body.get("image") is None:
            raise _Problem(Reply.json({"detail": [_v1_error("image", "field required", "value_error.missing")]}, 422))
        params = _validate(body, EXTRAS_DEFAULTS, _BOUNDS["extras"])
        _, source = _decode_image(params["image"])
        for key in ("upscaler_1", "upscaler_2"):
            name = params[key] or "None"
            if name not in UPSCALER_NAMES:
                raise _Problem(error_reply(404, "HTTPException", f"could not find upscaler named {name}"))
        upscaler_1, upscaler_2 = params["upscaler_1"] or "None", params["upscaler_2"] or "None"
        if params["resize_mode"] == 1:
            target = (params["upscaling_resize_w"], params["upscaling_resize_h"])
            info = {"Postprocess upscale to": f"{target[0]}x{target[1]}"}
        else:
            scale = params["upscaling_resize"]
            # A1111's upscalers round the destination size down to a multiple of 8.
            target = (max(8, int(source.width * scale // 8 * 8)), max(8, int(source.height * scale // 8 * 8)))
            info = {"Postprocess upscale by": _number(scale)}
        info["Postprocess upscaler"] = upscaler_1
        visibility = params["extras_upscaler_2_visibility"]
        if upscaler_2 != "None" and visibility > 0:
            info["Postprocess upscaler 2"] = upscaler_2
            info["Postprocess upscaler 2 visibility"] = _number(visibility)
        if target[0] * target[1] > MAX_BATCH_PIXELS:
            raise _Problem(error_reply(500, "OutOfMemoryError", OOM_MESSAGE))
        _, duration = self._duration("")
        with self.gpu:
            job = self._begin(duration, 0, 1)
            generation = A1111Generation("extra-single-image", body, started=time.time(), images=1)
            try:
                result = self._upscale(source, upscaler_1, target, params)
                if upscaler_2 != "None" and visibility > 0:
                    second = self._upscale(source, upscaler_2, target, params)
                    result = Image.blend(result, second.convert(result.mode), visibility)
                generation.width, generation.height = result.size
                encoded = _b64(_png(result))
                job.wait()
            finally:
                self._end(job, generation)
        text = ", ".join(f"{key}: {value}" for key, value in info.items())
        return Reply.json({"html_info": f"<p>{html.escape(text)}</p>", "image": encoded})

    @staticmethod
    def _upscale(source: Image.Image, upscaler: str, target: tuple[int, int], params: dict[str, Any]) -> Image.Image:
        resample = Image.Resampling.NEAREST if upscaler == "Nearest" else Image.Resampling.LANCZOS
        width, height = target
        if params["resize_mode"] == 1 and params["upscaling_crop"]:
            return ImageOps.fit(source, (width, height), resample)
        if params["resize_mode"] == 1:
            scale = max(width / source.width, height / source.height)
            return source.resize((max(1, round(source.width * scale)), max(1, round(source.height * scale))), resample)
        return source.resize((width, height), resample)

    # ---- progress, interrupt, options ---------------------------------------------------------------

    def _progress(self, request: Request) -> Reply:
        with self._state_lock:
            job, last_timestamp = self._job, self._last_timestamp
        if job is None:
            state = {
                "skipped": False,
                "interrupted": False,
                "stopping_generation": False,
                "job": "",
                "job_count": 0,
                "job_timestamp": last_timestamp,
                "job_no": 0,
                "sampling_step": 0,
                "sampling_steps": 0,
            }
            return Reply.json(
                {"progress": 0, "eta_relative": 0, "state": state, "current_image": None, "textinfo": None}
            )
        elapsed = time.monotonic() - job.started
        done = min(0.99, elapsed / job.duration) if job.duration > 0 else 0.99
        job_no = min(job.n_iter - 1, int(done * job.n_iter))
        step = min(job.steps, int((done * job.n_iter - job_no) * job.steps))
        state = {
            "skipped": job.skipped,
            "interrupted": job.interrupted,
            "stopping_generation": False,
            "job": f"Batch {job_no + 1} out of {job.n_iter}" if job.n_iter > 1 else "",
            "job_count": job.n_iter,
            "job_timestamp": job.timestamp,
            "job_no": job_no,
            "sampling_step": step,
            "sampling_steps": job.steps,
        }
        eta = max(0.0, job.duration - elapsed)
        return Reply.json(
            {
                "progress": round(done, 4),
                "eta_relative": round(eta, 3),
                "state": state,
                "current_image": None,
                "textinfo": None,
            }
        )

    def _interrupt(self, request: Request) -> Reply:
        with self._state_lock:
            if self._job is not None:
                self._job.interrupted = True
                self._job.stop.set()
        return Reply.json({})

    def _skip(self, request: Request) -> Reply:
        with self._state_lock:
            if self._job is not None:
                self._job.skipped = True
                self._job.stop.set()
        return Reply.json({})

    def _get_options(self, request: Request) -> Reply:
        model = self._find_model(self.sd_model_checkpoint) or SD_MODELS[0]
        return Reply.json(
            {
                "sd_model_checkpoint": model["title"],
                "sd_checkpoint_hash": model["sha256"],
                "sd_vae": "Automatic",
                "CLIP_stop_at_last_layers": 1,
                "samples_format": "png",
                "samples_save": True,
            }
        )

    def _set_options(self, request: Request) -> Reply:
        body = _json_object(request)
        checkpoint = body.get("sd_model_checkpoint")
        if checkpoint is not None:
            model = self._find_model(checkpoint)
            if model is None:
                raise _Problem(error_reply(500, "RuntimeError", f"model {checkpoint!r} not found"))
            with self.gpu:  # switching checkpoints waits for the running job, as in the WebUI
                self.sd_model_checkpoint = model["title"]
        return Reply.json(None)
