"""The ComfyUI emulator, exercised the way clients use ComfyUI: over real HTTP (httpx) and WebSocket.

No database: plain pytest. Prompts take a fraction of a second, so the whole file stays fast.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from PIL import Image
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect

from sandbox.comfyui import DIRECTIVES, NODE_TYPES, ComfyUIEmulator

TASK_SECONDS = 0.2
API_KEY = "comfy-proxy-key"


# --------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------


def png(width: int, height: int, color: tuple[int, int, int] = (200, 40, 10)) -> bytes:
    """A picture with a gradient band so inversion and scaling are checkable pixel by pixel."""
    image = Image.new("RGB", (width, height), color)
    for x in range(width):
        image.putpixel((x, 0), (x % 256, 255 - x % 256, 77))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def upload(client: httpx.Client, name: str, data: bytes, **form: str) -> httpx.Response:
    return client.post("/upload/image", files={"image": (name, data, "image/png")}, data=form)


def scale_graph(image: str, width: int, height: int, crop: str = "disabled") -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image, "upload": "image"}},
        "2": {
            "class_type": "ImageScale",
            "inputs": {"image": ["1", 0], "upscale_method": "bilinear", "width": width, "height": height, "crop": crop},
        },
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "scaled"}},
    }


def invert_graph(image: str) -> dict[str, Any]:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": image}},
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "inverted"}},
    }


def invert_graph_with_upload(client: httpx.Client) -> dict[str, Any]:
    upload(client, "pic.png", png(40, 30))
    return invert_graph("pic.png")


def flux_img2img_graph(image: str, text: str = "a red fox", seed: int = 42, steps: int = 20) -> dict[str, Any]:
    return {
        "1": {
            "class_type": "UNETLoader",
            "inputs": {"unet_name": "flux1-dev-fp8.safetensors", "weight_dtype": "default"},
        },
        "2": {
            "class_type": "DualCLIPLoader",
            "inputs": {
                "clip_name1": "t5xxl_fp8_e4m3fn.safetensors",
                "clip_name2": "clip_l.safetensors",
                "type": "flux",
            },
        },
        "3": {"class_type": "VAELoader", "inputs": {"vae_name": "ae.safetensors"}},
        "4": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["2", 0]}},
        "5": {"class_type": "FluxGuidance", "inputs": {"conditioning": ["4", 0], "guidance": 3.5}},
        "6": {"class_type": "LoadImage", "inputs": {"image": image}},
        "7": {"class_type": "VAEEncode", "inputs": {"pixels": ["6", 0], "vae": ["3", 0]}},
        "8": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["1", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 1.0,
                "sampler_name": "euler",
                "scheduler": "simple",
                "positive": ["5", 0],
                "negative": ["5", 0],
                "latent_image": ["7", 0],
                "denoise": 0.75,
            },
        },
        "9": {"class_type": "VAEDecode", "inputs": {"samples": ["8", 0], "vae": ["3", 0]}},
        "10": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "genbox/flux"}},
    }


def sdxl_graph(
    text: str = "a lighthouse", seed: int = 7, width: int = 512, height: int = 384, batch: int = 1, steps: int = 12
) -> dict[str, Any]:
    return {
        "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd_xl_base_1.0.safetensors"}},
        "5": {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch}},
        "6": {"class_type": "CLIPTextEncode", "inputs": {"text": text, "clip": ["4", 1]}},
        "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
        "3": {
            "class_type": "KSampler",
            "inputs": {
                "model": ["4", 0],
                "seed": seed,
                "steps": steps,
                "cfg": 7,
                "sampler_name": "dpmpp_2m",
                "scheduler": "karras",
                "positive": ["6", 0],
                "negative": ["7", 0],
                "latent_image": ["5", 0],
                "denoise": 1,
            },
        },
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
        "9": {"class_type": "SaveImage", "inputs": {"images": ["8", 0], "filename_prefix": "ComfyUI"}},
    }


def submit(client: httpx.Client, graph: dict[str, Any], client_id: str = "test-client", **extra: Any) -> str:
    response = client.post("/prompt", json={"prompt": graph, "client_id": client_id, **extra})
    assert response.status_code == 200, response.text
    return response.json()["prompt_id"]


def wait_history(client: httpx.Client, prompt_id: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/history/{prompt_id}").json()
        if body:
            return body[prompt_id]
        time.sleep(0.02)
    raise AssertionError(f"prompt {prompt_id} did not finish within {timeout} s")


def wait_state(emulator: ComfyUIEmulator, prompt_id: str, state: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while emulator.prompts[prompt_id].state != state:
        assert time.monotonic() < deadline, f"{prompt_id} never reached {state}"
        time.sleep(0.01)


def wait_event(emulator: ComfyUIEmulator, prompt_id: str, event: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while all(recorded[0] != event for recorded in list(emulator.prompts[prompt_id].events)):
        assert time.monotonic() < deadline, f"{prompt_id} never sent {event}"
        time.sleep(0.01)


def view_image(client: httpx.Client, entry: dict[str, str]) -> Image.Image:
    response = client.get("/view", params=entry)
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    return Image.open(io.BytesIO(response.content)).convert("RGB")


def ws_connect(emulator: ComfyUIEmulator, client_id: str, path: str = "/ws", **options: Any) -> ClientConnection:
    url = emulator.base_url.replace("http://", "ws://") + f"{path}?clientId={client_id}"
    return connect(url, open_timeout=5, close_timeout=2, ping_interval=None, **options)


def receive_until_done(websocket: ClientConnection, prompt_id: str, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every message up to and including ``executing`` with ``node: null`` for ``prompt_id``."""
    messages = []
    deadline = time.monotonic() + timeout
    while True:
        message = json.loads(websocket.recv(timeout=max(0.01, deadline - time.monotonic())))
        messages.append(message)
        data = message["data"]
        if message["type"] == "executing" and data["node"] is None and data["prompt_id"] == prompt_id:
            return messages


