"""The Kandinsky 2.2 models: loading, and one generation at a time.

Nothing here knows about HTTP. ``Engine`` is blocking on purpose: ``main.py`` calls it from a worker thread,
holding the lock that makes sure only one generation (or load) uses the GPU at a time, so the methods here do
not lock anything themselves. What it shares with ``main.py`` (the settings, ``Result``, the errors) lives
there, so that ``main.py`` imports without torch; ``main.py`` imports this module only when an app starts
without an engine of its own.
"""

from __future__ import annotations

import gc
import io
import logging
import math
import os
import secrets
import time
from dataclasses import dataclass

import diffusers
import torch
import transformers
from diffusers import KandinskyV22Img2ImgPipeline, KandinskyV22Pipeline, KandinskyV22PriorPipeline
from PIL import Image

if __package__:  # loaded as part of a package (see fake_engine.py)
    from .main import MAX_SEED, LoadError, LoadState, ModelsNotLoaded, Result, Settings
else:
    from main import MAX_SEED, LoadError, LoadState, ModelsNotLoaded, Result, Settings

logger = logging.getLogger("kandinsky.engine")
# Per-component loading bars are noise in a service log; our own log line says how long loading took.
# (Hub download bars are huggingface_hub's, left alone: a first download of the real weights is long.)
diffusers.utils.logging.disable_progress_bar()
transformers.utils.logging.disable_progress_bar()


