"""What adapter tests share: test pictures, sources in the pipeline's form, and the body the pipeline would send."""

import io

from PIL import Image

from apps.ai_providers.contract import Source
from apps.ai_providers.models import AIModel
from apps.ai_providers.templating import render_request
from apps.generations.start import generation_options


def png(width: int, height: int, color=(200, 40, 40)) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), color).save(buffer, "PNG")
    return buffer.getvalue()


def source(content: bytes, role: str = "image") -> Source:
    with Image.open(io.BytesIO(content)) as image:
        width, height = image.size
    return Source(
        role=role,
        filename=f"{role}.png",
        content_type="image/png",
        width=width,
        height=height,
        url=None,
        open=lambda: io.BytesIO(content),
    )


def body_for(
    model: AIModel, adapter, prompt: str, *, seed: int = 1234, parent: bytes | None = None, mask=None, **options
):
    """The request the pipeline would send: validated options, built-ins, the source in the adapter's form."""
    parent_source = source(parent) if parent is not None else None
    size = (parent_source.width, parent_source.height) if parent_source else None
    config, _ = generation_options(model, {**options, "seed": seed}, source_size=size)
    context = {**config, "prompt": prompt, "negative_prompt": ""}
    if parent_source is not None:
        context.setdefault("width", parent_source.width)
        context.setdefault("height", parent_source.height)
        context.update(adapter.source_variables(parent_source))
    if mask is not None:
        context.update(adapter.source_variables(source(mask, "mask")))
    return render_request(model.request_schema, context)