def of_prompt(messages: list[dict[str, Any]], prompt_id: str) -> list[dict[str, Any]]:
    return [message for message in messages if message["data"].get("prompt_id") == prompt_id]


@pytest.fixture(scope="module")
def shared_emulator() -> Iterator[ComfyUIEmulator]:
    with ComfyUIEmulator(task_seconds=TASK_SECONDS) as running:
        yield running


@pytest.fixture
def emulator(shared_emulator: ComfyUIEmulator) -> ComfyUIEmulator:
    """One server for the module (stopping one costs half a second), reset to a blank state for each test."""
    shared_emulator.reset()
    shared_emulator.task_seconds = TASK_SECONDS
    return shared_emulator


@pytest.fixture
def client(emulator: ComfyUIEmulator) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=emulator.base_url, timeout=10) as http:
        yield http


# --------------------------------------------------------------------------------------------------
# Weights-free workflows and image sizes
# --------------------------------------------------------------------------------------------------


def test_upload_load_scale_save_gives_a_real_scaled_png(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    assert upload(client, "photo.png", png(640, 480)).json() == {"name": "photo.png", "subfolder": "", "type": "input"}
    prompt_id = submit(client, scale_graph("photo.png", 320, 240))

    entry = wait_history(client, prompt_id)
    assert entry["status"]["status_str"] == "success" and entry["status"]["completed"] is True
    images = entry["outputs"]["3"]["images"]
    assert images == [{"filename": "scaled_00001_.png", "subfolder": "", "type": "output"}]
    picture = view_image(client, images[0])
    assert picture.size == (320, 240)
    assert picture.getpixel((160, 200)) == (200, 40, 10)  # the source's colour, not a drawn sandbox picture
    assert emulator.outputs["scaled_00001_.png"].startswith(b"\x89PNG")
    assert emulator.submitted_graphs() == [scale_graph("photo.png", 320, 240)]
    assert emulator.prompts[prompt_id].state == "success"

    second = wait_history(client, submit(client, scale_graph("photo.png", 100, 100)))
    assert second["outputs"]["3"]["images"][0]["filename"] == "scaled_00002_.png"


@pytest.mark.parametrize(
    ("width", "height", "crop", "expected"),
    [(0, 240, "disabled", (320, 240)), (160, 0, "disabled", (160, 120)), (0, 0, "disabled", (640, 480))],
)
def test_image_scale_zero_sides_keep_the_aspect_ratio(
    client: httpx.Client, width: int, height: int, crop: str, expected: tuple[int, int]
) -> None:
    upload(client, "photo.png", png(640, 480))
    entry = wait_history(client, submit(client, scale_graph("photo.png", width, height, crop)))
    assert view_image(client, entry["outputs"]["3"]["images"][0]).size == expected


def test_image_scale_center_crop(client: httpx.Client) -> None:
    upload(client, "wide.png", png(400, 100))
    entry = wait_history(client, submit(client, scale_graph("wide.png", 100, 100, "center")))
    picture = view_image(client, entry["outputs"]["3"]["images"][0])
    assert picture.size == (100, 100)
    # The centre crop starts at x=150: the gradient row shows 150.. not 0..
    assert picture.getpixel((0, 0))[0] > 100


def test_invert_keeps_the_size_and_inverts_the_pixels(client: httpx.Client) -> None:
    source = png(333, 201)
    upload(client, "in.png", source)
    entry = wait_history(client, submit(client, invert_graph("in.png")))
    inverted = view_image(client, entry["outputs"]["3"]["images"][0])
    original = Image.open(io.BytesIO(source)).convert("RGB")
    assert inverted.size == original.size == (333, 201)
    for point in [(0, 0), (100, 0), (300, 0), (10, 100), (332, 200)]:
        assert inverted.getpixel(point) == tuple(255 - channel for channel in original.getpixel(point))


def test_empty_image_blur_and_save(client: httpx.Client) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 32, "batch_size": 2, "color": 0x102030}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 3, "sigma": 1.5}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "empty"}},
    }
    entry = wait_history(client, submit(client, graph))
    images = entry["outputs"]["3"]["images"]
    assert [image["filename"] for image in images] == ["empty_00001_.png", "empty_00002_.png"]
    picture = view_image(client, images[1])
    assert picture.size == (64, 32) and picture.getpixel((30, 15)) == (0x10, 0x20, 0x30)


