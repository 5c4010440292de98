"""Kandinsky 2.2 service: a small HTTP API over the diffusers prior + decoder pipelines.

Run with ``uvicorn main:app --port 8002`` from this folder. One process drives one GPU: generations run in a
worker thread (so /health keeps answering) and one at a time (an asyncio lock), and a reload waits its turn
behind them. The model code lives in ``engine.py``; this module is the HTTP side: the request schema, auth,
errors, and the order in which things may use the GPU.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import gc
import hmac
import io
import logging
import os
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image, UnidentifiedImageError
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from engine import MAX_SEED, Engine, LoadError, ModelsNotLoaded, Settings

VERSION = "1.0.0"
MAX_SOURCE_SIDE = 4096
SOURCE_FORMATS = ("PNG", "JPEG", "WEBP")
# Reachable without the API key: what a load balancer or the Genbox health check polls.
PUBLIC_ROUTES = {("GET", "/health"), ("GET", "/")}

logging.basicConfig(
    level=os.environ.get("KANDINSKY_LOG_LEVEL", "INFO").upper(),
    format="%(asctime)s %(levelname)s %(name)s: %(message)s",
)
logger = logging.getLogger("kandinsky")


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

    engine: Engine
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


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Settings are read from the environment here (not at import), so tests can build apps
    with different settings in one process."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        runtime = Runtime(engine=Engine(settings))
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
            except torch.OutOfMemoryError as exc:
                out_of_memory = str(exc)  # freed below, once the exception's frames (and tensors) are gone
            except Exception as exc:
                logger.exception("Generation failed")
                return _error(500, f"Generation failed: {type(exc).__name__}: {exc}")
            finally:
                runtime.busy = False
            if out_of_memory:
                logger.error("Out of memory: %s", out_of_memory)
                await run_in_threadpool(_free_gpu_memory)
                return _error(500, f"Out of memory: {out_of_memory}")
        return Response(
            content=result.png,
            media_type="image/png",
            headers={"X-Seed": str(result.seed), "X-Image-Size": f"{result.width}x{result.height}"},
        )

    return app


def _free_gpu_memory() -> None:
    """After an out-of-memory error the allocator keeps the blocks it grabbed; hand them back so the next,
    smaller request can succeed."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


app = create_app()
