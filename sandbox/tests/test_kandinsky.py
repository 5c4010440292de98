"""The Kandinsky 2.2 service emulator, exercised over real HTTP with httpx (no Django database)."""

from __future__ import annotations

import base64
import io
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from sandbox.kandinsky import DIRECTIVES, KandinskyEmulator
from tests.support.helpers import in_thread

TASK_SECONDS = 0.05
API_KEY = "test-kandinsky-key"


@pytest.fixture(scope="module")
def server() -> Iterator[KandinskyEmulator]:
    # One server for the module: stopping one costs half a second (the serve_forever poll interval).
    with KandinskyEmulator(task_seconds=TASK_SECONDS) as running:
        yield running


@pytest.fixture
def emulator(server: KandinskyEmulator) -> KandinskyEmulator:
    """The module's server, reset to its initial state."""
    server.task_seconds = TASK_SECONDS
    server.api_key = None
    server.models_loaded = True
    server.device = "cuda"
    server.clear()
    server.generations.clear()
    return server


@pytest.fixture
def client(emulator: KandinskyEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, timeout=10) as http:
        yield http


def encoded(image: Image.Image, image_format: str = "PNG") -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=image_format)
    return base64.b64encode(buffer.getvalue()).decode()


def png(response: httpx.Response) -> Image.Image:
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def generate(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/generate", json={"prompt": "a red fox", **body})


# ---- /generate ------------------------------------------------------------------------------------------


def test_generate_answers_a_768_png_with_seed_and_size_headers(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    response = generate(client, seed=5)

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert response.headers["X-Seed"] == "5"
    assert response.headers["X-Image-Size"] == "768x768"
    assert png(response).size == (768, 768)
    [generation] = emulator.generations
    assert (generation.seed, generation.width, generation.height, generation.mode) == (5, 768, 768, "txt2img")
    assert generation.body == {"prompt": "a red fox", "seed": 5}
    assert generation.finished - generation.started >= TASK_SECONDS * 0.9


def test_generate_honours_width_and_height(client: httpx.Client) -> None:
    response = generate(client, width=640, height=384, num_inference_steps=10, guidance_scale=7.5)
    assert png(response).size == (640, 384)
    assert response.headers["X-Image-Size"] == "640x384"


def test_generate_is_deterministic_for_a_seed_and_random_without_one(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    first = generate(client, seed=42, width=128, height=128)
    again = generate(client, seed=42, width=128, height=128)
    other = generate(client, seed=43, width=128, height=128)
    assert first.content == again.content
    assert first.content != other.content

    unseeded = generate(client, width=128, height=128, seed=None)
    seed = int(unseeded.headers["X-Seed"])
    assert 0 <= seed <= 2**32 - 1
    assert emulator.generations[-1].seed == seed
    assert generate(client, width=128, height=128, seed=seed).content == unseeded.content


def test_img2img_answers_the_source_size_and_ignores_width_and_height(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    source = Image.new("RGB", (300, 200), (10, 200, 30))
    for image_format in ("PNG", "JPEG", "WEBP"):
        response = generate(client, image=encoded(source, image_format), width=1024, height=1024, strength=0.3, seed=1)
        assert response.status_code == 200, image_format
        assert png(response).size == (300, 200)
        assert response.headers["X-Image-Size"] == "300x200"
    assert emulator.generations[-1].mode == "img2img"

    data_url = "data:image/png;base64," + encoded(source)
    assert png(generate(client, image=data_url, seed=1)).size == (300, 200)
    txt2img = generate(client, seed=1, width=300, height=200)
    assert generate(client, image=encoded(source), seed=1).content != txt2img.content  # the source is pasted in


def test_unknown_fields_are_ignored(client: httpx.Client) -> None:
    response = generate(client, width=64, height=64, scheduler="ddim", batch=4)
    assert response.status_code == 200


# ---- validation -----------------------------------------------------------------------------------------


def test_missing_prompt_answers_422_in_fastapi_shape(client: httpx.Client, emulator: KandinskyEmulator) -> None:
    response = client.post("/generate", json={"width": 512})
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", "prompt"]
    assert error["type"] == "missing"
    assert error["msg"] == "Field required"
    assert emulator.generations == []


@pytest.mark.parametrize(
    ("body", "field", "kind"),
    [
        ({"prompt": ""}, "prompt", "string_too_short"),
        ({"prompt": "x" * 2001}, "prompt", "string_too_long"),
        ({"prompt": 12}, "prompt", "string_type"),
        ({"prompt": "fox", "negative_prompt": ["a"]}, "negative_prompt", "string_type"),
        ({"prompt": "fox", "width": 63}, "width", "greater_than_equal"),
        ({"prompt": "fox", "height": 2049}, "height", "less_than_equal"),
        ({"prompt": "fox", "width": "wide"}, "width", "int_parsing"),
        ({"prompt": "fox", "width": 512.5}, "width", "int_from_float"),
        ({"prompt": "fox", "num_inference_steps": 0}, "num_inference_steps", "greater_than_equal"),
        ({"prompt": "fox", "num_inference_steps": 201}, "num_inference_steps", "less_than_equal"),
        ({"prompt": "fox", "guidance_scale": 30.5}, "guidance_scale", "less_than_equal"),
        ({"prompt": "fox", "guidance_scale": "strong"}, "guidance_scale", "float_parsing"),
        ({"prompt": "fox", "prior_guidance_scale": -1}, "prior_guidance_scale", "greater_than_equal"),
        ({"prompt": "fox", "seed": -1}, "seed", "greater_than_equal"),
        ({"prompt": "fox", "seed": 2**32}, "seed", "less_than_equal"),
        ({"prompt": "fox", "strength": 1.5}, "strength", "less_than_equal"),
        ({"prompt": "fox", "image": 5}, "image", "string_type"),
    ],
)
def test_invalid_fields_answer_422(client: httpx.Client, body: dict[str, Any], field: str, kind: str) -> None:
    response = client.post("/generate", json=body)
    assert response.status_code == 422
    [error] = response.json()["detail"]
    assert error["loc"] == ["body", field]
    assert error["type"] == kind
    assert error["msg"]


def test_every_invalid_field_is_reported(client: httpx.Client) -> None:
    response = client.post("/generate", json={"width": 10, "height": "x", "seed": 1.5})
    assert {tuple(error["loc"]) for error in response.json()["detail"]} == {
        ("body", "prompt"),
        ("body", "width"),
        ("body", "height"),
        ("body", "seed"),
    }


@pytest.mark.parametrize(
    ("content", "kind"), [(b"", "missing"), (b"{oops", "json_invalid"), (b"[1]", "model_attributes_type")]
)
def test_bodies_that_are_not_json_objects_answer_422(client: httpx.Client, content: bytes, kind: str) -> None:
    response = client.post("/generate", content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == kind


@pytest.mark.parametrize(
    ("image", "why"),
    [
        ("%%% not base64 %%%", "image: not valid base64"),
        (base64.b64encode(b"definitely not a picture").decode(), "image: cannot be decoded"),
        (encoded(Image.new("RGB", (16, 16)), "GIF"), "image: unsupported format GIF"),
        (encoded(Image.new("L", (4097, 8))), "image: 4097x8 is larger than 4096x4096"),
        (encoded(Image.new("RGB", (64, 64)))[:60], "image: "),
    ],
)
def test_bad_images_answer_400(client: httpx.Client, emulator: KandinskyEmulator, image: str, why: str) -> None:
    response = generate(client, image=image)
    assert response.status_code == 400
    assert response.json()["detail"].startswith(why)
    assert emulator.generations == []


# ---- models, health, reload -----------------------------------------------------------------------------


def test_unloaded_models_answer_503_until_reload(client: httpx.Client, emulator: KandinskyEmulator) -> None:
    emulator.models_loaded = False
    assert client.get("/health").json() == {
        "status": "unhealthy",
        "device": "cuda",
        "models_loaded": False,
        "busy": False,
    }
    response = generate(client, width=64, height=64)
    assert response.status_code == 503
    assert response.json()["detail"].startswith("Models are not loaded: ")

    assert client.post("/reload").json() == {"status": "success", "message": "Models loaded"}
    assert client.get("/health").json()["status"] == "healthy"
    assert generate(client, width=64, height=64).status_code == 200


def test_models_can_start_unloaded() -> None:
    emulator = KandinskyEmulator(models_loaded=False, device="cpu")
    assert emulator.models_loaded is False
    assert emulator.device == "cpu"


def test_health_answers_busy_during_a_generation(client: httpx.Client, emulator: KandinskyEmulator) -> None:
    assert client.get("/health").json() == {"status": "healthy", "device": "cuda", "models_loaded": True, "busy": False}
    thread, result = in_thread(lambda: generate(client, prompt="fox [[slow:0.4]]", width=64, height=64))
    try:
        deadline = time.monotonic() + 2
        while not emulator.busy and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        health = client.get("/health").json()
        assert time.monotonic() - started < 0.25
        assert health["busy"] is True
    finally:
        thread.join()
    assert result["response"].status_code == 200
    assert client.get("/health").json()["busy"] is False


def test_generations_run_one_at_a_time(client: httpx.Client, emulator: KandinskyEmulator) -> None:
    emulator.task_seconds = 0.3
    threads = [in_thread(lambda: generate(client, width=64, height=64)) for _ in range(2)]
    for thread, _ in threads:
        thread.join()
    assert all(result["response"].status_code == 200 for _, result in threads)
    first, second = sorted(emulator.generations, key=lambda generation: generation.started)
    assert second.started >= first.finished - 0.01
    assert second.finished - first.started >= 0.55


def test_task_seconds_can_change_at_run_time(client: httpx.Client, emulator: KandinskyEmulator) -> None:
    emulator.task_seconds = 0.0
    started = time.monotonic()
    generate(client, width=64, height=64)
    fast = time.monotonic() - started
    emulator.task_seconds = 0.3
    started = time.monotonic()
    generate(client, width=64, height=64)
    assert time.monotonic() - started >= 0.3 > fast


def test_root_describes_the_service(client: httpx.Client) -> None:
    info = client.get("/").json()
    assert info["service"] == "Kandinsky 2.2"
    assert info["version"] == "emulator"
    assert info["device"] == "cuda"
    assert "generate" in info["endpoints"]


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert client.get("/nothing").json() == {"detail": "Not Found"}
    assert client.get("/generate").status_code == 405
    assert client.get("/generate").json() == {"detail": "Method Not Allowed"}


# ---- directives -----------------------------------------------------------------------------------------


def test_directives_are_documented() -> None:
    assert set(DIRECTIVES) == {"oom", "fail", "malformed", "slow:S"}


def test_oom_directive_answers_500(client: httpx.Client, emulator: KandinskyEmulator) -> None:
    response = generate(client, prompt="fox [[oom]]")
    assert response.status_code == 500
    assert response.json() == {"detail": "Out of memory: CUDA out of memory. Tried to allocate 1.50 GiB"}
    assert emulator.generations[-1].outcome == "oom"


def test_fail_directive_answers_500(client: httpx.Client) -> None:
    response = generate(client, prompt="fox [[fail]]", width=64, height=64)
    assert response.status_code == 500
    assert response.json() == {"detail": "Generation failed: RuntimeError: Emulated failure"}


def test_malformed_directive_answers_html_labelled_png(client: httpx.Client) -> None:
    response = generate(client, prompt="fox [[malformed]]", width=64, height=64)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert not response.content.startswith(b"\x89PNG")
    assert b"<html>" in response.content


def test_slow_directive_overrides_task_seconds(client: httpx.Client) -> None:
    started = time.monotonic()
    generate(client, prompt="fox [[slow:0.3]]", width=64, height=64)
    assert time.monotonic() - started >= 0.3


# ---- auth -----------------------------------------------------------------------------------------------


def test_api_key_guards_every_route_but_health_and_root(client: httpx.Client, emulator: KandinskyEmulator) -> None:
    emulator.api_key = API_KEY
    assert client.get("/health").status_code == 200
    assert client.get("/").status_code == 200
    for path in ("/generate", "/reload"):
        response = client.post(path, json={"prompt": "fox"})
        assert response.status_code == 401
        assert response.json() == {"detail": "Invalid or missing API key"}
        wrong = client.post(path, json={"prompt": "fox"}, headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401

    headers = {"Authorization": f"Bearer {API_KEY}"}
    assert (
        client.post("/generate", json={"prompt": "fox", "width": 64, "height": 64}, headers=headers).status_code == 200
    )
    assert client.post("/reload", headers=headers).status_code == 200
    assert emulator.recorded("POST", "/generate")[-1].headers["Authorization"] == "<redacted>"