def test_flux_img2img_keeps_the_source_size_and_the_seed_changes_the_pixels(
    emulator: ComfyUIEmulator, client: httpx.Client
) -> None:
    upload(client, "source.png", png(640, 480))
    first = wait_history(client, submit(client, flux_img2img_graph("source.png", seed=1)))
    second = wait_history(client, submit(client, flux_img2img_graph("source.png", seed=2)))
    entry = first["outputs"]["10"]["images"][0]
    assert entry == {"filename": "flux_00001_.png", "subfolder": "genbox", "type": "output"}
    one, two = view_image(client, entry), view_image(client, second["outputs"]["10"]["images"][0])
    assert one.size == two.size == (640, 480)
    assert one.tobytes() != two.tobytes()
    assert set(emulator.outputs) == {"genbox/flux_00001_.png", "genbox/flux_00002_.png"}
    assert first["prompt"][1] in emulator.prompts and first["prompt"][2] == flux_img2img_graph("source.png", seed=1)


def test_text_to_image_uses_the_latent_size_and_batch(client: httpx.Client) -> None:
    entry = wait_history(client, submit(client, sdxl_graph(width=512, height=384, batch=2)))
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 2
    assert {view_image(client, image).size for image in images} == {(512, 384)}
    assert entry["meta"]["9"]["node_id"] == "9"


def test_video_combine_saves_an_mp4_under_gifs(client: httpx.Client) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 48, "batch_size": 4, "color": 0xFF0000}},
        "2": {
            "class_type": "VHS_VideoCombine",
            "inputs": {"images": ["1", 0], "frame_rate": 8, "filename_prefix": "clip", "format": "video/h264-mp4"},
        },
    }
    entry = wait_history(client, submit(client, graph))
    video = entry["outputs"]["2"]["gifs"][0]
    assert video["format"] == "video/h264-mp4" and video["type"] == "output"
    assert video["filename"].startswith("clip_00001") and video["filename"].endswith(".mp4")
    response = client.get("/view", params={"filename": video["filename"], "subfolder": "", "type": "output"})
    assert response.status_code == 200 and response.headers["content-type"] == "video/mp4"
    assert response.content[4:8] == b"ftyp"


# --------------------------------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------------------------------


