"""Kandinsky 2.2 service emulator: our own FastAPI service around diffusers' Kandinsky 2.2 pipelines.

The wire protocol is the one of ``/work/shared/protocols.md`` section 4 (``seeds/kandinsky-service.md``),
made precise here. Standard library and Pillow only, no Django.

Contract:

* ``POST /generate`` JSON ``{prompt (1..2000 chars), negative_prompt="", width=768, height=768 (64..2048),
  num_inference_steps=50 (1..200), guidance_scale=4.0 (0..30), prior_guidance_scale=1.0 (0..30),
  seed=null (0..2**32-1; null → random), image=null (base64 PNG/JPEG/WEBP, ``data:`` URLs accepted → img2img),
  strength=0.65 (0..1)}``; unknown fields are ignored. Answers 200 ``image/png`` with ``X-Seed: <seed used>``
  and ``X-Image-Size: WxH``. The picture is ``make_png`` of ``"seed <n> · <prompt>"`` (the source pasted
  in for img2img), so equal requests give identical bytes. Size: txt2img exactly ``width`` × ``height``;
  img2img exactly the source image's size (``width``/``height`` are ignored).
* A generation blocks for ``task_seconds`` (read at request time; ``[[slow:S]]`` overrides it) and
  generations run one at a time (``gpu``, a lock); other routes keep answering meanwhile.
* Errors, checked in this order: 401 ``{"detail": "Invalid or missing API key"}`` (with ``api_key`` set, every
  route except ``GET /health`` and ``GET /`` needs ``Authorization: Bearer <key>``); 422
  ``{"detail": [{"type", "loc": ["body", field], "msg", "input", ("ctx")}]}`` (pydantic v2, every bad field);
  503 ``{"detail": "Models are not loaded: <unloaded_reason>"}`` while ``models_loaded`` is False; 400
  ``{"detail": "image: <why>"}`` for an image that is not base64, not decodable, not PNG/JPEG/WEBP or over
  4096×4096; 500 from directives. Unknown paths 404 ``{"detail": "Not Found"}``, wrong methods 405.
* ``GET /health`` → ``{"status": "healthy"|"unhealthy", "device", "models_loaded", "busy"}`` (``busy`` while a
  generation holds the GPU); ``POST /reload`` → ``{"status": "success", "message": "Models loaded"}`` (waits for
  the running generation, then sets ``models_loaded``); ``GET /`` → service info and endpoints.
* Failure modes are driven by directives in ``prompt``, see ``DIRECTIVES``.

Recorded for tests: ``requests`` (see ``LocalEmulator``) and ``generations`` (one ``KandinskyGeneration`` per
request that reached the GPU: body, seed, output size, start/end time, outcome).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import io
import json
import math
import random
import threading
import time
import warnings
from dataclasses import dataclass
from typing import Any

from PIL import Image

from .kie import make_png, parse_directives
from .server import LocalEmulator, Reply, Request, slow_seconds

DIRECTIVES = {
    "oom": "500 'Out of memory: CUDA out of memory. Tried to allocate 1.50 GiB' as soon as the GPU is free",
    "fail": "500 'Generation failed: RuntimeError: Emulated failure' after the generation time",
    "malformed": "200 with Content-Type image/png but an HTML body, after the generation time",
    "slow:S": "the generation takes S seconds (float) instead of task_seconds",
}

OOM_DETAIL = "Out of memory: CUDA out of memory. Tried to allocate 1.50 GiB"
FAIL_DETAIL = "Generation failed: RuntimeError: Emulated failure"
UNAUTHORIZED_DETAIL = "Invalid or missing API key"
MAX_PROMPT_LENGTH = 2000
MAX_SOURCE_SIDE = 4096
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
MAX_SEED = 2**32 - 1
_MALFORMED_BODY = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n<center><h1>502 Bad Gateway</h1></center>\r\n"
    b"<hr><center>nginx</center>\r\n</body>\r\n</html>\r\n"
)
_OPEN_PATHS = frozenset({"/", "/health"})  # no API key needed (GET only)

# field → (kind, default, ge, le); "str" bounds are lengths. Nullable fields accept JSON null.
_FIELDS: dict[str, tuple[str, Any, float | None, float | None]] = {
    "prompt": ("str", None, 1, MAX_PROMPT_LENGTH),
    "negative_prompt": ("str", "", None, None),
    "width": ("int", 768, 64, 2048),
    "height": ("int", 768, 64, 2048),
    "num_inference_steps": ("int", 50, 1, 200),
    "guidance_scale": ("float", 4.0, 0, 30),
    "prior_guidance_scale": ("float", 1.0, 0, 30),
    "seed": ("int?", None, 0, MAX_SEED),
    "image": ("str?", None, None, None),
    "strength": ("float", 0.65, 0, 1),
}


@dataclass
class KandinskyGeneration:
    """One request that reached the GPU; ``width`` × ``height`` is the output size, ``outcome`` "ok", "oom",
    "fail" or "malformed"."""

    body: dict[str, Any]
    seed: int
    width: int
    height: int
    mode: str  # "txt2img" or "img2img"
    started: float
    finished: float = 0.0
    outcome: str = "ok"


class _Problem(Exception):
    def __init__(self, reply: Reply):
        super().__init__(reply.status)
        self.reply = reply


def _detail(status: int, detail: Any, **headers: str) -> Reply:
    return Reply.json({"detail": detail}, status=status, **headers)


def _v2_error(kind: str, loc: list[Any], msg: str, value: Any, **ctx: Any) -> dict[str, Any]:
    error: dict[str, Any] = {"type": kind, "loc": loc, "msg": msg, "input": value}
    if ctx:
        error["ctx"] = ctx
    return error


def _check_int(name: str, value: Any) -> tuple[int | None, dict[str, Any] | None]:
    loc = ["body", name]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None, _v2_error("int_type", loc, "Input should be a valid integer", value)
    if isinstance(value, str):
        try:
            return int(value.strip()), None
        except ValueError:
            message = "Input should be a valid integer, unable to parse string as an integer"
            return None, _v2_error("int_parsing", loc, message, value)
    if isinstance(value, float):
        if not value.is_integer():
            message = "Input should be a valid integer, got a number with a fractional part"
            return None, _v2_error("int_from_float", loc, message, value)
        return int(value), None
    return value, None


def _check_float(name: str, value: Any) -> tuple[float | None, dict[str, Any] | None]:
    loc = ["body", name]
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None, _v2_error("float_type", loc, "Input should be a valid number", value)
    try:
        number = float(value)
    except (ValueError, OverflowError):
        return None, _v2_error(
            "float_parsing", loc, "Input should be a valid number, unable to parse string as a number", value
        )
    if not math.isfinite(number):
        return None, _v2_error("finite_number", loc, "Input should be a finite number", value)
    return number, None


def _check_field(name: str, value: Any) -> tuple[Any, dict[str, Any] | None]:
    """One field validated like the service's pydantic v2 model: ``(value, None)`` or ``(None, error)``."""
    kind, _, low, high = _FIELDS[name]
    loc = ["body", name]
    if value is None and kind.endswith("?"):
        return None, None
    kind = kind.rstrip("?")
    if kind == "str":
        if not isinstance(value, str):
            return None, _v2_error("string_type", loc, "Input should be a valid string", value)
        if low is not None and len(value) < low:
            message = f"String should have at least {int(low)} character{'s' if low != 1 else ''}"
            return None, _v2_error("string_too_short", loc, message, value, min_length=int(low))
        if high is not None and len(value) > high:
            message = f"String should have at most {int(high)} characters"
            return None, _v2_error("string_too_long", loc, message, value, max_length=int(high))
        return value, None
    number, error = _check_int(name, value) if kind == "int" else _check_float(name, value)
    if error is not None:
        return None, error
    if low is not None and number < low:
        limit = int(low) if kind == "int" else low
        message = f"Input should be greater than or equal to {limit}"
        return None, _v2_error("greater_than_equal", loc, message, value, ge=limit)
    if high is not None and number > high:
        limit = int(high) if kind == "int" else high
        message = f"Input should be less than or equal to {limit}"
        return None, _v2_error("less_than_equal", loc, message, value, le=limit)
    return number, None


