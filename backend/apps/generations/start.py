"""Starting generations: everything decided before anything is queued (``lifecycle`` takes over from there).

The request is checked against the model (prompt length, ``parameters_schema``, the seed every model takes),
then split into variants, each with its own seed stored in its ``generation_config``. img2img rules
(``docs/providers.md`` explains them): the source is a PNG, JPEG or WEBP of at most 4096×4096 and within the
model's size limits; the output keeps the source's size unless the model ``resizes_source`` (a different
requested size is noted in ``metadata.ignored_options``); a missing denoise strength is 0.65.
"""

import functools
import logging
import random
import secrets
import uuid
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import transaction
from django.utils import timezone
from kombu.exceptions import KombuError

from apps.ai_providers.models import AIModel
from apps.ai_providers.parameters import SEED_SPEC, validate_generation_config
from apps.ai_providers.templating import (
    MASK_VARIABLES,
    SOURCE_IMAGE_VARIABLES,
    TemplateError,
    template_variables,
)
from apps.assets.models import Asset

from .lifecycle import _enqueue_submit, submit_queue

MAX_VARIANTS = 8
# img2img: what a source image may be, and the denoise strength when none is given.
SOURCE_IMAGE_TYPES = ("image/png", "image/jpeg", "image/webp")
SOURCE_MAX_SIDE = 4096
DENOISE_PARAMETERS = ("denoise", "denoising_strength", "strength")
DENOISE_DEFAULT = 0.65

logger = logging.getLogger(__name__)
Stage = Asset.Stage
Status = Asset.Status


def generation_start(
    *,
    box,
    model: AIModel,
    prompt: str,
    parent: Asset | None = None,
    mask: Asset | None = None,
    config: dict | None = None,
    variants: int = 1,
) -> list[Asset]:
    """Validate a generate request and queue ``variants`` generations; returns the PENDING assets.

    Each variant has its own seed (the given ``seed`` + its index, or random ones), kept in its
    ``generation_config`` so that sending it back reproduces the request exactly; variants share a
    ``variant_group`` in ``metadata`` and otherwise live (and fail) on their own. Raises ``ValidationError``.
    The submit tasks are enqueued when the surrounding transaction commits.

    img2img (a model whose request uses the source image): the source must be a PNG, JPEG or WEBP of at
    most 4096×4096; the output keeps its size, so ``width``/``height`` become the source's (a different
    requested size is noted in ``metadata.ignored_options``) unless the model ``resizes_source``; a denoise
    option left out is 0.65 unless the model sets its own default. ``mask`` is an inpainting mask.
    """
    if model.model_type == AIModel.ModelType.TEXT:
        raise ValidationError({"ai_model_id": ["This is a text model; it cannot generate images or videos."]})
    if model.max_prompt_length and len(prompt) > model.max_prompt_length:
        raise ValidationError(
            {"prompt": [f"At most {model.max_prompt_length} characters for this model; this one has {len(prompt)}."]}
        )
    if not 1 <= variants <= MAX_VARIANTS:
        raise ValidationError({"variants": [f"Between 1 and {MAX_VARIANTS}."]})
    try:
        required, optional = template_variables(model.request_schema)
    except TemplateError as exc:  # a model saved without its checks (e.g. straight through the ORM)
        raise ValidationError({"ai_model_id": [f"This model is misconfigured: {exc}"]}) from exc
    needs_source = bool(SOURCE_IMAGE_VARIABLES & required)
    if needs_source and parent is None:
        raise ValidationError({"parent_asset_id": ["This model needs a source image: pass parent_asset_id."]})
    if parent is not None:  # a source the request sends (even optionally) must be an image the provider takes
        _check_source(parent, "parent_asset_id", strict=bool(SOURCE_IMAGE_VARIABLES & (required | optional)))
    mask_variables = MASK_VARIABLES & (required | optional)
    if mask_variables & required and mask is None:
        raise ValidationError({"mask_asset_id": ["This model paints into a mask: pass mask_asset_id."]})
    if mask is not None:
        if not mask_variables:
            raise ValidationError({"mask_asset_id": ["This model takes no mask."]})
        if parent is None:
            raise ValidationError({"mask_asset_id": ["A mask needs the image it belongs to: pass parent_asset_id."]})
        _check_source(mask, "mask_asset_id", strict=True)
        if (mask.width, mask.height) != (parent.width, parent.height):
            raise ValidationError(
                {
                    "mask_asset_id": [
                        f"The mask is {mask.width}×{mask.height}; it must have the source image's size, "
                        f"{parent.width}×{parent.height}."
                    ]
                }
            )

    source_size = (parent.width, parent.height) if parent is not None and needs_source else None
    validated, ignored = generation_options(model, {} if config is None else config, source_size=source_size)
    metadata: dict[str, Any] = {"ignored_options": ignored} if ignored else {}
    if mask is not None:
        metadata["mask_asset_id"] = mask.pk

    first_seed = validated.get("seed")
    seeds = (
        [(first_seed + index) % (SEED_SPEC["max"] + 1) for index in range(variants)]
        if first_seed is not None
        else random.sample(range(1, SEED_SPEC["max"]), variants)
    )
    group = {"variant_group": uuid.uuid4().hex, "variants": variants} if variants > 1 else {}
    now = timezone.now()
    # A synchronous provider's generation may first wait its turn for the GPU; its own timeout starts with the run.
    first_deadline = settings.GENBOX_GPU_QUEUE_WAIT_SECONDS if submit_queue(model) else model.effective_timeout_seconds
    assets = []
    for index, seed in enumerate(seeds):
        asset = Asset.objects.create(
            box=box,
            asset_type=model.model_type,
            source=Asset.Source.GENERATION,
            status=Status.PENDING,
            stage=Stage.QUEUED,
            prompt_text=prompt,
            ai_model=model,
            parent_asset=parent,
            generation_config={**validated, "seed": seed},
            callback_token=secrets.token_urlsafe(32),
            metadata={**metadata, **group, "variant": index + 1} if group else metadata,
            due_at=now,
            deadline_at=now + timedelta(seconds=first_deadline),
        )
        logger.info(
            "asset %s: generation queued with model %s (%s), seed %s; prompt: %s",
            asset.pk,
            model.pk,
            model.name,
            seed,
            prompt,
        )
        transaction.on_commit(functools.partial(_send_or_leave_to_sweeper, asset.pk, model))
        assets.append(asset)
    return assets