def test_websocket_events_in_order(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "abc") as websocket:
        hello = json.loads(websocket.recv(timeout=5))
        assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}}
        prompt_id = submit(client, sdxl_graph(steps=30), client_id="abc")
        messages = receive_until_done(websocket, prompt_id)
        # History is written before the final events go out.
        assert client.get(f"/history/{prompt_id}").json()[prompt_id]["status"]["status_str"] == "success"

    events = of_prompt(messages, prompt_id)
    types = [message["type"] for message in events]
    assert types[:2] == ["execution_start", "execution_cached"]
    assert types[-2:] == ["execution_success", "executing"]
    assert events[-1]["data"] == {"node": None, "prompt_id": prompt_id}
    assert events[1]["data"]["nodes"] == []
    executing = [message["data"]["node"] for message in events[:-1] if message["type"] == "executing"]
    assert sorted(executing) == sorted(sdxl_graph())  # every node once, dependencies first
    assert executing.index("4") < executing.index("3") < executing.index("8") < executing.index("9")
    progress = [message["data"] for message in events if message["type"] == "progress"]
    assert 5 <= len(progress) <= 10
    assert all(item["max"] == 30 and item["node"] == "3" for item in progress)
    assert [item["value"] for item in progress] == sorted(item["value"] for item in progress)
    assert progress[-1]["value"] == 30
    assert types.index("progress") > executing.index("3")
    executed = next(message["data"] for message in events if message["type"] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["filename"].endswith(".png")
    assert types.index("executed") < types.index("execution_success")
    assert {message["type"] for message in messages if message not in events} <= {"status"}


def test_websocket_connecting_mid_run_gets_the_rest(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = submit(client, sdxl_graph(text="late [[slow:0.6]]"), client_id="late")
    wait_state(emulator, prompt_id, "running")
    time.sleep(0.1)
    with ws_connect(emulator, "late") as websocket:
        assert json.loads(websocket.recv(timeout=5))["data"]["sid"] == "late"
        events = of_prompt(receive_until_done(websocket, prompt_id), prompt_id)
    types = [message["type"] for message in events]
    assert "execution_start" not in types
    assert types[-2:] == ["execution_success", "executing"]


def test_events_go_only_to_the_prompts_client(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with (
        ws_connect(emulator, "mine") as mine,
        ws_connect(emulator, "mine") as twin,
        ws_connect(emulator, "other") as other,
    ):
        prompt_id = submit(client, invert_graph_with_upload(client), client_id="mine")
        first = of_prompt(receive_until_done(mine, prompt_id), prompt_id)
        second = of_prompt(receive_until_done(twin, prompt_id), prompt_id)
        assert first == second and first[-1]["data"]["node"] is None
        time.sleep(0.1)
        seen = []
        with pytest.raises(TimeoutError):
            while True:
                seen.append(json.loads(other.recv(timeout=0.2)))
        assert {message["type"] for message in seen} == {"status"}


def test_closed_sockets_leave_the_registry(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "gone") as websocket:
        websocket.recv(timeout=5)
        assert "gone" in emulator._sockets
    deadline = time.monotonic() + 5
    while "gone" in emulator._sockets:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    wait_history(client, submit(client, invert_graph_with_upload(client), client_id="gone"))


# --------------------------------------------------------------------------------------------------
# History, queue, interrupt
# --------------------------------------------------------------------------------------------------


def test_history_is_empty_until_the_prompt_finished(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = submit(client, sdxl_graph(text="wait [[slow:0.4]]"))
    assert client.get(f"/history/{prompt_id}").json() == {}
    wait_state(emulator, prompt_id, "running")
    assert client.get(f"/api/history/{prompt_id}").json() == {}
    entry = wait_history(client, prompt_id)
    number, same_id, graph, extra, outputs = entry["prompt"]
    assert (same_id, graph, extra, outputs) == (
        prompt_id,
        sdxl_graph(text="wait [[slow:0.4]]"),
        {"client_id": "test-client"},
        ["9"],
    )
    assert number == 0
    messages = entry["status"]["messages"]
    assert [message[0] for message in messages] == ["execution_start", "execution_cached", "execution_success"]
    assert messages[0][1]["prompt_id"] == prompt_id and isinstance(messages[0][1]["timestamp"], int)
    record = emulator.prompts[prompt_id]
    assert record.started is not None and record.finished is not None and record.finished - record.started >= 0.35

    other = wait_history(client, submit(client, sdxl_graph()))
    assert list(client.get("/history").json()) == [prompt_id, other["prompt"][1]]
    assert list(client.get("/history", params={"max_items": 1}).json()) == [other["prompt"][1]]
    assert client.get("/history/unknown-id").json() == {}


def test_post_history_deletes_and_clears(client: httpx.Client) -> None:
    first, second = (submit(client, sdxl_graph(seed=seed)) for seed in (1, 2))
    wait_history(client, second)
    assert client.post("/history", json={"delete": [first]}).status_code == 200
    assert list(client.get("/history").json()) == [second]
    assert client.post("/api/history", json={"clear": True}).status_code == 200
    assert client.get("/history").json() == {}


def test_undeclared_inputs_are_ignored(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    graph = invert_graph_with_upload(client)
    graph["2"]["inputs"]["extra"] = ["9", 0]  # neither declared nor existing: ComfyUI ignores it
    graph["9"] = {"class_type": "EmptyImage", "inputs": {}}  # invalid, but nothing needs it
    entry = wait_history(client, submit(client, graph))
    assert entry["status"]["status_str"] == "success"
    assert emulator.prompts[entry["prompt"][1]].order == ["1", "2", "3"]


def test_prompt_id_and_numbers(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    chosen = "0b9d5b2c-4a6e-4d54-9f0e-2f2c8d0c0001"
    first = client.post("/prompt", json={"prompt": sdxl_graph(), "client_id": "x", "prompt_id": chosen}).json()
    second = client.post("/prompt", json={"prompt": sdxl_graph(), "client_id": "x"}).json()
    assert first == {"prompt_id": chosen, "number": 0, "node_errors": {}}
    assert second["number"] == 1 and second["prompt_id"] != chosen and len(second["prompt_id"]) == 36
    wait_history(client, second["prompt_id"])
    assert emulator.prompts[chosen].client_id == "x" and emulator.prompts[chosen].number == 0


def test_one_prompt_at_a_time_in_fifo_order(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    ids = [submit(client, sdxl_graph(seed=seed)) for seed in range(3)]
    queue = client.get("/queue").json()
    assert len(queue["queue_running"]) + len(queue["queue_pending"]) == 3
    assert len(queue["queue_running"]) <= 1
    item = (queue["queue_running"] + queue["queue_pending"])[0]
    assert item[1] == ids[0] and item[2] == sdxl_graph(seed=0) and item[3] == {"client_id": "test-client"}
    assert item[4] == ["9"]
    for prompt_id in ids:
        wait_history(client, prompt_id)
    records = [emulator.prompts[prompt_id] for prompt_id in ids]
    for earlier, later in zip(records, records[1:], strict=False):
        assert earlier.finished <= later.started
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}
    assert client.get("/prompt").json() == {"exec_info": {"queue_remaining": 0}}


def test_queue_delete_and_clear(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    running = submit(client, sdxl_graph(text="hold [[slow:1]]"))
    waiting = [submit(client, sdxl_graph(seed=seed)) for seed in range(3)]
    wait_state(emulator, running, "running")
    assert client.post("/queue", json={"delete": [waiting[1]]}).status_code == 200
    assert [item[1] for item in client.get("/queue").json()["queue_pending"]] == [waiting[0], waiting[2]]
    assert client.post("/api/queue", json={"clear": True}).status_code == 200
    queue = client.get("/queue").json()
    assert queue["queue_pending"] == [] and queue["queue_running"][0][1] == running
    assert {emulator.prompts[prompt_id].state for prompt_id in waiting} == {"deleted"}
    client.post("/interrupt")
    wait_history(client, running)
    time.sleep(0.1)
    assert all(client.get(f"/history/{prompt_id}").json() == {} for prompt_id in waiting)


def test_interrupt_ends_the_running_prompt(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "stop") as websocket:
        started = time.monotonic()
        prompt_id = submit(client, sdxl_graph(text="long [[slow:5]]"), client_id="stop")
        wait_event(emulator, prompt_id, "progress")
        assert client.post("/interrupt").status_code == 200
        events = of_prompt(receive_until_done(websocket, prompt_id), prompt_id)
    assert time.monotonic() - started < 3
    assert [message["type"] for message in events][-2:] == ["execution_interrupted", "executing"]
    interrupted = events[-2]["data"]
    assert interrupted["node_type"] == "KSampler" and "4" in interrupted["executed"]
    entry = client.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert emulator.prompts[prompt_id].interrupted and emulator.prompts[prompt_id].state == "error"
    # The next prompt runs normally: the interrupt does not stick.
    assert wait_history(client, submit(client, sdxl_graph()))["status"]["status_str"] == "success"


# --------------------------------------------------------------------------------------------------
# Directives
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("directive", "exception_type", "message_part"),
    [("[[fail]]", "RuntimeError", "Emulated failure"), ("[[oom]]", "torch.OutOfMemoryError", "(out of memory)")],
)
def test_failure_directives_end_in_execution_error(
    emulator: ComfyUIEmulator, client: httpx.Client, directive: str, exception_type: str, message_part: str
) -> None:
    with ws_connect(emulator, "f") as websocket:
        prompt_id = submit(client, sdxl_graph(text=f"a cat {directive}"), client_id="f")
        events = of_prompt(receive_until_done(websocket, prompt_id), prompt_id)
    assert [message["type"] for message in events][-2:] == ["execution_error", "executing"]
    error = events[-2]["data"]
    assert error["node_id"] == "3" and error["node_type"] == "KSampler"
    assert error["exception_type"] == exception_type and message_part in error["exception_message"]
    assert set(error) >= {"executed", "traceback", "current_inputs", "current_outputs", "prompt_id"}
    assert error["current_inputs"]["seed"] == [7]
    entry = client.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1] == ["execution_error", error]
    assert entry["outputs"] == {}


def test_fail_without_sampler_fails_the_first_node(client: httpx.Client) -> None:
    upload(client, "x.png", png(20, 20))
    graph = invert_graph("x.png")
    graph["3"]["inputs"]["filename_prefix"] = "bad [[fail]]"
    entry = wait_history(client, submit(client, graph))
    error = entry["status"]["messages"][-1][1]
    assert error["node_id"] == "1" and error["exception_type"] == "RuntimeError"


def test_a_real_node_failure_is_an_execution_error(client: httpx.Client) -> None:
    upload(client, "notes.png", b"this is not a picture")
    entry = wait_history(client, submit(client, invert_graph("notes.png")))
    error = entry["status"]["messages"][-1][1]
    assert entry["status"]["status_str"] == "error"
    assert error["node_type"] == "LoadImage" and error["exception_type"] == "PIL.UnidentifiedImageError"


def test_malformed_history_after_completion(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = submit(client, sdxl_graph(text="x [[malformed]]"))
    assert client.get(f"/history/{prompt_id}").json() == {}
    wait_state(emulator, prompt_id, "success")
    response = client.get(f"/history/{prompt_id}")
    assert response.status_code == 200
    with pytest.raises(json.JSONDecodeError):
        json.loads(response.content)
    assert client.get("/history").json()[prompt_id]["status"]["status_str"] == "success"


def test_nows_sends_no_events_but_fills_history(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "quiet") as websocket:
        websocket.recv(timeout=5)
        prompt_id = submit(client, sdxl_graph(text="shh [[nows]]"), client_id="quiet")
        assert wait_history(client, prompt_id)["status"]["status_str"] == "success"
        seen = []
        with pytest.raises(TimeoutError):
            while True:
                seen.append(json.loads(websocket.recv(timeout=0.3)))
    assert of_prompt(seen, prompt_id) == []
    assert emulator.prompts[prompt_id].events[-1] == ("executing", {"node": None, "prompt_id": prompt_id})


def test_slow_directive_and_task_seconds_at_run_time(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = submit(client, sdxl_graph(text="[[slow:0.6]]"))
    wait_history(client, prompt_id)
    record = emulator.prompts[prompt_id]
    assert record.finished - record.started >= 0.55

    emulator.task_seconds = 0
    prompt_id = submit(client, sdxl_graph())
    wait_history(client, prompt_id)
    record = emulator.prompts[prompt_id]
    assert record.finished - record.started < 0.15
    assert set(DIRECTIVES) == {"fail", "oom", "malformed", "slow:S", "nows"}


# --------------------------------------------------------------------------------------------------
# Validation errors
# --------------------------------------------------------------------------------------------------


def post_prompt(client: httpx.Client, graph: Any) -> httpx.Response:
    return client.post("/prompt", json={"prompt": graph, "client_id": "v"})


def test_body_errors(client: httpx.Client) -> None:
    for response in (
        client.post("/prompt", content=b"{not json", headers={"Content-Type": "application/json"}),
        client.post("/prompt", json={"client_id": "v"}),
        client.post("/prompt", json={"prompt": "a string"}),
    ):
        assert response.status_code == 400
        body = response.json()
        assert body["error"]["type"] == "invalid_prompt" and body["node_errors"] == {}
        assert set(body["error"]) == {"type", "message", "details", "extra_info"}


def test_unknown_node_type(client: httpx.Client) -> None:
    graph = sdxl_graph()
    graph["12"] = {"class_type": "NotANode", "inputs": {}}
    body = post_prompt(client, graph).json()
    assert body["error"]["type"] == "missing_node_type"
    assert body["error"]["message"] == "Cannot execute because node NotANode does not exist."
    assert body["error"]["details"] == "Node ID '#12'"
    assert body["node_errors"] == {}


def test_no_outputs(client: httpx.Client) -> None:
    graph = sdxl_graph()
    del graph["9"]
    response = post_prompt(client, graph)
    assert response.status_code == 400
    assert response.json() == {
        "error": {"type": "prompt_no_outputs", "message": "Prompt has no outputs", "details": "", "extra_info": {}},
        "node_errors": {},
    }


def _node_error(client: httpx.Client, graph: dict[str, Any], node_id: str) -> dict[str, Any]:
    response = post_prompt(client, graph)
    assert response.status_code == 400, response.text
    body = response.json()
    assert body["error"]["type"] == "prompt_outputs_failed_validation"
    assert body["error"]["message"] == "Prompt outputs failed validation"
    entry = body["node_errors"][node_id]
    assert entry["class_type"] == graph[node_id]["class_type"]
    assert len(entry["errors"]) == 1
    return entry


def _with(graph: dict[str, Any], node_id: str, **inputs: Any) -> dict[str, Any]:
    graph[node_id]["inputs"].update(inputs)
    return graph


@pytest.mark.parametrize(
    ("node_id", "change", "kind", "details"),
    [
        ("4", {"ckpt_name": "x.safetensors"}, "value_not_in_list", "ckpt_name: 'x.safetensors' not in ["),
        ("3", {"steps": 0}, "value_smaller_than_min", "steps, 0 < 1"),
        ("3", {"cfg": 101}, "value_bigger_than_max", "cfg, 101 > 100"),
        ("3", {"seed": 2**64}, "value_bigger_than_max", "seed, "),
        ("3", {"steps": "20"}, "invalid_input_type", "steps, "),
        ("3", {"steps": 20.0}, "invalid_input_type", "steps, "),
        ("3", {"steps": True}, "invalid_input_type", "steps, "),
        ("3", {"denoise": "1"}, "invalid_input_type", "denoise, "),
        ("3", {"sampler_name": "nope"}, "value_not_in_list", "sampler_name: 'nope' not in"),
        ("5", {"width": 8}, "value_smaller_than_min", "width, 8 < 16"),
        ("3", {"model": ["99", 0]}, "bad_linked_input", "model"),
        ("3", {"model": ["4"]}, "bad_linked_input", "model"),
        ("3", {"model": ["4", 7]}, "bad_linked_input", "model"),
        ("3", {"model": ["4", 1]}, "return_type_mismatch", "model, received_type(CLIP) mismatch input_type(MODEL)"),
    ],
)
def test_input_errors(client: httpx.Client, node_id: str, change: dict[str, Any], kind: str, details: str) -> None:
    entry = _node_error(client, _with(sdxl_graph(), node_id, **change), node_id)
    error = entry["errors"][0]
    assert error["type"] == kind and error["details"].startswith(details)
    assert error["extra_info"]["input_name"] == next(iter(change))
    assert entry["dependent_outputs"] == ["9"]


def test_required_input_missing(client: httpx.Client) -> None:
    graph = sdxl_graph()
    del graph["3"]["inputs"]["seed"]
    error = _node_error(client, graph, "3")["errors"][0]
    assert error == {
        "type": "required_input_missing",
        "message": "Required input is missing",
        "details": "seed",
        "extra_info": {"input_name": "seed"},
    }


def test_float_inputs_accept_integers_and_downstream_nodes_carry_no_errors(client: httpx.Client) -> None:
    assert post_prompt(client, _with(sdxl_graph(), "3", cfg=7, denoise=1)).status_code == 200
    body = post_prompt(client, _with(sdxl_graph(), "4", ckpt_name="missing.safetensors")).json()
    assert list(body["node_errors"]) == ["4"]  # KSampler, VAEDecode and SaveImage are invalid only through it


def test_load_image_needs_an_uploaded_file(client: httpx.Client) -> None:
    error = _node_error(client, invert_graph("never-uploaded.png"), "1")["errors"][0]
    assert error["type"] == "value_not_in_list"
    assert error["details"] == "image - Invalid image file: never-uploaded.png"
    upload(client, "never-uploaded.png", png(8, 8))
    assert post_prompt(client, invert_graph("never-uploaded.png")).status_code == 200


def test_partly_valid_graph_runs_its_valid_outputs(client: httpx.Client) -> None:
    upload(client, "p.png", png(30, 20))
    graph = invert_graph("p.png")
    graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}  # filename_prefix missing
    response = post_prompt(client, graph)
    assert response.status_code == 200
    body = response.json()
    assert body["node_errors"]["4"]["errors"][0]["type"] == "required_input_missing"
    entry = wait_history(client, body["prompt_id"])
    assert list(entry["outputs"]) == ["3"] and entry["prompt"][4] == ["3"]


# --------------------------------------------------------------------------------------------------
# Upload and view
# --------------------------------------------------------------------------------------------------


def test_upload_naming_rules(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    first, second = png(10, 10), png(12, 12)
    assert upload(client, "a.png", first).json()["name"] == "a.png"
    assert upload(client, "a.png", first).json()["name"] == "a.png"  # identical content: same file
    assert upload(client, "a.png", second).json()["name"] == "a (1).png"
    assert upload(client, "a.png", png(14, 14)).json()["name"] == "a (2).png"
    assert upload(client, "a.png", second).json()["name"] == "a (1).png"
    assert upload(client, "a.png", second, overwrite="true").json()["name"] == "a.png"
    assert emulator.inputs["a.png"] == second
    assert upload(client, "a.png", first, overwrite="1").json()["name"] == "a.png"
    assert emulator.inputs["a.png"] == first

    answer = upload(client, "b.png", first, subfolder="batch", type="input").json()
    assert answer == {"name": "b.png", "subfolder": "batch", "type": "input"}
    assert client.get("/view", params={"filename": "b.png", "subfolder": "batch", "type": "input"}).content == first
    assert post_prompt(client, invert_graph("batch/b.png")).status_code == 200

    answer = upload(client, "c.png", first, type="output").json()
    assert answer["type"] == "output" and emulator.outputs["c.png"] == first


def test_upload_errors(client: httpx.Client) -> None:
    assert client.post("/upload/image", data={"overwrite": "true"}, files={"x": ("a.png", b"1")}).status_code == 400
    assert client.post("/upload/image", json={"image": "a.png"}).status_code == 400
    assert upload(client, "a.png", b"1", subfolder="../up").status_code == 400
    assert upload(client, "a.png", b"1", type="nowhere").status_code == 400


def test_view_errors(client: httpx.Client) -> None:
    upload(client, "v.png", png(5, 5))
    assert client.get("/view", params={"filename": "v.png", "type": "input"}).status_code == 200
    assert client.get("/view", params={"filename": "v.png [input]"}).status_code == 200
    assert client.get("/view", params={"type": "input"}).status_code == 400
    assert client.get("/view", params={"filename": "v.png", "type": "cache"}).status_code == 400
    for params in (
        {"filename": "../secret.png"},
        {"filename": "/etc/passwd"},
        {"filename": "a\\b.png"},
        {"filename": "v.png", "subfolder": "../input"},
        {"filename": "v.png", "subfolder": "/tmp"},
    ):
        assert client.get("/view", params={"type": "input", **params}).status_code == 403, params
    assert client.get("/view", params={"filename": "v.png", "type": "output"}).status_code == 404
    assert client.get("/view", params={"filename": "missing.png"}).status_code == 404


# --------------------------------------------------------------------------------------------------
# Server routes, /api prefix, auth
# --------------------------------------------------------------------------------------------------


def test_system_stats_and_object_info(client: httpx.Client) -> None:
    stats = client.get("/system_stats").json()
    assert stats["system"]["comfyui_version"] == "0.3.60" and stats["system"]["embedded_python"] is False
    assert {"os", "python_version", "ram_total", "ram_free"} <= set(stats["system"])
    assert stats["devices"] == [
        {
            "name": "cpu",
            "type": "cpu",
            "index": None,
            "vram_total": 0,
            "vram_free": 0,
            "torch_vram_total": 0,
            "torch_vram_free": 0,
        }
    ]
    upload(client, "listed.png", png(4, 4))
    info = client.get("/api/object_info").json()
    assert set(info) == set(NODE_TYPES)
    sampler = info["KSampler"]
    assert sampler["input"]["required"]["sampler_name"][0][0] == "euler"
    assert sampler["input"]["required"]["steps"] == ["INT", {"default": 20, "min": 1, "max": 10000}]
    assert sampler["output"] == ["LATENT"] and sampler["category"] == "sampling" and sampler["name"] == "KSampler"
    assert info["LoadImage"]["input"]["required"]["image"][0] == ["listed.png"]
    assert info["SaveImage"]["output_node"] is True
    assert list(client.get("/object_info/ImageScale").json()) == ["ImageScale"]


def test_routes_under_api_prefix_and_unknown_routes(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = client.post("/api/prompt", json={"prompt": sdxl_graph(), "client_id": "api"}).json()["prompt_id"]
    with ws_connect(emulator, "api", path="/api/ws") as websocket:
        assert json.loads(websocket.recv(timeout=5))["type"] == "status"
    assert client.get("/api/history", params={"max_items": 5}).status_code == 200
    wait_history(client, prompt_id)
    assert client.get("/api/queue").json() == {"queue_running": [], "queue_pending": []}
    assert client.get("/nope").status_code == 404
    assert client.get("/upload/image").status_code == 405
    assert client.get("/ws").status_code == 400  # not an upgrade
    assert [request.path for request in emulator.recorded("POST")][:1] == ["/api/prompt"]


def test_api_key_is_required_everywhere() -> None:
    with ComfyUIEmulator(task_seconds=TASK_SECONDS, api_key=API_KEY) as emulator:
        with httpx.Client(base_url=emulator.base_url) as anonymous:
            for method, path in [("GET", "/system_stats"), ("POST", "/prompt"), ("GET", "/api/queue"), ("GET", "/ws")]:
                response = anonymous.request(method, path)
                assert response.status_code == 401 and response.json() == {"error": "Unauthorized"}
            wrong = anonymous.get("/system_stats", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(emulator, "k")
        assert refused.value.response.status_code == 401

        headers = {"Authorization": f"Bearer {API_KEY}"}
        with httpx.Client(base_url=emulator.base_url, headers=headers) as http:
            assert http.get("/system_stats").status_code == 200
            with ws_connect(emulator, "k", additional_headers=headers) as websocket:
                websocket.recv(timeout=5)
                prompt_id = submit(http, sdxl_graph(), client_id="k")
                assert of_prompt(receive_until_done(websocket, prompt_id), prompt_id)[-1]["data"]["node"] is None
        assert emulator.recorded("GET", "/system_stats")[0].headers.get("Authorization") is None


def test_stop_while_running_is_prompt() -> None:
    emulator = ComfyUIEmulator(task_seconds=10).start()
    with httpx.Client(base_url=emulator.base_url) as http:
        prompt_id = submit(http, sdxl_graph())
    wait_state(emulator, prompt_id, "running")
    stopper = threading.Thread(target=emulator.stop)
    started = time.monotonic()
    stopper.start()
    stopper.join(timeout=10)
    assert not stopper.is_alive() and time.monotonic() - started < 5
    assert emulator.prompts[prompt_id].interrupted
