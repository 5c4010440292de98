"""A test picture made on the spot, for commands and demos that need a source image and were given none."""

import io


def sample_png(width: int = 768, height: int = 512) -> bytes:
    """A recognisable test picture (stripes and a caption), made on the spot."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (width, height), (40, 90, 160))
    draw = ImageDraw.Draw(image)
    for x in range(0, width, 48):
        draw.line([(x, 0), (width - x, height)], fill=(230, 180, 60), width=3)
    draw.text((24, 24), "Genbox test image", fill=(255, 255, 255))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()
