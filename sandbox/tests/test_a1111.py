"""The AUTOMATIC1111 / Forge WebUI emulator, exercised over real HTTP with httpx (no Django database)."""

from __future__ import annotations

import base64
import io
import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image

from sandbox.a1111 import DIRECTIVES, OOM_MESSAGE, SD_MODELS, A1111Emulator
from tests.support.helpers import in_thread

TASK_SECONDS = 0.05


@pytest.fixture(scope="module")
def server() -> Iterator[A1111Emulator]:
    # One server for the module: stopping one costs half a second (the serve_forever poll interval).
    with A1111Emulator(task_seconds=TASK_SECONDS) as running:
        yield running


@pytest.fixture
def emulator(server: A1111Emulator) -> A1111Emulator:
    """The module's server, reset to its initial state."""
    server.task_seconds = TASK_SECONDS
    server.auth = None
    server.sd_model_checkpoint = SD_MODELS[0]["title"]
    server.clear()
    server.generations.clear()
    return server


@pytest.fixture
def client(emulator: A1111Emulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, timeout=10) as http:
        yield http


def b64_png(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def decode(encoded: str) -> Image.Image:
    raw = base64.b64decode(encoded)
    assert raw.startswith(b"\x89PNG\r\n\x1a\n")
    image = Image.open(io.BytesIO(raw))
    image.load()
    return image


def txt2img(client: httpx.Client, **body: Any) -> httpx.Response:
    return client.post("/sdapi/v1/txt2img", json={"prompt": "a red fox", **body})


# ---- txt2img --------------------------------------------------------------------------------------------


def test_txt2img_answers_one_512_png_with_parameters_and_info(client: httpx.Client, emulator: A1111Emulator) -> None:
    response = txt2img(client, seed=123, negative_prompt="blurry", sampler_name="Euler a")

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    data = response.json()
    assert len(data["images"]) == 1
    assert decode(data["images"][0]).size == (512, 512)
    assert data["parameters"]["prompt"] == "a red fox"
    assert data["parameters"]["seed"] == 123
    assert data["parameters"]["steps"] == 20
    assert data["parameters"]["cfg_scale"] == 7.0
    assert data["parameters"]["width"] == 512
    info = json.loads(data["info"])
    assert info["prompt"] == "a red fox"
    assert info["all_prompts"] == ["a red fox"]
    assert info["negative_prompt"] == "blurry"
    assert info["all_negative_prompts"] == ["blurry"]
    assert info["seed"] == 123
    assert info["all_seeds"] == [123]
    assert info["subseed"] == info["all_subseeds"][0]
    assert (info["width"], info["height"], info["steps"], info["cfg_scale"]) == (512, 512, 20, 7.0)
    assert info["sampler_name"] == "Euler a"
    assert info["batch_size"] == 1
    assert info["restore_faces"] is False
    assert info["sd_model_name"] == "sd_xl_base_1.0"
    assert info["sd_model_hash"] == "31e35c80fc"
    assert info["is_using_inpainting_conditioning"] is False
    assert len(info["job_timestamp"]) == 14
    assert info["infotexts"][0].startswith(
        "a red fox\nNegative prompt: blurry\nSteps: 20, Sampler: Euler a, CFG scale: 7, Seed: 123, Size: 512x512, "
    )
    assert "Model: sd_xl_base_1.0" in info["infotexts"][0]
    [generation] = emulator.generations
    assert (generation.route, generation.seed, generation.width, generation.height) == ("txt2img", 123, 512, 512)
    assert generation.body["negative_prompt"] == "blurry"
    assert generation.finished - generation.started >= TASK_SECONDS * 0.9
    assert emulator.recorded("POST", "/sdapi/v1/txt2img")[0].json["seed"] == 123


def test_txt2img_batches_give_batch_size_times_n_iter_images_with_consecutive_seeds(client: httpx.Client) -> None:
    data = txt2img(client, seed=1000, batch_size=2, n_iter=2, width=320, height=192).json()

    assert len(data["images"]) == 4
    assert {decode(image).size for image in data["images"]} == {(320, 192)}
    assert len(set(data["images"])) == 4  # every seed draws a different picture
    info = json.loads(data["info"])
    assert info["all_seeds"] == [1000, 1001, 1002, 1003]
    assert info["all_prompts"] == ["a red fox"] * 4
    assert [text.split("Seed: ")[1].split(",")[0] for text in info["infotexts"]] == ["1000", "1001", "1002", "1003"]


def test_txt2img_is_deterministic_for_a_seed_and_random_for_minus_one(
    client: httpx.Client, emulator: A1111Emulator
) -> None:
    first = txt2img(client, seed=42).json()["images"][0]
    again = txt2img(client, seed=42).json()["images"][0]
    other = txt2img(client, seed=43).json()["images"][0]
    assert first == again
    assert first != other

    random_info = json.loads(txt2img(client, seed=-1).json()["info"])
    assert random_info["seed"] >= 0
    assert emulator.generations[-1].seed == random_info["seed"]
    default_info = json.loads(txt2img(client).json()["info"])
    assert default_info["seed"] != random_info["seed"]


def test_hires_fix_answers_the_upscaled_size(client: httpx.Client) -> None:
    data = txt2img(client, width=256, height=192, enable_hr=True, hr_scale=2).json()
    assert decode(data["images"][0]).size == (512, 384)
    info = json.loads(data["info"])
    assert (info["width"], info["height"]) == (256, 192)
    assert "Hires upscale: 2" in info["infotexts"][0]

    resized = txt2img(client, width=256, height=192, enable_hr=True, hr_resize_x=400, hr_resize_y=300).json()
    assert decode(resized["images"][0]).size == (400, 300)


def test_txt2img_accepts_unknown_keys_and_numeric_strings(client: httpx.Client) -> None:
    response = txt2img(client, steps="12", alwayson_scripts={}, some_extension_flag=True, width=128, height=128)
    assert response.status_code == 200
    assert response.json()["parameters"]["steps"] == 12
    assert response.json()["parameters"]["some_extension_flag"] is True


def test_send_images_false_answers_no_images(client: httpx.Client) -> None:
    data = txt2img(client, send_images=False, width=64, height=64).json()
    assert data["images"] == []
    assert json.loads(data["info"])["all_seeds"]


def test_type_errors_answer_422_in_pydantic_v1_shape(client: httpx.Client, emulator: A1111Emulator) -> None:
    response = txt2img(client, steps="many")
    assert response.status_code == 422
    assert response.json() == {
        "detail": [{"loc": ["body", "steps"], "msg": "value is not a valid integer", "type": "type_error.integer"}]
    }

    errors = client.post(
        "/sdapi/v1/txt2img",
        json={"prompt": ["x"], "cfg_scale": "high", "width": None, "seed": "s", "sampler_name": {"a": 1}},
    ).json()["detail"]
    assert {(error["loc"][1], error["type"]) for error in errors} == {
        ("prompt", "type_error.str"),
        ("cfg_scale", "type_error.float"),
        ("seed", "type_error.integer"),
        ("sampler_name", "type_error.str"),
    }
    assert emulator.generations == []


@pytest.mark.parametrize(
    ("content", "content_type", "expected_type"),
    [
        (b"", "application/json", "value_error.missing"),
        (b"{not json", "application/json", "value_error.jsondecode"),
        (b"[1, 2]", "application/json", "type_error.dict"),
    ],
)
def test_bodies_that_are_not_json_objects_answer_422(
    client: httpx.Client, content: bytes, content_type: str, expected_type: str
) -> None:
    response = client.post("/sdapi/v1/txt2img", content=content, headers={"Content-Type": content_type})
    assert response.status_code == 422
    assert response.json()["detail"][0]["type"] == expected_type


def test_unknown_sampler_answers_404_sampler_not_found(client: httpx.Client) -> None:
    response = txt2img(client, sampler_name="Heun++ 9000")
    assert response.status_code == 404
    body = response.json()
    assert body["error"] == "HTTPException"
    assert body["detail"] == "Sampler not found"
    assert body["body"] == ""
    assert "errors" in body


def test_every_listed_sampler_is_accepted(client: httpx.Client) -> None:
    samplers = client.get("/sdapi/v1/samplers").json()
    names = [sampler["name"] for sampler in samplers]
    assert names == ["Euler", "Euler a", "DPM++ 2M", "DPM++ 2M Karras", "DPM++ SDE", "DDIM", "UniPC"]
    assert all(set(sampler) == {"name", "aliases", "options"} for sampler in samplers)
    for name in names:
        info = json.loads(txt2img(client, sampler_name=name, width=64, height=64).json()["info"])
        assert info["sampler_name"] == name


# ---- img2img and inpainting -----------------------------------------------------------------------------


def test_img2img_answers_the_requested_size_not_the_source_size(client: httpx.Client, emulator: A1111Emulator) -> None:
    source = b64_png(Image.new("RGB", (300, 200), (10, 200, 30)))

    default = client.post("/sdapi/v1/img2img", json={"prompt": "fox", "init_images": [source], "seed": 7})
    assert default.status_code == 200
    assert decode(default.json()["images"][0]).size == (512, 512)
    info = json.loads(default.json()["info"])
    assert info["denoising_strength"] == 0.75
    assert info["is_using_inpainting_conditioning"] is False
    assert default.json()["parameters"]["init_images"] is None  # include_init_images is false by default

    sized = client.post(
        "/sdapi/v1/img2img",
        json={"prompt": "fox", "init_images": [source], "width": 384, "height": 256, "denoising_strength": 0.4},
    )
    assert decode(sized.json()["images"][0]).size == (384, 256)
    assert json.loads(sized.json()["info"])["denoising_strength"] == 0.4
    assert "Denoising strength: 0.4" in json.loads(sized.json()["info"])["infotexts"][0]
    assert emulator.generations[-1].route == "img2img"

    no_source = txt2img(client, seed=7).json()["images"][0]
    assert default.json()["images"][0] != no_source  # the source is pasted into the picture


def test_img2img_without_init_images_answers_422(client: httpx.Client) -> None:
    missing = client.post("/sdapi/v1/img2img", json={"prompt": "fox"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "init_images"]
    empty = client.post("/sdapi/v1/img2img", json={"prompt": "fox", "init_images": []})
    assert empty.status_code == 422
    assert empty.json()["detail"][0]["loc"] == ["body", "init_images"]
    not_a_list = client.post("/sdapi/v1/img2img", json={"prompt": "fox", "init_images": "abc"})
    assert not_a_list.status_code == 422
    assert not_a_list.json()["detail"][0]["type"] == "type_error.list"


def test_img2img_denoising_strength_out_of_range_answers_422(client: httpx.Client) -> None:
    source = b64_png(Image.new("RGB", (64, 64)))
    response = client.post("/sdapi/v1/img2img", json={"init_images": [source], "denoising_strength": 1.5})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "denoising_strength"]


@pytest.mark.parametrize("field", ["init_images", "mask"])
def test_undecodable_images_answer_500_unidentified_image_error(client: httpx.Client, field: str) -> None:
    good = b64_png(Image.new("RGB", (64, 64)))
    garbage = base64.b64encode(b"this is not a picture").decode()
    body: dict[str, Any] = {"prompt": "fox", "init_images": [good]}
    body[field] = [garbage] if field == "init_images" else garbage
    response = client.post("/sdapi/v1/img2img", json=body)
    assert response.status_code == 500
    assert response.json()["error"] == "UnidentifiedImageError"
    assert response.json()["detail"] == "cannot identify image file"
    assert response.json()["body"] == ""


def test_inpainting_changes_only_the_white_part_of_the_mask(client: httpx.Client) -> None:
    init = Image.new("RGB", (128, 128), (12, 34, 56))
    mask = Image.new("L", (128, 128), 0)
    mask.paste(255, (0, 0, 64, 128))  # left half white: repaint it
    body = {
        "prompt": "a red fox",
        "seed": 5,
        "init_images": [b64_png(init)],
        "mask": b64_png(mask),
        "mask_blur": 0,
        "width": 128,
        "height": 128,
        "denoising_strength": 0.9,
    }
    response = client.post("/sdapi/v1/img2img", json=body)

    assert response.status_code == 200
    result = decode(response.json()["images"][0]).convert("RGB")
    assert result.size == (128, 128)
    right = result.crop((64, 0, 128, 128))
    assert right.getcolors() == [(64 * 128, (12, 34, 56))]  # untouched
    left = result.crop((0, 0, 64, 128))
    assert len(left.getcolors(64 * 128)) > 1  # the generated picture shows through
    info = json.loads(response.json()["info"])
    assert info["is_using_inpainting_conditioning"] is True
    assert info["denoising_strength"] == 0.9

    inverted = decode(
        client.post("/sdapi/v1/img2img", json={**body, "inpainting_mask_invert": 1}).json()["images"][0]
    ).convert("RGB")
    assert inverted.crop((0, 0, 64, 128)).getcolors() == [(64 * 128, (12, 34, 56))]


# ---- extras -------------------------------------------------------------------------------------------


def test_extras_upscales_the_image_by_the_factor(client: httpx.Client, emulator: A1111Emulator) -> None:
    source = Image.new("RGB", (64, 48), (200, 10, 10))
    response = client.post(
        "/sdapi/v1/extra-single-image",
        json={"image": b64_png(source), "upscaling_resize": 2, "upscaler_1": "R-ESRGAN 4x+"},
    )
    assert response.status_code == 200
    data = response.json()
    upscaled = decode(data["image"])
    assert upscaled.size == (128, 96)
    assert upscaled.convert("RGB").getpixel((64, 48)) == (200, 10, 10)
    assert data["html_info"].startswith("<p>") and "R-ESRGAN 4x+" in data["html_info"]
    assert emulator.generations[-1].route == "extra-single-image"
    assert (emulator.generations[-1].width, emulator.generations[-1].height) == (128, 96)


def test_extras_resizes_to_a_given_size_with_resize_mode_1(client: httpx.Client) -> None:
    source = b64_png(Image.new("RGB", (64, 48)))
    body = {"image": source, "resize_mode": 1, "upscaling_resize_w": 200, "upscaling_resize_h": 100}
    response = client.post("/sdapi/v1/extra-single-image", json={**body, "upscaler_1": "Lanczos"})
    assert decode(response.json()["image"]).size == (200, 100)


def test_extras_errors(client: httpx.Client) -> None:
    source = b64_png(Image.new("RGB", (64, 48)))
    unknown = client.post("/sdapi/v1/extra-single-image", json={"image": source, "upscaler_1": "Magic 16x"})
    assert unknown.status_code == 404
    assert unknown.json()["detail"] == "could not find upscaler named Magic 16x"

    missing = client.post("/sdapi/v1/extra-single-image", json={"upscaler_1": "Lanczos"})
    assert missing.status_code == 422
    assert missing.json()["detail"][0]["loc"] == ["body", "image"]

    too_big = client.post("/sdapi/v1/extra-single-image", json={"image": source, "upscaling_resize": 9})
    assert too_big.status_code == 422
    assert too_big.json()["detail"][0]["type"] == "value_error.number.not_le"

    garbage = client.post("/sdapi/v1/extra-single-image", json={"image": "bm90IGFuIGltYWdl"})
    assert garbage.status_code == 500
    assert garbage.json()["error"] == "UnidentifiedImageError"


def test_upscalers_list(client: httpx.Client) -> None:
    upscalers = client.get("/sdapi/v1/upscalers").json()
    assert [upscaler["name"] for upscaler in upscalers] == [
        "None",
        "Lanczos",
        "Nearest",
        "R-ESRGAN 4x+",
        "R-ESRGAN 4x+ Anime6B",
        "SwinIR 4x",
    ]
    assert all(set(upscaler) == {"name", "model_name", "model_path", "model_url", "scale"} for upscaler in upscalers)


# ---- progress, interrupt, one GPU ---------------------------------------------------------------------


def test_progress_is_zero_when_idle(client: httpx.Client) -> None:
    data = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
    assert data["progress"] == 0
    assert data["eta_relative"] == 0
    assert data["state"]["job_count"] == 0
    assert data["current_image"] is None
    assert set(data["state"]) >= {"skipped", "interrupted", "job", "job_count", "job_timestamp", "job_no"}


def test_progress_advances_while_a_job_runs(client: httpx.Client, emulator: A1111Emulator) -> None:
    thread, result = in_thread(lambda: txt2img(client, prompt="fox [[slow:0.6]]", steps=30, width=64, height=64))
    try:
        samples = []
        deadline = time.monotonic() + 5
        while thread.is_alive() and time.monotonic() < deadline:
            data = client.get("/sdapi/v1/progress", params={"skip_current_image": "true"}).json()
            if data["state"]["job_count"]:
                samples.append(data)
            time.sleep(0.1)
    finally:
        thread.join()
    assert result["response"].status_code == 200
    assert len(samples) >= 3
    progresses = [sample["progress"] for sample in samples]
    assert progresses == sorted(progresses)
    assert progresses[0] < progresses[-1] < 1
    assert samples[0]["eta_relative"] > samples[-1]["eta_relative"]
    assert samples[-1]["state"]["sampling_steps"] == 30
    assert samples[-1]["state"]["sampling_step"] > samples[0]["state"]["sampling_step"]
    assert client.get("/sdapi/v1/progress").json()["progress"] == 0


def test_interrupt_ends_the_running_job_early_with_its_images(client: httpx.Client, emulator: A1111Emulator) -> None:
    assert client.post("/sdapi/v1/interrupt").json() == {}  # idle: nothing to do
    thread, result = in_thread(lambda: txt2img(client, prompt="fox [[slow:5]]", width=64, height=64))
    while client.get("/sdapi/v1/progress").json()["state"]["job_count"] == 0:
        time.sleep(0.02)
    assert client.post("/sdapi/v1/interrupt").status_code == 200
    thread.join(timeout=10)
    assert result["response"].status_code == 200
    assert len(result["response"].json()["images"]) == 1
    assert emulator.generations[-1].interrupted is True


def test_generations_run_one_at_a_time_while_ping_answers(client: httpx.Client, emulator: A1111Emulator) -> None:
    emulator.task_seconds = 0.3
    threads = [in_thread(lambda: txt2img(client, width=64, height=64)) for _ in range(2)]
    time.sleep(0.05)
    assert client.get("/internal/ping").json() == {}
    ping_answered = time.time()
    for thread, _ in threads:
        thread.join()
    assert all(result["response"].status_code == 200 for _, result in threads)
    first, second = sorted(emulator.generations, key=lambda generation: generation.started)
    assert ping_answered < second.finished  # the ping did not queue behind the generations
    assert second.started >= first.finished - 0.01
    assert second.finished - first.started >= 0.55


def test_task_seconds_can_change_at_run_time(client: httpx.Client, emulator: A1111Emulator) -> None:
    emulator.task_seconds = 0.0
    txt2img(client, width=64, height=64)
    emulator.task_seconds = 0.3
    txt2img(client, width=64, height=64)
    instant, slow = (generation.finished - generation.started for generation in emulator.generations[-2:])
    assert slow >= 0.3 and instant < slow


# ---- directives -----------------------------------------------------------------------------------------


def test_directives_are_documented() -> None:
    assert set(DIRECTIVES) == {"oom", "fail", "malformed", "slow:S"}


def test_oom_directive_answers_500_out_of_memory(client: httpx.Client, emulator: A1111Emulator) -> None:
    response = txt2img(client, prompt="fox [[oom]]")
    assert response.status_code == 500
    assert response.json() == {
        "error": "OutOfMemoryError",
        "detail": OOM_MESSAGE,
        "body": "",
        "errors": OOM_MESSAGE,
    }
    assert emulator.generations[-1].outcome == "oom"


def test_fail_directive_answers_500_runtime_error(client: httpx.Client) -> None:
    response = txt2img(client, prompt="fox [[fail]]", width=64, height=64)
    assert response.status_code == 500
    assert response.json()["error"] == "RuntimeError"
    assert response.json()["detail"] == "Emulated failure"
    assert response.json()["body"] == ""


def test_malformed_directive_answers_truncated_json(client: httpx.Client) -> None:
    response = txt2img(client, prompt="fox [[malformed]]", width=64, height=64)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)