def _send_or_leave_to_sweeper(asset_id: int, model: AIModel) -> None:
    """Send the submit task, if the model's submissions have one (the GPU queue's; the batches find the others
    by their due time). With the broker down the generation is saved all the same and the sweeper sends it
    once the broker is back, so the client gets its 201 (a 500 would make it retry and pay twice)."""
    try:
        _enqueue_submit(asset_id, model)
    except (KombuError, OSError) as exc:
        logger.warning("asset %s: the broker is unreachable (%s); the sweeper will send it", asset_id, exc)


def generation_options(model: AIModel, config: Any, *, source_size: tuple[int, int] | None) -> tuple[dict, dict]:
    """The options to generate with, and the requested ones img2img ignores (with the reason).

    ``config`` is checked against the model's options and defaults are filled in. For img2img
    (``source_size`` given) a denoise option left out is ``DENOISE_DEFAULT`` unless the model has its own
    default, and ``width``/``height`` are the source's unless the model ``resizes_source``.
    Raises ``ValidationError``.
    """
    if source_size is None or not isinstance(config, dict):
        return validate_generation_config(model.parameters_schema, config), {}
    config = dict(config)
    for name in DENOISE_PARAMETERS:
        spec = model.parameters_schema.get(name)
        if spec is not None and config.get(name) is None and "default" not in spec:
            config[name] = DENOISE_DEFAULT
    if model.resizes_source:
        return validate_generation_config(model.parameters_schema, config), {}
    size = dict(zip(("width", "height"), source_size, strict=True))
    for name, value in size.items():
        largest = (model.parameters_schema.get(name) or {}).get("max")
        if largest is not None and value > largest:
            raise ValidationError(
                {"parent_asset_id": [f"This model takes sources up to {largest} pixels {name}; this one is {value}."]}
            )
    ignored = {name: config[name] for name in size if config.get(name) is not None and config[name] != size[name]}
    for name, value in ignored.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValidationError(
                {f"generation_config.{name}": [f"{value!r} is not allowed; expected a whole number."]}
            )
    for name in size:  # accepted and ignored even where the model has no such option
        if name not in model.parameters_schema:
            config.pop(name, None)
    options = validate_generation_config(model.parameters_schema, config)
    options.update({name: value for name, value in size.items() if name in model.parameters_schema})
    if ignored:
        ignored["reason"] = f"img2img keeps the source image's size, {source_size[0]}×{source_size[1]}"
    return options, ignored


def needs_source_image(model: AIModel) -> bool:
    """Whether the model's request uses the parent image (``<<image_url>>``, ``<<image_name>>``, … without default)."""
    required, _ = template_variables(model.request_schema)
    return bool(SOURCE_IMAGE_VARIABLES & required)


def _check_source(asset: Asset, field: str, *, strict: bool) -> None:
    """A source or mask must be a finished file; one the provider reads must be an image it can take."""
    if asset.status != Status.COMPLETED or not asset.file:
        raise ValidationError({field: ["That asset has no file yet (it is not COMPLETED)."]})
    if not strict:
        return
    if asset.asset_type != Asset.AssetType.IMAGE or asset.mime_type not in SOURCE_IMAGE_TYPES:
        raise ValidationError({field: [f"Must be a PNG, JPEG or WEBP image; this asset is {asset.mime_type}."]})
    if not asset.width or not asset.height or max(asset.width, asset.height) > SOURCE_MAX_SIDE:
        raise ValidationError(
            {
                field: [
                    f"At most {SOURCE_MAX_SIDE}×{SOURCE_MAX_SIDE} pixels; this image is {asset.width}×{asset.height}."
                ]
            }
        )
