"""The Kandinsky sandbox: the real service app on the fake engine, run by ``KandinskyEmulator``, over real HTTP.

What the service does with any engine (validation, bad images, auth, routes, the one-at-a-time lock) is
tested in ``services/kandinsky/tests``; here, what the fake engine makes of it through the service, and the
runner: its arguments, its request log, starting and stopping.
"""

from __future__ import annotations

import base64
import io
import socket
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

import sandbox.kandinsky
from sandbox.kandinsky import DIRECTIVES, KandinskyEmulator
from tests.support.helpers import in_thread

TASK_SECONDS = 0.05
API_KEY = "test-kandinsky-key"


@pytest.fixture(scope="module")
def server() -> Iterator[KandinskyEmulator]:
    with KandinskyEmulator(task_seconds=TASK_SECONDS) as running:
        yield running


@pytest.fixture
def emulator(server: KandinskyEmulator) -> KandinskyEmulator:
    """The module's server, reset to its initial state."""
    server.task_seconds = TASK_SECONDS
    server.clear()
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
    assert response.status_code == 200, response.text
    assert response.content.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(response.content))
    image.load()
    return image


def generate(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/generate", json={"prompt": "a red fox", **body})


def wait_until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


# ---- pictures -------------------------------------------------------------------------------------------


def test_generate_answers_a_768_png_with_seed_and_size_headers(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    response = generate(client, seed=5)

    assert response.headers["content-type"] == "image/png"
    assert response.headers["X-Seed"] == "5"
    assert response.headers["X-Image-Size"] == "768x768"
    assert png(response).size == (768, 768)
    [generation] = emulator.generations
    assert (generation.seed, generation.width, generation.height, generation.mode) == (5, 768, 768, "txt2img")
    assert (generation.prompt, generation.outcome) == ("a red fox", "ok")


@pytest.mark.parametrize("size", [(640, 384), (100, 70), (65, 129)])
def test_txt2img_answers_exactly_the_requested_size_on_the_64_grid_or_off_it(
    client: httpx.Client, size: tuple[int, int]
) -> None:
    response = generate(client, width=size[0], height=size[1], num_inference_steps=10, guidance_scale=7.5)

    assert png(response).size == size
    assert response.headers["X-Image-Size"] == f"{size[0]}x{size[1]}"


def test_the_same_seed_and_body_give_the_same_bytes_and_a_reported_seed_repeats(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    first = generate(client, seed=42, width=128, height=128)
    again = generate(client, seed=42, width=128, height=128)
    other_seed = generate(client, seed=43, width=128, height=128)
    other_guidance = generate(client, seed=42, width=128, height=128, guidance_scale=9)
    assert png(first).size == (128, 128)
    assert first.content == again.content
    assert first.content != other_seed.content
    assert first.content != other_guidance.content

    unseeded = generate(client, width=128, height=128, seed=None)
    seed = int(unseeded.headers["X-Seed"])
    assert 0 <= seed <= 2**32 - 1
    assert emulator.generations[-1].seed == seed
    assert generate(client, width=128, height=128, seed=seed).content == unseeded.content


def test_img2img_answers_the_source_size_and_depends_on_the_source(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    green = encoded(Image.new("RGB", (300, 200), (10, 200, 30)))
    blue = encoded(Image.new("RGB", (300, 200), (10, 30, 200)), "JPEG")

    response = generate(client, image=green, width=1024, height=1024, strength=0.3, seed=1)
    again = generate(client, image=green, width=1024, height=1024, strength=0.3, seed=1)
    other_source = generate(client, image=blue, strength=0.3, seed=1)
    other_strength = generate(client, image=green, strength=0.9, seed=1)

    assert png(response).size == (300, 200)
    assert response.headers["X-Image-Size"] == "300x200"
    assert png(other_source).size == (300, 200)
    assert response.content == again.content
    assert response.content != other_source.content
    assert response.content != other_strength.content
    assert emulator.generations[-1].mode == "img2img"


def test_img2img_at_strength_zero_answers_the_source_itself(client: httpx.Client) -> None:
    response = generate(client, image=encoded(Image.new("RGB", (50, 30), "white")), strength=0)

    assert png(response).size == (50, 30)
    assert png(response).getcolors() == [(50 * 30, (255, 255, 255))]


# ---- directives -----------------------------------------------------------------------------------------


def test_directives_are_documented() -> None:
    assert set(DIRECTIVES) == {"oom", "fail", "malformed", "slow:S"}


def test_oom_directive_answers_the_services_out_of_memory_500(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    response = generate(client, prompt="fox [[oom]]")

    assert response.status_code == 500
    assert response.json() == {"detail": "Out of memory: CUDA out of memory. Tried to allocate 1.50 GiB"}
    assert emulator.generations[-1].outcome == "oom"
    assert client.get("/health").json()["busy"] is False


def test_fail_directive_answers_the_services_generation_failed_500(
    client: httpx.Client, emulator: KandinskyEmulator
) -> None:
    response = generate(client, prompt="fox [[fail]]", width=64, height=64)

    assert response.status_code == 500
    assert response.json() == {"detail": "Generation failed: RuntimeError: Emulated failure"}
    assert emulator.generations[-1].outcome == "fail"


def test_malformed_directive_answers_html_labelled_png(client: httpx.Client) -> None:
    response = generate(client, prompt="fox [[malformed]]", width=64, height=64)

    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert not response.content.startswith(b"\x89PNG")
    assert b"<html>" in response.content


@pytest.mark.parametrize(
    ("task_seconds", "prompt"), [(60.0, "fox"), (TASK_SECONDS, "fox [[slow:60]]")], ids=["task_seconds", "slow"]
)
def test_a_long_generation_keeps_the_service_busy_until_it_ends(
    client: httpx.Client, emulator: KandinskyEmulator, task_seconds: float, prompt: str
) -> None:
    emulator.task_seconds = task_seconds
    thread, result = in_thread(lambda: generate(client, prompt=prompt, width=64, height=64))
    try:
        wait_until(lambda: emulator.generations, "the generation to start")
        # A 60 s generation cannot have ended yet: the service is busy with it.
        assert emulator.generations[-1].outcome == "running"
        assert client.get("/health").json()["busy"] is True
    finally:
        emulator.engine.release()  # ends it now
        thread.join()

    assert png(result["response"]).size == (64, 64)
    assert client.get("/health").json()["busy"] is False


# ---- loading --------------------------------------------------------------------------------------------


def test_a_failed_load_answers_503_with_its_reason_until_fixed_and_reloaded() -> None:
    reason = "KANDINSKY_PRIOR=/models/prior: no such directory"
    with (
        KandinskyEmulator(load_error=reason, device="cpu") as emulator,
        httpx.Client(base_url=emulator.base_url) as http,
    ):
        assert http.get("/health").json() == {
            "status": "unhealthy",
            "device": "cpu",
            "models_loaded": False,
            "busy": False,
        }
        refused = http.post("/generate", json={"prompt": "fox", "width": 64, "height": 64})
        failed_reload = http.post("/reload")
        emulator.engine.load_error = None
        reload = http.post("/reload")
        generated = http.post("/generate", json={"prompt": "fox", "width": 64, "height": 64})

    assert (refused.status_code, refused.json()) == (503, {"detail": f"Models are not loaded: {reason}"})
    assert (failed_reload.status_code, failed_reload.json()) == (500, {"status": "error", "message": reason})
    assert reload.json() == {"status": "success", "message": "Models loaded"}
    assert png(generated).size == (64, 64)


def test_a_slow_load_answers_503_loading_until_it_ends() -> None:
    with KandinskyEmulator(load_seconds=60) as emulator, httpx.Client(base_url=emulator.base_url) as http:
        health = http.get("/health").json()
        loading = http.post("/generate", json={"prompt": "fox", "width": 64, "height": 64})
        emulator.engine.release()
        wait_until(lambda: emulator.engine.loaded, "the load to end")
        generated = http.post("/generate", json={"prompt": "fox", "width": 64, "height": 64})

    assert (health["status"], health["models_loaded"]) == ("unhealthy", False)
    assert (loading.status_code, loading.json()) == (503, {"detail": "Models are not loaded: loading is in progress"})
    assert png(generated).size == (64, 64)


def test_without_load_on_startup_the_first_generation_loads_the_models() -> None:
    with KandinskyEmulator(load_on_startup=False) as emulator, httpx.Client(base_url=emulator.base_url) as http:
        before = http.get("/health").json()["models_loaded"]
        generated = http.post("/generate", json={"prompt": "fox", "width": 64, "height": 64})
        after = http.get("/health").json()["models_loaded"]

    assert (before, after) == (False, True)
    assert png(generated).size == (64, 64)


# ---- the runner -----------------------------------------------------------------------------------------


def test_the_service_is_imported_under_a_name_of_its_own_without_torch() -> None:
    assert sandbox.kandinsky.service.__name__ == "genbox_kandinsky_service.main"
    assert sandbox.kandinsky.fake_engine.__name__ == "genbox_kandinsky_service.fake_engine"
    assert {"main", "engine", "fake_engine", "torch", "diffusers"}.isdisjoint(sys.modules)


def test_requests_are_recorded_with_body_json_status_and_no_secret() -> None:
    with KandinskyEmulator(api_key=API_KEY, task_seconds=0) as emulator:
        with httpx.Client(base_url=emulator.base_url) as http:
            refused = http.post("/generate", json={"prompt": "fox", "width": 64, "height": 64})
            accepted = http.post(
                "/generate?trace=1",
                json={"prompt": "fox", "width": 64, "height": 64},
                headers={"Authorization": f"Bearer {API_KEY}"},
            )
            http.get("/health")

        recorded = emulator.recorded("POST", "/generate")
        everything = emulator.recorded()
        emulator.clear()
        cleared = (emulator.recorded(), emulator.generations)

    assert (refused.status_code, accepted.status_code) == (401, 200)
    assert [request.status for request in recorded] == [401, 200]
    assert recorded[1].json == {"prompt": "fox", "width": 64, "height": 64}
    assert recorded[1].body == b'{"prompt":"fox","width":64,"height":64}'
    assert recorded[1].query == {"trace": "1"}
    assert recorded[1].headers["Authorization"] == "<redacted>"
    assert recorded[1].authorization == f"Bearer {API_KEY}"
    assert "Authorization" not in recorded[0].headers
    assert [(request.method, request.path) for request in everything] == [
        ("POST", "/generate"),
        ("POST", "/generate"),
        ("GET", "/health"),
    ]
    assert cleared == ([], [])


def test_stop_ends_a_load_still_running_and_frees_the_port() -> None:
    emulator = KandinskyEmulator(load_seconds=600).start()
    assert emulator.engine.state == "loading"

    emulator.stop()

    assert not emulator.running
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{emulator.base_url}/health")


def test_a_taken_port_raises_at_start() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        emulator = KandinskyEmulator(port=taken.getsockname()[1])

        with pytest.raises(OSError):
            emulator.start()

    assert not emulator.running
