"""POST /generate through the real app and the real (tiny) models: sizes, seeds, validation, bad images."""

import base64
import io

import pytest

pytest.importorskip("torch", reason="torch is not installed: run services/kandinsky/scripts/test.sh")
pytest.importorskip("diffusers", reason="diffusers is not installed: run services/kandinsky/scripts/test.sh")

from PIL import Image  # noqa: E402

from tests.conftest import image_base64  # noqa: E402

FAST = {"num_inference_steps": 2, "width": 64, "height": 64}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def generate(client, **body):
    return client.post("/generate", json={"prompt": "a red cat", **FAST, **body})


def png_size(response) -> tuple[int, int]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(response.content))
    assert image.format == "PNG"
    return image.size


def test_txt2img_answers_a_png_of_the_requested_size(client):
    response = generate(client, seed=7)
    assert png_size(response) == (64, 64)
    assert response.headers["x-seed"] == "7"
    assert response.headers["x-image-size"] == "64x64"


@pytest.mark.parametrize("size", [(100, 70), (65, 129), (64, 200)])
def test_txt2img_size_off_the_64_grid_is_resized_back_exactly(client, size):
    response = generate(client, width=size[0], height=size[1], seed=1)
    assert png_size(response) == size
    assert response.headers["x-image-size"] == f"{size[0]}x{size[1]}"


def test_a_single_step_works(client):
    # The prior's UnCLIPScheduler cannot make a one-step schedule; the service gives the prior two.
    assert png_size(generate(client, num_inference_steps=1, seed=1)) == (64, 64)


def test_cyrillic_prompt_and_negative_prompt(client):
    response = generate(client, prompt="красивый пейзаж с горами", negative_prompt="размыто", seed=3)
    assert png_size(response) == (64, 64)


def test_unknown_fields_are_ignored(client):
    # Callers may send a superset of the schema (a preset written for another server, say).
    assert png_size(generate(client, seed=3, scheduler="ddim", batch_size=4)) == (64, 64)


def test_without_a_seed_the_service_picks_one_and_reports_it(client):
    seeds = set()
    for _ in range(2):
        response = generate(client)
        assert png_size(response) == (64, 64)
        seed = int(response.headers["x-seed"])
        assert 0 <= seed <= 2**32 - 1
        seeds.add(seed)
    assert len(seeds) == 2


def test_same_seed_and_body_give_identical_bytes(client):
    first = generate(client, seed=42, guidance_scale=5.0, prior_guidance_scale=2.0)
    second = generate(client, seed=42, guidance_scale=5.0, prior_guidance_scale=2.0)
    assert first.status_code == second.status_code == 200
    assert first.content == second.content


def test_the_reported_seed_reproduces_a_random_generation(client):
    first = generate(client)
    second = generate(client, seed=int(first.headers["x-seed"]))
    assert first.content == second.content


def test_different_seeds_give_different_pictures(client):
    assert generate(client, seed=1).content != generate(client, seed=2).content


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_img2img_answers_the_source_size_whatever_width_and_height_say(client, fmt):
    response = generate(client, image=image_base64((80, 48), fmt), width=512, height=256, strength=0.5, seed=5)
    assert png_size(response) == (80, 48)
    assert response.headers["x-image-size"] == "80x48"
    assert response.headers["x-seed"] == "5"


def test_img2img_is_reproducible_and_depends_on_the_source(client):
    red, blue = image_base64((72, 72), color="red"), image_base64((72, 72), color="blue")
    first = generate(client, image=red, seed=9)
    assert first.content == generate(client, image=red, seed=9).content
    assert first.content != generate(client, image=blue, seed=9).content


def test_img2img_accepts_a_data_url_and_transparency(client):
    buffer = io.BytesIO()
    Image.new("RGBA", (70, 90), (255, 0, 0, 128)).save(buffer, format="PNG")
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")
    assert png_size(generate(client, image=data_url, seed=1)) == (70, 90)


def test_img2img_with_too_few_steps_for_the_strength_still_denoises(client):
    # int(1 step * 0.3) is 0 steps: the service raises the step count so that one step runs.
    source = image_base64((64, 64), color="white")
    response = generate(client, image=source, num_inference_steps=1, strength=0.3, seed=2)
    assert png_size(response) == (64, 64)
    assert Image.open(io.BytesIO(response.content)).convert("RGB").getcolors() != [(64 * 64, (255, 255, 255))]


def test_img2img_at_strength_zero_answers_the_source(client):
    response = generate(client, image=image_base64((50, 30), color="white"), strength=0)
    assert png_size(response) == (50, 30)
    assert Image.open(io.BytesIO(response.content)).getcolors() == [(50 * 30, (255, 255, 255))]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"prompt": None}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": "   "}, "prompt"),
        ({"prompt": "x" * 2001}, "prompt"),
        ({"width": 63}, "width"),
        ({"width": 2049}, "width"),
        ({"height": "tall"}, "height"),
        ({"height": 70.5}, "height"),
        ({"num_inference_steps": 0}, "num_inference_steps"),
        ({"num_inference_steps": 201}, "num_inference_steps"),
        ({"guidance_scale": 30.5}, "guidance_scale"),
        ({"prior_guidance_scale": -0.1}, "prior_guidance_scale"),
        ({"seed": -1}, "seed"),
        ({"seed": 2**32}, "seed"),
        ({"strength": 1.01}, "strength"),
        ({"image": 12}, "image"),
        ({"negative_prompt": ["a"]}, "negative_prompt"),
    ],
)
def test_invalid_fields_answer_422_naming_the_field(client, body, field):
    payload = {"prompt": "a cat", **body}
    if body.get("prompt", "") is None:
        del payload["prompt"]
    response = client.post("/generate", json=payload)
    assert response.status_code == 422, response.text
    locations = [error["loc"] for error in response.json()["detail"]]
    assert ["body", field] in locations
    assert all({"loc", "msg", "type"} <= error.keys() for error in response.json()["detail"])


def test_a_body_that_is_not_json_answers_422(client):
    response = client.post("/generate", content=b"prompt=cat", headers={"Content-Type": "application/json"})
    assert response.status_code == 422


def _gif() -> str:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="GIF")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _truncated_png() -> str:
    buffer = io.BytesIO()
    Image.effect_noise((64, 64), 50).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()[:200]).decode("ascii")


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("not base64 at all!", "not valid base64"),
        ("", "empty"),
        (base64.b64encode(b"just some text, not a picture").decode(), "not a PNG, JPEG or WEBP"),
        (_gif(), "GIF is not supported"),
        (_truncated_png(), "cannot be decoded"),
        (image_base64((4097, 8)), "4097x8 is larger than 4096x4096"),
    ],
)
def test_unusable_images_answer_400_saying_why(client, image, why):
    response = generate(client, image=image)
    assert response.status_code == 400, response.text
    detail = response.json()["detail"]
    assert detail.startswith("image: ")
    assert why in detail


def test_root_describes_the_service(client):
    info = client.get("/").json()
    assert info["service"] == "Kandinsky 2.2"
    assert info["version"]
    assert info["device"] == "cpu"
    assert set(info["endpoints"]) == {"POST /generate", "GET /health", "POST /reload", "GET /"}
