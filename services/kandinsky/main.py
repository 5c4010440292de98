"""Kandinsky 2.2 service: a small HTTP API over the diffusers prior + decoder pipelines.

Run with ``uvicorn main:app --port 8002`` from this folder. One process drives one GPU: generations run in a
worker thread (so /health keeps answering) and one at a time (an asyncio lock), and a reload waits its turn
behind them. The model code lives in ``engine.py``; this module is the HTTP side: the request schema, auth,
errors, and the order in which things may use the GPU. It also holds what an engine and this side share (the
settings, ``Result``, the errors, ``EngineLike``), so that it imports without torch: ``engine.py`` (and with it
torch and diffusers) is imported only when the app starts without an engine of its own. Genbox's sandbox
passes ``fake_engine.FakeEngine`` instead, which draws its pictures with Pillow.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import io
import logging
import os
import threading
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

VERSION = "1.0.0"
DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-2-prior"
DEFAULT_DECODER = "kandinsky-community/kandinsky-2-2-decoder"
DEVICES = ("auto", "cuda", "cpu")
MAX_SEED = 2**32 - 1
MAX_SOURCE_SIDE = 4096
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
# Reachable without the API key: what a load balancer or the Genbox health check polls.
PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/")}

if not __package__:  # run as the service; loaded into another program (Genbox's sandbox), it leaves its logging be
    logging.basicConfig(
        level=os.environ.get("KANDINSKY_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
logger = logging.getLogger("kandinsky")


def _env_bool(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{name}={raw!r} is not a boolean (use true or false)")


@dataclass(frozen=True)
class Settings:
    """Everything the service reads from the environment, read once when the app is created."""

    prior: str = DEFAULT_PRIOR
    decoder: str = DEFAULT_DECODER
    device: str = "auto"
    api_key: str = ""
    load_on_startup: bool = True

    @classmethod
    def from_env(cls) -> Settings:
        """Raise ``ValueError`` on a malformed value, so a typo stops the service at start-up rather than
        surfacing later as a confusing load failure."""
        device = os.environ.get("KANDINSKY_DEVICE", "auto").strip().lower() or "auto"
        if device not in DEVICES:
            raise ValueError(f"KANDINSKY_DEVICE={device!r} is not one of {', '.join(DEVICES)}")
        return cls(
            prior=os.environ.get("KANDINSKY_PRIOR", "").strip() or DEFAULT_PRIOR,
            decoder=os.environ.get("KANDINSKY_DECODER", "").strip() or DEFAULT_DECODER,
            device=device,
            api_key=os.environ.get("KANDINSKY_API_KEY", "").strip(),
            load_on_startup=_env_bool("KANDINSKY_LOAD_ON_STARTUP", True),
        )


class LoadError(Exception):
    """The models could not be loaded; the message is shown in ``/generate``'s 503 and ``/reload``'s 500."""


class ModelsNotLoaded(Exception):
    """A generation was asked for while no models are loaded; the message says why."""


@dataclass
class Result:
    png: bytes
    seed: int
    width: int
    height: int


class LoadState:
    """Where an engine's models are: ``idle`` (never loaded), ``loading``, ``ready`` or ``failed`` (``error``
    says why). Shared by the real engine and the sandbox's fake one, which must report loading alike."""

    def __init__(self) -> None:
        self.state = "idle"
        self.error = ""
        # Guards the state fields only, so /health can read them while a load runs in another thread.
        self._state_lock = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.state == "ready"

    def not_loaded_reason(self) -> str:
        with self._state_lock:
            if self.state == "loading":
                return "loading is in progress"
            if self.state == "failed":
                return self.error
            if self.state == "idle":
                return "they have not been loaded yet"
            return ""

    def mark_loading(self) -> None:
        """Set before a background load is scheduled, so that /health and /generate report it at once."""
        with self._state_lock:
            self.state = "loading"


class EngineLike(Protocol):
    """What the HTTP side uses of an engine: ``engine.Engine``, or ``fake_engine.FakeEngine`` in Genbox's sandbox.

    ``load``, ``generate`` and ``free_memory`` block; they are called from a worker thread, one at a time (the
    app's lock), while ``state``, ``loaded`` and ``not_loaded_reason`` may be read from the event loop meanwhile.
    """

    device: str
    state: str  # "idle" (never loaded), "loading", "ready" or "failed"
    # What ``generate`` raises when the device runs out of memory; answered as such, then ``free_memory`` runs.
    out_of_memory_error: type[BaseException]

    @property
    def loaded(self) -> bool: ...

    def not_loaded_reason(self) -> str: ...

    def mark_loading(self) -> None:
        """Report ``loading`` at once, before a background load is scheduled."""

    def load(self) -> None:
        """(Re)load the models; raise ``LoadError`` and stay ``failed`` when that fails."""

    def generate(
        self,
        *,
        prompt: str,
        negative_prompt: str,
        width: int,
        height: int,
        num_inference_steps: int,
        guidance_scale: float,
        prior_guidance_scale: float,
        seed: int | None,
        source: Image.Image | None,
        strength: float,
    ) -> Result:
        """Text to image (exactly ``width``×``height``), or image to image from ``source`` (exactly its size).
        Raise ``ModelsNotLoaded`` without models."""

    def free_memory(self) -> None:
        """Give memory left behind by an out-of-memory error back to the device."""