def _parse_generate(request: Request) -> tuple[dict[str, Any], dict[str, Any]]:
    """``(body, parameters with defaults)`` of a /generate request, or a 422 listing every bad field."""
    if not request.body:
        raise _Problem(_detail(422, [_v2_error("missing", ["body"], "Field required", None)]))
    try:
        body = json.loads(request.body)
    except ValueError as exc:
        position = getattr(exc, "pos", 0)
        error = _v2_error(
            "json_invalid", ["body", position], "JSON decode error", {}, error=getattr(exc, "msg", str(exc))
        )
        raise _Problem(_detail(422, [error])) from None
    if not isinstance(body, dict):
        message = "Input should be a valid dictionary or object to extract fields from"
        raise _Problem(_detail(422, [_v2_error("model_attributes_type", ["body"], message, body)]))
    params: dict[str, Any] = {}
    errors: list[dict[str, Any]] = []
    for name, (_, default, _, _) in _FIELDS.items():
        if name not in body:
            if name == "prompt":
                errors.append(_v2_error("missing", ["body", name], "Field required", body))
            params[name] = default
            continue
        value, error = _check_field(name, body[name])
        if error is not None:
            errors.append(error)
        params[name] = value
    if errors:
        raise _Problem(_detail(422, errors))
    return body, params