def test_slow_directive_overrides_task_seconds(client: httpx.Client) -> None:
    started = time.monotonic()
    txt2img(client, prompt="fox [[slow:0.5]]", width=64, height=64)
    assert time.monotonic() - started >= 0.5


def test_huge_batches_answer_out_of_memory(client: httpx.Client) -> None:
    response = txt2img(client, width=4096, height=4096, batch_size=2)
    assert response.status_code == 500
    assert response.json()["error"] == "OutOfMemoryError"


# ---- models, options, routes, auth ----------------------------------------------------------------------


def test_sd_models_and_options(client: httpx.Client) -> None:
    models = client.get("/sdapi/v1/sd-models").json()
    assert models[0]["model_name"] == "sd_xl_base_1.0"
    assert all(set(model) == {"title", "model_name", "hash", "sha256", "filename", "config"} for model in models)
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[0]["title"]

    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": models[1]["title"]}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"] == models[1]["title"]
    info = json.loads(txt2img(client, width=64, height=64).json()["info"])
    assert info["sd_model_name"] == models[1]["model_name"]
    override = {"sd_model_checkpoint": models[0]["model_name"]}
    info = json.loads(txt2img(client, width=64, height=64, override_settings=override).json()["info"])
    assert info["sd_model_name"] == models[0]["model_name"]

    unknown = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "nope.safetensors"})
    assert unknown.status_code == 500


def test_unknown_routes_and_methods(client: httpx.Client) -> None:
    assert client.get("/sdapi/v1/nothing").status_code == 404
    assert client.get("/sdapi/v1/txt2img").status_code == 405


def test_basic_auth_guards_every_route(emulator: A1111Emulator) -> None:
    emulator.auth = ("user", "secret")
    routes = [("GET", "/internal/ping"), ("GET", "/sdapi/v1/progress"), ("POST", "/sdapi/v1/txt2img")]
    with httpx.Client(base_url=emulator.base_url, timeout=10) as anonymous:
        for method, path in routes:
            response = anonymous.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 401
            assert response.json()["detail"] == "Not authenticated"
            assert response.headers["WWW-Authenticate"] == "Basic"
    with httpx.Client(base_url=emulator.base_url, auth=("user", "wrong"), timeout=10) as wrong:
        response = wrong.get("/internal/ping")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"] == "Basic"
    with httpx.Client(base_url=emulator.base_url, auth=("user", "secret"), timeout=10) as right:
        assert right.get("/internal/ping").json() == {}
        assert txt2img(right, width=64, height=64).status_code == 200
    assert emulator.generations
    assert {request.headers.get("Authorization") for request in emulator.requests} == {None, "<redacted>"}