class GenerateRequest(BaseModel):
    """The body of ``POST /generate``. Unknown fields are ignored, so callers may send a superset."""

    model_config = ConfigDict(allow_inf_nan=False)

    prompt: str = Field(min_length=1, max_length=2000)
    negative_prompt: str = ""
    width: int = Field(default=768, ge=64, le=2048)
    height: int = Field(default=768, ge=64, le=2048)
    num_inference_steps: int = Field(default=50, ge=1, le=200)
    guidance_scale: float = Field(default=4.0, ge=0, le=30)
    prior_guidance_scale: float = Field(default=1.0, ge=0, le=30)
    seed: int | None = Field(default=None, ge=0, le=MAX_SEED, description="null: the service picks one")
    image: str | None = Field(default=None, description="base64 PNG, JPEG or WEBP: image to image")
    strength: float = Field(default=0.65, ge=0, le=1, description="img2img: how much of the source is redrawn")

    @field_validator("prompt")
    @classmethod
    def _prompt_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("prompt must not be blank")
        return value


class ImageError(ValueError):
    """The ``image`` field cannot be used; answered as 400 ``image: <why>``."""


def decode_source_image(data: str) -> Image.Image:
    """Decode the img2img source. Its size is checked from the header before the pixels are decoded, so an
    oversized (or decompression-bomb) picture costs nothing. A ``data:image/...;base64,`` prefix is accepted
    since browsers and many clients produce one."""
    if data.startswith("data:") and "," in data:
        data = data.split(",", 1)[1]
    try:
        raw = base64.b64decode("".join(data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ImageError(f"not valid base64 ({exc})") from exc
    if not raw:
        raise ImageError("empty")
    try:
        image = Image.open(io.BytesIO(raw))
    except UnidentifiedImageError as exc:
        raise ImageError("not a PNG, JPEG or WEBP image (the data is not a picture Pillow recognises)") from exc
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot be decoded: {exc}") from exc
    if image.format not in SOURCE_FORMATS:
        raise ImageError(f"{image.format} is not supported; send PNG, JPEG or WEBP")
    width, height = image.size
    if width > MAX_SOURCE_SIDE or height > MAX_SOURCE_SIDE:
        raise ImageError(f"{width}x{height} is larger than {MAX_SOURCE_SIDE}x{MAX_SOURCE_SIDE}")
    try:
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"cannot be decoded: {exc}") from exc
    return image


@dataclass
class Runtime:
    """Per-app state. ``gpu`` is held by whatever uses the models (a generation, a load, a reload), so they
    run strictly one after another; ``busy`` is true while a generation holds it."""

    engine: EngineLike
    gpu: asyncio.Lock = field(default_factory=asyncio.Lock)
    busy: bool = False
    load_task: asyncio.Task | None = None

    async def load(self) -> None:
        """Load (or reload) the models once the running generation, if any, is done. Raises ``LoadError``."""
        async with self.gpu:
            await run_in_threadpool(self.engine.load)

    async def load_in_background(self) -> None:
        try:
            await self.load()
        except LoadError:
            pass  # kept in engine.error, logged by the engine, shown by /generate's 503


def _error(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def _real_engine(settings: Settings) -> EngineLike:
    """``engine.Engine``, imported only now (at start-up): an app given another engine never imports torch.
    Not at import time either, because ``engine.py`` imports this module: whichever of the two is imported
    first, the other is complete by the time an app starts."""
    if __package__:  # loaded as part of a package (see fake_engine.py)
        from .engine import Engine
    else:
        from engine import Engine
    return Engine(settings)


def create_app(settings: Settings | None = None, engine: EngineLike | None = None) -> FastAPI:
    """Build the app. Settings are read from the environment here (not at import), so tests can build apps
    with different settings in one process. ``engine``: the engine to serve, unloaded (the app loads it at
    start-up as ``settings`` say); by default ``engine.Engine(settings)``, created when the app starts."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = Runtime(engine=engine if engine is not None else _real_engine(settings))
        app.state.runtime = runtime
        logger.info(
            "Kandinsky 2.2 service %s on %s; API key %s",
            VERSION,
            runtime.engine.device,
            "required" if settings.api_key else "not required",
        )
        if settings.load_on_startup:
            # In the background so that /health answers at once (models_loaded: false) during a long load.
            runtime.engine.mark_loading()
            runtime.load_task = asyncio.create_task(runtime.load_in_background())
        yield
        if runtime.load_task is not None and not runtime.load_task.done():
            await runtime.load_task  # a load thread cannot be interrupted; let it finish before exiting

    app = FastAPI(
        title="Kandinsky 2.2 service",
        version=VERSION,
        description="Text to image and image to image with Kandinsky 2.2 (diffusers).",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def require_api_key(request: Request, call_next):
        """Bearer auth on every route but the public ones, when ``KANDINSKY_API_KEY`` is set. A middleware
        rather than a dependency, so that /docs, /openapi.json and unknown paths are covered too."""
        if settings.api_key and (request.method, request.url.path) not in PUBLIC_ROUTES:
            scheme, _, token = request.headers.get("authorization", "").partition(" ")
            valid = scheme.lower() == "bearer" and hmac.compare_digest(
                token.strip().encode("utf-8"), settings.api_key.encode("utf-8")
            )
            if not valid:
                return _error(401, "Invalid or missing API key", {"WWW-Authenticate": "Bearer"})
        return await call_next(request)

    @app.get("/")
    async def info(request: Request) -> dict:
        return {
            "service": "Kandinsky 2.2",
            "version": VERSION,
            "device": request.app.state.runtime.engine.device,
            "endpoints": {
                "POST /generate": "text to image, or image to image with a base64 `image`; answers image/png",
                "GET /health": "status, device, whether the models are loaded and a generation is running",
                "POST /reload": "load the models again (waits for a running generation)",
                "GET /": "this description",
            },
        }

    @app.get("/health")
    async def health(request: Request) -> dict:
        runtime: Runtime = request.app.state.runtime
        loaded = runtime.engine.loaded
        return {
            "status": "healthy" if loaded else "unhealthy",
            "device": runtime.engine.device,
            "models_loaded": loaded,
            "busy": runtime.busy,
        }

    @app.post("/reload")
    async def reload(request: Request) -> JSONResponse:
        runtime: Runtime = request.app.state.runtime
        try:
            await runtime.load()
        except LoadError as exc:
            return JSONResponse({"status": "error", "message": str(exc)}, status_code=500)
        return JSONResponse({"status": "success", "message": "Models loaded"})

    @app.post(
        "/generate",
        response_class=Response,
        responses={200: {"content": {"image/png": {}}, "description": "The picture, with X-Seed and X-Image-Size"}},
    )
    async def generate(body: GenerateRequest, request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        engine = runtime.engine
        source = None
        if body.image is not None:
            try:
                source = await run_in_threadpool(decode_source_image, body.image)
            except ImageError as exc:
                return _error(400, f"image: {exc}")
        # Refuse at once while loading or after a failed load, rather than queueing behind the load.
        if engine.state in ("loading", "failed"):
            return _error(503, f"Models are not loaded: {engine.not_loaded_reason()}")
        params = body.model_dump(exclude={"image"})
        out_of_memory = ""
        async with runtime.gpu:
            if engine.state == "idle":  # KANDINSKY_LOAD_ON_STARTUP=false: the first generation loads them
                try:
                    await run_in_threadpool(engine.load)
                except LoadError:
                    pass  # engine.generate answers ModelsNotLoaded with the reason
            runtime.busy = True
            try:
                result = await run_in_threadpool(engine.generate, **params, source=source)
            except ModelsNotLoaded as exc:
                return _error(503, f"Models are not loaded: {exc}")
            except engine.out_of_memory_error as exc:
                out_of_memory = str(exc)  # freed below, once the exception's frames (and tensors) are gone
            except Exception as exc:
                logger.exception("Generation failed")
                return _error(500, f"Generation failed: {type(exc).__name__}: {exc}")
            finally:
                runtime.busy = False
            if out_of_memory:
                logger.error("Out of memory: %s", out_of_memory)
                await run_in_threadpool(engine.free_memory)
                return _error(500, f"Out of memory: {out_of_memory}")
        return Response(
            content=result.png,
            media_type="image/png",
            headers={"X-Seed": str(result.seed), "X-Image-Size": f"{result.width}x{result.height}"},
        )

    return app


if not __package__:  # ``uvicorn main:app``; a program loading this module (Genbox's sandbox) builds its own apps
    app = create_app()