def resolve_device(requested: str) -> str:
    """``auto`` means CUDA when torch can see a GPU. An explicit ``cuda`` is kept even without one, so that
    the load fails with a message saying so instead of silently running (very slowly) on the CPU."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


@dataclass
class Pipelines:
    prior: KandinskyV22PriorPipeline
    decoder: KandinskyV22Pipeline
    img2img: KandinskyV22Img2ImgPipeline

    @property
    def size_multiple(self) -> int:
        """The decoder works on sizes that are multiples of this (64 for the real MoVQ: its 8× scale factor,
        squared, because the pipeline also rounds the latent size to a multiple of that factor)."""
        return self.decoder.movq_scale_factor**2


def _check_source(name: str, source: str) -> None:
    """``from_pretrained`` takes a hub id or a local folder. A path that does not exist would otherwise be
    sent to the hub as a repository id and fail with an unrelated-sounding validation error."""
    looks_local = os.path.isabs(source) or source.startswith(("./", "../", "~")) or source.count("/") > 1
    if looks_local and not os.path.isdir(os.path.expanduser(source)):
        raise LoadError(f"{name}={source}: no such directory")


def load_pipelines(settings: Settings, device: str) -> Pipelines:
    """Load the prior and the decoder; build img2img from the decoder's own modules (no second copy).

    On CUDA the weights are float16 and each pipeline is offloaded model by model (``enable_model_cpu_offload``)
    so that the prior, UNet and MoVQ never sit on the GPU together; on the CPU float32, as half precision is
    slow or unsupported there.
    """
    if device == "cuda" and not torch.cuda.is_available():
        raise LoadError("KANDINSKY_DEVICE=cuda but torch cannot see a CUDA device (torch.cuda.is_available() is False)")
    _check_source("KANDINSKY_PRIOR", settings.prior)
    _check_source("KANDINSKY_DECODER", settings.decoder)
    dtype = torch.float16 if device == "cuda" else torch.float32
    try:
        prior = KandinskyV22PriorPipeline.from_pretrained(os.path.expanduser(settings.prior), dtype=dtype)
    except Exception as exc:
        raise LoadError(f"KANDINSKY_PRIOR={settings.prior}: {type(exc).__name__}: {exc}") from exc
    try:
        decoder = KandinskyV22Pipeline.from_pretrained(os.path.expanduser(settings.decoder), dtype=dtype)
    except Exception as exc:
        raise LoadError(f"KANDINSKY_DECODER={settings.decoder}: {type(exc).__name__}: {exc}") from exc
    img2img = KandinskyV22Img2ImgPipeline(**decoder.components)
    for pipe in (prior, decoder, img2img):
        pipe.set_progress_bar_config(disable=True)
        if device == "cuda":
            # The decoder and img2img share their UNet and MoVQ, and the offload hooks live on those modules.
            # Whichever pipeline installed them last (each re-installs its own after a call), they move the
            # same modules to the same GPU in the same order (unet->movq), so sharing them is safe.
            pipe.enable_model_cpu_offload()
        else:
            pipe.to(device)
    return Pipelines(prior=prior, decoder=decoder, img2img=img2img)


def encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class Engine(LoadState):
    """The loaded pipelines and their state (``LoadState``)."""

    out_of_memory_error = torch.OutOfMemoryError

    def __init__(self, settings: Settings):
        super().__init__()
        self.settings = settings
        self.device = resolve_device(settings.device)
        self.pipelines: Pipelines | None = None

    def load(self) -> None:
        """(Re)load the models, dropping the current ones first: a GPU rarely holds two copies. On failure
        the service stays unloaded, with the reason kept for /health's callers and /generate's 503."""
        with self._state_lock:
            self.state = "loading"
            self.error = ""
        self.unload()
        started = time.monotonic()
        logger.info(
            "Loading Kandinsky 2.2 on %s: prior %s, decoder %s", self.device, self.settings.prior, self.settings.decoder
        )
        try:
            pipelines = load_pipelines(self.settings, self.device)
        except LoadError as exc:
            self._fail(str(exc))
            raise
        except Exception as exc:  # anything else from torch/diffusers: keep the service up and say why
            self._fail(f"{type(exc).__name__}: {exc}")
            raise LoadError(self.error) from exc
        with self._state_lock:
            self.pipelines = pipelines
            self.state = "ready"
        logger.info("Models loaded in %.1f s", time.monotonic() - started)

    def _fail(self, reason: str) -> None:
        logger.error("Loading the models failed: %s", reason)
        with self._state_lock:
            self.state = "failed"
            self.error = reason
        self.unload()

    def unload(self) -> None:
        with self._state_lock:
            self.pipelines = None
        self.free_memory()

    def free_memory(self) -> None:
        """After an out-of-memory error (or an unload) the allocator keeps the blocks it grabbed; hand them
        back so the next, smaller request can succeed."""
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

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
        """Text to image, or image to image when ``source`` is given.

        The output size is the rule the project is built around: text to image answers exactly
        ``width``×``height``; image to image answers exactly the source's size and ignores ``width``/``height``.
        The pipelines work on multiples of 64, so the request is rounded up for them and the picture resized
        back. One CPU generator seeded with ``seed`` drives both stages, so a seed repeats on any device.
        """
        pipelines = self.pipelines
        if pipelines is None or not self.loaded:
            raise ModelsNotLoaded(self.not_loaded_reason())
        if seed is None:
            seed = secrets.randbelow(MAX_SEED + 1)
        generator = torch.Generator(device="cpu").manual_seed(seed)
        target = source.size if source is not None else (width, height)
        started = time.monotonic()

        img2img_steps = None
        if source is not None:
            max_steps = pipelines.img2img.scheduler.config.num_train_timesteps
            img2img_steps = _steps_for_strength(num_inference_steps, strength, max_steps)
        if source is not None and img2img_steps is None:
            # Too little strength to run a single denoising step: the source is the answer (as a PNG).
            image = source.convert("RGB")
        else:
            # The negative prompt goes through the prior as well ("" is the model's own unconditional
            # embedding), as in the reference usage of the two pipelines.
            prior_out = pipelines.prior(
                prompt,
                negative_prompt=negative_prompt,
                # UnCLIPScheduler divides by (steps - 1): one prior step is a ZeroDivisionError.
                num_inference_steps=max(num_inference_steps, 2),
                guidance_scale=prior_guidance_scale,
                generator=generator,
            )
            multiple = pipelines.size_multiple
            work_w, work_h = (math.ceil(side / multiple) * multiple for side in target)
            common = {
                "image_embeds": prior_out.image_embeds,
                "negative_image_embeds": prior_out.negative_image_embeds,
                "width": work_w,
                "height": work_h,
                "guidance_scale": guidance_scale,
                "generator": generator,
            }
            if source is None:
                image = pipelines.decoder(**common, num_inference_steps=num_inference_steps).images[0]
            else:
                image = pipelines.img2img(
                    **common, image=source.convert("RGB"), strength=strength, num_inference_steps=img2img_steps
                ).images[0]
        if image.size != target:
            image = image.resize(target, Image.Resampling.LANCZOS)
        png = encode_png(image)
        logger.info(
            "Generated %s %dx%d, %d steps, seed %d in %.1f s",
            "img2img" if source is not None else "txt2img",
            target[0],
            target[1],
            num_inference_steps,
            seed,
            time.monotonic() - started,
        )
        return Result(png=png, seed=seed, width=target[0], height=target[1])


def _steps_for_strength(num_inference_steps: int, strength: float, max_steps: int) -> int | None:
    """How many scheduler steps img2img needs, or ``None`` when ``strength`` is too small to denoise at all.

    img2img runs only the last ``int(steps * strength)`` steps of the schedule; when that is 0 diffusers fails
    on an empty schedule. Raising the step count until one step runs costs one step, as the skipped part of a
    longer schedule is never computed; past the scheduler's training steps there is no finer schedule.
    """
    if int(num_inference_steps * strength) >= 1:
        return num_inference_steps
    if strength <= 0:
        return None
    steps = max(num_inference_steps, math.ceil(1 / strength))
    while int(steps * strength) < 1:  # float rounding: at most a step or two
        steps += 1
    if steps > max_steps:
        return None
    logger.info("img2img: %d steps at strength %g run no step; using %d", num_inference_steps, strength, steps)
    return steps