def _decode_source(encoded: str) -> tuple[bytes, tuple[int, int]]:
    """Raw bytes and size of the img2img source, or a 400 ``image: <why>``."""
    text = encoded.strip()
    if text.startswith("data:"):
        header, _, text = text.partition(",")
        if ";base64" not in header:
            raise _Problem(_detail(400, "image: a data URL must be base64-encoded"))
    text = "".join(text.split())
    if not text:
        raise _Problem(_detail(400, "image: empty"))
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise _Problem(_detail(400, "image: not valid base64")) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(raw)) as opened:
                image_format, size = opened.format, opened.size
                if image_format not in SOURCE_FORMATS:
                    raise _Problem(
                        _detail(400, f"image: unsupported format {image_format} (PNG, JPEG or WEBP expected)")
                    )
                if size[0] > MAX_SOURCE_SIDE or size[1] > MAX_SOURCE_SIDE:
                    limit = f"{MAX_SOURCE_SIDE}x{MAX_SOURCE_SIDE}"
                    raise _Problem(_detail(400, f"image: {size[0]}x{size[1]} is larger than {limit}"))
                opened.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise _Problem(_detail(400, "image: cannot be decoded as a picture")) from None
    return raw, size


class KandinskyEmulator(LocalEmulator):
    """The Kandinsky 2.2 service on a background thread; see the module docstring."""

    server_version = "uvicorn"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        public_base_url: str | None = None,
        task_seconds: float = 0.2,
        api_key: str | None = None,
        models_loaded: bool = True,
        device: str = "cuda",
    ):
        super().__init__(host=host, port=port, public_base_url=public_base_url)
        self.task_seconds = task_seconds
        self.api_key = api_key
        self.models_loaded = models_loaded
        self.device = device
        self.unloaded_reason = "the emulator was started with models_loaded=False"
        self.generations: list[KandinskyGeneration] = []
        self.gpu = threading.Lock()  # one generation at a time, like one GPU
        self._routes = {
            "/": {"GET": self._info},
            "/health": {"GET": self._health},
            "/generate": {"POST": self._generate},
            "/reload": {"POST": self._reload},
        }

    @property
    def busy(self) -> bool:
        return self.gpu.locked()

    def handle(self, request: Request) -> Reply:
        methods = self._routes.get(request.path)
        if methods is None:
            return _detail(404, "Not Found")
        route = methods.get(request.method)
        if route is None:
            return _detail(405, "Method Not Allowed", Allow=", ".join(methods))
        if self.api_key is not None and request.path not in _OPEN_PATHS:
            scheme, _, token = request.authorization.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                reply = _detail(401, UNAUTHORIZED_DETAIL)
                reply.headers["WWW-Authenticate"] = "Bearer"
                return reply
        try:
            return route(request)
        except _Problem as problem:
            return problem.reply

    def _info(self, request: Request) -> Reply:
        return Reply.json(
            {
                "service": "Kandinsky 2.2",
                "version": "emulator",
                "device": self.device,
                "endpoints": {
                    "generate": "POST /generate",
                    "health": "GET /health",
                    "reload": "POST /reload",
                    "info": "GET /",
                },
            }
        )

    def _health(self, request: Request) -> Reply:
        return Reply.json(
            {
                "status": "healthy" if self.models_loaded else "unhealthy",
                "device": self.device,
                "models_loaded": self.models_loaded,
                "busy": self.busy,
            }
        )

    def _reload(self, request: Request) -> Reply:
        with self.gpu:
            self.models_loaded = True
        return Reply.json({"status": "success", "message": "Models loaded"})

    def _generate(self, request: Request) -> Reply:
        body, params = _parse_generate(request)
        if not self.models_loaded:
            return _detail(503, f"Models are not loaded: {self.unloaded_reason}")
        source: bytes | None = None
        width, height = params["width"], params["height"]
        if params["image"] is not None:
            source, (width, height) = _decode_source(params["image"])
        prompt = params["prompt"]
        directives = parse_directives(prompt)
        slow = slow_seconds(directives)
        duration = slow if slow is not None else max(0.0, float(self.task_seconds))
        with self.gpu:
            started = time.monotonic()
            seed = params["seed"] if params["seed"] is not None else random.randint(0, MAX_SEED)
            generation = KandinskyGeneration(
                body, seed, width, height, "img2img" if source is not None else "txt2img", started=time.time()
            )
            try:
                if "oom" in directives:
                    generation.outcome = "oom"
                    return _detail(500, OOM_DETAIL)
                png = make_png(f"seed {seed} · {prompt}", width, height, source=source)
                time.sleep(max(0.0, started + duration - time.monotonic()))
                if "fail" in directives:
                    generation.outcome = "fail"
                    return _detail(500, FAIL_DETAIL)
                headers = {"X-Seed": str(seed), "X-Image-Size": f"{width}x{height}"}
                if "malformed" in directives:
                    generation.outcome = "malformed"
                    return Reply(200, _MALFORMED_BODY, "image/png", headers)
                return Reply(200, png, "image/png", headers)
            finally:
                generation.finished = time.time()
                with self.lock:
                    self.generations.append(generation)
