"""The ComfyUI emulator, exercised the way clients use ComfyUI: over real HTTP (httpx) and WebSocket.

What is asserted is what a real ComfyUI server does (its quirks included), plus the emulator's own failure
directives. No database: plain pytest. Prompts take a fraction of a second, so the whole file stays fast.
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

from sandbox.comfyui import DIRECTIVES, NODE_TYPES, SERVER_ROOT, ComfyUIEmulator

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


def submit(client: httpx.Client, graph: dict[str, Any], client_id: str | None = "test-client", **extra: Any) -> str:
    """Queue ``graph``; ``client_id=None`` queues it without a client id, as a script may."""
    body = {"prompt": graph, **extra} if client_id is None else {"prompt": graph, "client_id": client_id, **extra}
    response = client.post("/prompt", json=body)
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
        if message["type"] == "executing" and data["node"] is None and data.get("prompt_id") == prompt_id:
            return messages


def drain(websocket: ClientConnection, quiet: float = 0.3) -> list[dict[str, Any]]:
    """Every message that arrives until the socket stays quiet for ``quiet`` seconds."""
    messages = []
    while True:
        try:
            messages.append(json.loads(websocket.recv(timeout=quiet)))
        except TimeoutError:
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
# Caching of identical work
# --------------------------------------------------------------------------------------------------


def test_an_identical_prompt_is_served_from_the_cache_with_the_earlier_output(
    emulator: ComfyUIEmulator, client: httpx.Client
) -> None:
    upload(client, "same.png", png(64, 48))
    first = wait_history(client, submit(client, scale_graph("same.png", 32, 24)))
    with ws_connect(emulator, "again") as websocket:
        websocket.recv(timeout=5)
        prompt_id = submit(client, scale_graph("same.png", 32, 24), client_id="again")
        events = of_prompt(receive_until_done(websocket, prompt_id), prompt_id)
    second = client.get(f"/history/{prompt_id}").json()[prompt_id]

    assert second["status"]["status_str"] == "success"
    assert second["outputs"] == first["outputs"]  # the same file, reported again
    assert list(emulator.outputs) == ["scaled_00001_.png"]  # nothing new written
    assert [message[0] for message in second["status"]["messages"]] == [
        "execution_start",
        "execution_cached",
        "execution_success",
    ]
    assert second["status"]["messages"][1][1]["nodes"] == ["1", "2", "3"]
    types = [message["type"] for message in events]
    assert types == [
        "execution_start",
        "execution_cached",
        "executed",
        "progress_state",
        "execution_success",
        "executing",
    ]
    assert events[2]["data"]["output"] == first["outputs"]["3"]
    assert events[3]["data"]["nodes"]["3"]["state"] == "finished"


def test_a_changed_input_runs_only_the_nodes_downstream_of_it(client: httpx.Client) -> None:
    upload(client, "part.png", png(64, 48))
    wait_history(client, submit(client, scale_graph("part.png", 32, 24)))

    entry = wait_history(client, submit(client, scale_graph("part.png", 16, 12)))

    assert entry["status"]["messages"][1][1]["nodes"] == ["1"]
    assert entry["outputs"]["3"]["images"][0]["filename"] == "scaled_00002_.png"
    assert view_image(client, entry["outputs"]["3"]["images"][0]).size == (16, 12)


def test_a_different_seed_runs_the_sampler_again(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    wait_history(client, submit(client, sdxl_graph(seed=1)))
    entry = wait_history(client, submit(client, sdxl_graph(seed=2)))

    cached = entry["status"]["messages"][1][1]["nodes"]
    assert set(cached) == {"4", "5", "6", "7"} and "3" not in cached
    assert len(emulator.outputs) == 2


def test_the_cache_holds_only_what_the_previous_prompt_computed(client: httpx.Client) -> None:
    upload(client, "a.png", png(20, 10, (1, 2, 3)))
    upload(client, "b.png", png(20, 10, (9, 9, 9)))
    ids = [submit(client, invert_graph(name)) for name in ("a.png", "b.png", "a.png", "a.png")]
    cached = [wait_history(client, prompt_id)["status"]["messages"][1][1]["nodes"] for prompt_id in ids]

    assert cached == [[], [], [], ["1", "2", "3"]]


def test_node_ids_do_not_matter_to_the_cache_but_the_file_content_does(
    emulator: ComfyUIEmulator, client: httpx.Client
) -> None:
    upload(client, "c.png", png(20, 10, (1, 2, 3)))
    wait_history(client, submit(client, invert_graph("c.png")))
    renumbered = {
        "10": {"class_type": "LoadImage", "inputs": {"image": "c.png"}},
        "20": {"class_type": "ImageInvert", "inputs": {"image": ["10", 0]}},
        "30": {"class_type": "SaveImage", "inputs": {"images": ["20", 0], "filename_prefix": "inverted"}},
    }
    same = wait_history(client, submit(client, renumbered))
    upload(client, "c.png", png(20, 10, (200, 200, 200)), overwrite="true")
    changed = wait_history(client, submit(client, renumbered))

    assert same["status"]["messages"][1][1]["nodes"] == ["10", "20", "30"]
    assert same["outputs"]["30"]["images"][0]["filename"] == "inverted_00001_.png"
    assert changed["status"]["messages"][1][1]["nodes"] == []
    assert view_image(client, changed["outputs"]["30"]["images"][0]).getpixel((5, 5)) == (55, 55, 55)


def test_post_free_empties_the_cache(client: httpx.Client) -> None:
    upload(client, "f.png", png(20, 10))
    wait_history(client, submit(client, invert_graph("f.png")))

    assert client.post("/free", json={"free_memory": True}).status_code == 200
    entry = wait_history(client, submit(client, invert_graph("f.png")))

    assert entry["status"]["messages"][1][1]["nodes"] == []


def test_a_failing_prompt_fails_again_when_repeated(client: httpx.Client) -> None:
    first = wait_history(client, submit(client, sdxl_graph(text="a cat [[fail]]")))
    second = wait_history(client, submit(client, sdxl_graph(text="a cat [[fail]]")))

    assert first["status"]["status_str"] == second["status"]["status_str"] == "error"
    assert second["status"]["messages"][-1][1]["node_id"] == "3"  # the sampler never got into the cache


# --------------------------------------------------------------------------------------------------
# WebSocket
# --------------------------------------------------------------------------------------------------


def test_websocket_events_in_order(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "abc") as websocket:
        hello = json.loads(websocket.recv(timeout=5))
        assert hello == {"type": "status", "data": {"status": {"exec_info": {"queue_remaining": 0}}, "sid": "abc"}}
        prompt_id = submit(client, sdxl_graph(steps=30), client_id="abc")
        messages = receive_until_done(websocket, prompt_id)
        # The history is written before the last event goes out.
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
    sampler_starts = next(i for i, message in enumerate(events) if message["data"].get("node") == "3")
    assert types.index("progress") > sampler_starts
    executed = next(message["data"] for message in events if message["type"] == "executed")
    assert executed["node"] == "9" and executed["output"]["images"][0]["filename"].endswith(".png")
    assert types.index("executed") < types.index("execution_success")
    assert {message["type"] for message in messages if message not in events} == {"status"}


def test_progress_state_reports_every_started_node(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "states") as websocket:
        websocket.recv(timeout=5)
        prompt_id = submit(client, invert_graph_with_upload(client), client_id="states")
        events = of_prompt(receive_until_done(websocket, prompt_id), prompt_id)

    states = [message["data"]["nodes"] for message in events if message["type"] == "progress_state"]
    assert [sorted(nodes) for nodes in states] == [
        ["1"],
        ["1"],
        ["1", "2"],
        ["1", "2"],
        ["1", "2", "3"],
        ["1", "2", "3"],
    ]
    assert states[0]["1"] == {
        "value": 0.0,
        "max": 1.0,
        "state": "running",
        "node_id": "1",
        "prompt_id": prompt_id,
        "display_node_id": "1",
        "parent_node_id": None,
        "real_node_id": "1",
    }
    assert {node["state"] for node in states[-1].values()} == {"finished"}
    types = [message["type"] for message in events]
    # A node is announced running (progress_state) just before its executing event.
    assert types[2:4] == ["progress_state", "executing"]


def test_a_client_reconnecting_mid_run_is_greeted_with_the_running_node_only(
    emulator: ComfyUIEmulator, client: httpx.Client
) -> None:
    prompt_id = submit(client, sdxl_graph(text="late [[slow:0.6]]"), client_id="late")
    wait_event(emulator, prompt_id, "progress")
    with ws_connect(emulator, "late") as websocket:
        hello = json.loads(websocket.recv(timeout=5))
        greeting = json.loads(websocket.recv(timeout=5))
        events = of_prompt(receive_until_done(websocket, prompt_id), prompt_id)

    assert hello["data"]["sid"] == "late"
    assert greeting == {"type": "executing", "data": {"node": "3"}}  # no prompt_id, no display_node
    types = [message["type"] for message in events]
    assert "execution_start" not in types
    assert types[-2:] == ["execution_success", "executing"]


def test_only_the_running_prompts_client_is_greeted(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = submit(client, sdxl_graph(text="[[slow:0.6]]"), client_id="owner")
    wait_event(emulator, prompt_id, "progress")
    with ws_connect(emulator, "stranger") as websocket:
        messages = drain(websocket)

    assert "executing" not in {message["type"] for message in messages}


def test_events_of_a_prompt_go_to_its_client_only(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "mine") as mine, ws_connect(emulator, "other") as other:
        prompt_id = submit(client, invert_graph_with_upload(client), client_id="mine")
        received = of_prompt(receive_until_done(mine, prompt_id), prompt_id)
        seen = drain(other)

    assert received[-1]["data"]["node"] is None
    assert {message["type"] for message in seen} == {"status"}


def test_a_second_socket_of_a_client_takes_its_events_over(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "twin") as first:
        first.recv(timeout=5)
        with ws_connect(emulator, "twin") as second:
            second.recv(timeout=5)
            prompt_id = submit(client, invert_graph_with_upload(client), client_id="twin")
            received = of_prompt(receive_until_done(second, prompt_id), prompt_id)
            left_out = of_prompt(drain(first), prompt_id)

    assert received[-1]["data"]["node"] is None
    assert left_out == []


def test_closing_a_replaced_socket_forgets_the_client(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "gone-twice") as newer:
        newer.recv(timeout=5)
        with ws_connect(emulator, "gone-twice") as older:  # connects after: the registered one now
            older.recv(timeout=5)
        deadline = time.monotonic() + 5
        while "gone-twice" in emulator._sockets:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        prompt_id = submit(client, invert_graph_with_upload(client), client_id="gone-twice")
        wait_history(client, prompt_id)
        assert of_prompt(drain(newer), prompt_id) == []


def test_a_prompt_without_client_id_broadcasts_progress_and_interruptions_only(
    emulator: ComfyUIEmulator, client: httpx.Client
) -> None:
    with ws_connect(emulator, "bystander") as bystander:
        bystander.recv(timeout=5)
        done = submit(client, sdxl_graph(text="anyone"), client_id=None)
        wait_history(client, done)
        stopped = submit(client, sdxl_graph(text="stop me [[slow:8]]"), client_id=None)
        wait_event(emulator, stopped, "progress")
        client.post("/interrupt")
        wait_history(client, stopped)
        seen = drain(bystander)

    finished = {message["type"] for message in of_prompt(seen, done)}
    assert finished == {"progress", "progress_state"}  # no execution_start, executing, executed, success
    interrupted = [message["type"] for message in of_prompt(seen, stopped)]
    assert interrupted[-1] == "execution_interrupted" and "executing" not in interrupted


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
    assert set(entry) == {"prompt", "outputs", "status", "meta"}

    other = wait_history(client, submit(client, sdxl_graph()))
    assert list(client.get("/history").json()) == [prompt_id, other["prompt"][1]]
    assert list(client.get("/history", params={"max_items": 1}).json()) == [other["prompt"][1]]
    assert client.get("/history/unknown-id").json() == {}


def test_post_history_deletes_and_clears(client: httpx.Client) -> None:
    first, second = (submit(client, sdxl_graph(seed=seed)) for seed in (1, 2))
    wait_history(client, second)
    response = client.post("/history", json={"delete": [first]})
    assert response.status_code == 200 and response.content == b""
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
    refused = client.post("/prompt", json={"prompt": {}})
    second = client.post("/prompt", json={"prompt": sdxl_graph(seed=8), "client_id": "x"}).json()
    assert first == {"prompt_id": chosen, "number": 0, "node_errors": {}}
    assert refused.status_code == 400
    assert second["number"] == 2  # a refused prompt takes a number too
    assert second["prompt_id"] != chosen and len(second["prompt_id"]) == 36
    wait_history(client, second["prompt_id"])
    assert emulator.prompts[chosen].client_id == "x" and emulator.prompts[chosen].number == 0

    assert client.post("/prompt", json={"prompt": sdxl_graph(), "number": 7}).json()["number"] == 7.0


def test_a_number_as_prompt_id_is_taken_as_text(client: httpx.Client) -> None:
    answer = client.post("/prompt", json={"prompt": sdxl_graph(), "prompt_id": 123}).json()

    assert answer["prompt_id"] == "123"
    assert wait_history(client, "123")["prompt"][1] == "123"


def test_a_repeated_prompt_id_is_accepted_and_run_again(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    upload(client, "d.png", png(30, 20))
    for width in (12, 13):
        response = client.post("/prompt", json={"prompt": scale_graph("d.png", width, 10), "prompt_id": "twice"})
        assert response.status_code == 200
    wait_state(emulator, "twice", "success")

    assert sorted(emulator.outputs) == ["scaled_00001_.png", "scaled_00002_.png"]
    assert client.get("/history/twice").json()["twice"]["prompt"][0] == 1  # the later one


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
    assert all(client.get(f"/history/{prompt_id}").json() == {} for prompt_id in waiting)


def test_interrupt_stops_a_sampler_between_two_steps(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    with ws_connect(emulator, "stop") as websocket:
        prompt_id = submit(client, sdxl_graph(text="long [[slow:8]]", steps=40), client_id="stop")
        wait_event(emulator, prompt_id, "progress")
        response = client.post("/interrupt")
        assert response.status_code == 200 and response.content == b""
        events = of_prompt(receive_until_done(websocket, prompt_id), prompt_id)
    assert [message["type"] for message in events][-2:] == ["execution_interrupted", "executing"]
    interrupted = events[-2]["data"]
    assert interrupted["node_type"] == "KSampler" and "4" in interrupted["executed"]
    steps = [message["data"]["value"] for message in events if message["type"] == "progress"]
    assert steps[-1] < 40  # stopped inside the sampler
    entry = client.get(f"/history/{prompt_id}").json()[prompt_id]
    assert entry["status"]["status_str"] == "error" and entry["status"]["completed"] is False
    assert entry["status"]["messages"][-1][0] == "execution_interrupted"
    assert emulator.prompts[prompt_id].interrupted and emulator.prompts[prompt_id].state == "error"
    # The next prompt runs normally: the interrupt does not stick.
    assert wait_history(client, submit(client, sdxl_graph()))["status"]["status_str"] == "success"


def test_interrupt_lets_any_other_node_finish_and_stops_before_the_next(
    emulator: ComfyUIEmulator, client: httpx.Client
) -> None:
    emulator.task_seconds = 1.5  # 0.5 s per node
    prompt_id = submit(client, invert_graph_with_upload(client))
    wait_event(emulator, prompt_id, "executing")
    client.post("/interrupt")
    entry = wait_history(client, prompt_id)

    interrupted = entry["status"]["messages"][-1]
    assert interrupted[0] == "execution_interrupted"
    assert interrupted[1]["node_id"] == "2" and interrupted[1]["executed"] == ["1"]


def test_interrupt_for_another_prompt_id_changes_nothing(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = submit(client, sdxl_graph(text="[[slow:0.5]]"))
    wait_state(emulator, prompt_id, "running")
    client.post("/interrupt", json={"prompt_id": "someone-else"})

    assert wait_history(client, prompt_id)["status"]["status_str"] == "success"


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


def test_a_real_node_failure_is_an_execution_error_naming_the_servers_path(client: httpx.Client) -> None:
    upload(client, "notes.png", b"this is not a picture")
    entry = wait_history(client, submit(client, invert_graph("notes.png")))
    error = entry["status"]["messages"][-1][1]
    assert entry["status"]["status_str"] == "error"
    assert error["node_type"] == "LoadImage" and error["exception_type"] == "PIL.UnidentifiedImageError"
    assert error["exception_message"] == f"cannot identify image file '{SERVER_ROOT}/input/notes.png'\n"


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
        seen = drain(websocket)
    assert of_prompt(seen, prompt_id) == []
    assert emulator.prompts[prompt_id].events[-1] == ("executing", {"node": None, "prompt_id": prompt_id})


def test_slow_directive_keeps_a_prompt_running(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = submit(client, sdxl_graph(text="[[slow:8]]"))
    wait_event(emulator, prompt_id, "progress")

    assert client.get(f"/history/{prompt_id}").json() == {}
    assert client.get("/queue").json()["queue_running"][0][1] == prompt_id
    client.post("/interrupt")
    assert wait_history(client, prompt_id)["status"]["messages"][-1][0] == "execution_interrupted"
    assert set(DIRECTIVES) == {"fail", "oom", "malformed", "slow:S", "nows"}


def test_task_seconds_is_read_when_a_prompt_runs(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    emulator.task_seconds = 8
    prompt_id = submit(client, sdxl_graph())
    wait_event(emulator, prompt_id, "progress")

    assert client.get("/queue").json()["queue_running"][0][1] == prompt_id
    client.post("/interrupt")
    assert wait_history(client, prompt_id)["status"]["status_str"] == "error"


# --------------------------------------------------------------------------------------------------
# Validation errors
# --------------------------------------------------------------------------------------------------


def post_prompt(client: httpx.Client, graph: Any) -> httpx.Response:
    return client.post("/prompt", json={"prompt": graph, "client_id": "v"})


def assert_server_error(response: httpx.Response) -> None:
    """ComfyUI's answer to a request its handler crashed on."""
    assert response.status_code == 500
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text.startswith("500 Internal Server Error")


def test_requests_comfyui_cannot_parse_are_a_server_error(client: httpx.Client) -> None:
    assert_server_error(client.post("/prompt", content=b"{not json", headers={"Content-Type": "application/json"}))
    assert_server_error(client.post("/prompt", json={"prompt": "a string"}))
    assert_server_error(client.post("/prompt", json={"prompt": {"1": 5}}))
    assert_server_error(client.post("/prompt", json=42))
    assert client.get("/queue").json() == {"queue_running": [], "queue_pending": []}


def test_a_body_without_prompt_is_no_prompt(client: httpx.Client) -> None:
    for body in ({}, {"client_id": "v"}, [1]):
        response = client.post("/prompt", json=body)
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/json; charset=utf-8"
        assert response.json() == {
            "error": {
                "type": "no_prompt",
                "message": "No prompt provided",
                "details": "No prompt provided",
                "extra_info": {},
            },
            "node_errors": {},
        }


def test_unknown_node_type_is_an_invalid_prompt(client: httpx.Client) -> None:
    graph = sdxl_graph()
    graph["12"] = {"class_type": "NotANode", "inputs": {}}
    body = post_prompt(client, graph).json()
    assert body == {
        "error": {
            "type": "invalid_prompt",
            "message": "Cannot execute because node NotANode does not exist.",
            "details": "Node ID '#12'",
            "extra_info": {},
        },
        "node_errors": {},
    }
    missing = post_prompt(client, {"1": {"inputs": {}}}).json()["error"]
    assert missing["type"] == "invalid_prompt" and "missing the class_type property" in missing["message"]


def test_no_outputs(client: httpx.Client) -> None:
    graph = sdxl_graph()
    del graph["9"]
    for prompt in (graph, []):
        response = post_prompt(client, prompt)
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
        ("3", {"steps": 0}, "value_smaller_than_min", "steps"),
        ("3", {"cfg": 101}, "value_bigger_than_max", "cfg"),
        ("3", {"seed": 2**64}, "value_bigger_than_max", "seed"),
        ("3", {"steps": "many"}, "invalid_input_type", "steps, many, invalid literal for int() with base 10: 'many'"),
        ("3", {"steps": None}, "invalid_input_type", "steps, None, int() argument must be"),
        ("3", {"denoise": "x"}, "invalid_input_type", "denoise, x, could not convert string to float: 'x'"),
        ("3", {"sampler_name": "nope"}, "value_not_in_list", "sampler_name: 'nope' not in"),
        ("5", {"width": 8}, "value_smaller_than_min", "width"),
        ("3", {"model": ["4"]}, "bad_linked_input", "model"),
        ("3", {"model": ["4", 1]}, "return_type_mismatch", "model, received_type(CLIP) mismatch input_type(MODEL)"),
    ],
)
def test_input_errors(client: httpx.Client, node_id: str, change: dict[str, Any], kind: str, details: str) -> None:
    entry = _node_error(client, _with(sdxl_graph(), node_id, **change), node_id)
    error = entry["errors"][0]
    assert error["type"] == kind and error["details"].startswith(details)
    assert error["extra_info"]["input_name"] == next(iter(change))
    assert entry["dependent_outputs"] == ["9"]


def test_below_minimum_names_only_the_input(client: httpx.Client) -> None:
    error = _node_error(client, _with(sdxl_graph(), "5", width=8), "5")["errors"][0]
    assert error == {
        "type": "value_smaller_than_min",
        "message": "Value 8 smaller than min of 16",
        "details": "width",
        "extra_info": {
            "input_name": "width",
            "input_config": ["INT", NODE_TYPES["EmptyLatentImage"].required["width"][1]],
            "received_value": 8,
        },
    }


@pytest.mark.parametrize(
    ("change", "exception_type", "details"),
    [
        ({"model": ["99", 0]}, "KeyError", "'99'"),
        ({"model": ["4", 7]}, "IndexError", "tuple index out of range"),
        ({"model": ["4", "0"]}, "TypeError", "tuple indices must be integers or slices, not str"),
    ],
)
def test_links_to_missing_nodes_or_outputs_fail_the_inner_validation(
    client: httpx.Client, change: dict[str, Any], exception_type: str, details: str
) -> None:
    # The sampler's bad link breaks the validation of the node linking to the sampler (VAEDecode's
    # "samples"); ComfyUI files the error under the sampler with the linking node's input.
    entry = _node_error(client, _with(sdxl_graph(), "3", **change), "3")
    error = entry["errors"][0]
    assert error["type"] == "exception_during_inner_validation" and error["details"] == details
    assert error["extra_info"]["exception_type"] == exception_type
    assert error["extra_info"]["input_name"] == "samples" and error["extra_info"]["linked_node"] == ["3", 0]


def test_an_output_node_with_a_bad_link_fails_its_own_validation(client: httpx.Client) -> None:
    graph = {"2": {"class_type": "SaveImage", "inputs": {"images": ["9", 0], "filename_prefix": "x"}}}
    body = post_prompt(client, graph).json()
    assert body["error"]["details"] == "Exception when validating node: '9'"
    assert body["node_errors"]["2"]["errors"][0]["type"] == "exception_during_validation"


def test_a_dependency_cycle_fails_without_node_errors(client: httpx.Client) -> None:
    graph = {
        "2": {"class_type": "ImageInvert", "inputs": {"image": ["3", 0]}},
        "3": {"class_type": "ImageInvert", "inputs": {"image": ["2", 0]}},
        "4": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "cycle"}},
    }
    response = post_prompt(client, graph)
    assert response.status_code == 400
    assert response.json()["error"]["type"] == "prompt_outputs_failed_validation"
    assert response.json()["node_errors"] == {}


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


@pytest.mark.parametrize(
    ("width", "expected"), [("64", 64), (64.0, 64), (64.9, 64), (True, 1)], ids=["text", "float", "fraction", "bool"]
)
def test_widget_values_are_converted_like_comfyui_converts_them(
    client: httpx.Client, width: Any, expected: int
) -> None:
    graph = {
        "1": {"class_type": "EmptyImage", "inputs": {"width": width, "height": 8, "batch_size": 1, "color": 0}},
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": "1", "sigma": "1"}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": 42}},
    }
    entry = wait_history(client, submit(client, graph))
    image = entry["outputs"]["3"]["images"][0]
    assert image["filename"] == "42_00001_.png"
    assert view_image(client, image).size == (expected, 8)


def test_float_inputs_accept_integers_and_downstream_nodes_carry_no_errors(client: httpx.Client) -> None:
    assert post_prompt(client, _with(sdxl_graph(), "3", cfg=7, denoise=1)).status_code == 200
    body = post_prompt(client, _with(sdxl_graph(), "4", ckpt_name="missing.safetensors")).json()
    assert list(body["node_errors"]) == ["4"]  # KSampler, VAEDecode and SaveImage are invalid only through it


def test_load_image_needs_an_uploaded_file(client: httpx.Client) -> None:
    error = _node_error(client, invert_graph("never-uploaded.png"), "1")["errors"][0]
    assert error == {
        "type": "custom_validation_failed",
        "message": "Custom validation failed for node",
        "details": "image - Invalid image file: never-uploaded.png",
        "extra_info": {"input_name": "image"},
    }
    upload(client, "never-uploaded.png", png(8, 8))
    assert post_prompt(client, invert_graph("never-uploaded.png")).status_code == 200


def test_partly_valid_graph_is_accepted_and_runs_its_valid_outputs(client: httpx.Client) -> None:
    upload(client, "p.png", png(30, 20))
    graph = invert_graph("p.png")
    graph["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}  # filename_prefix missing
    response = post_prompt(client, graph)
    assert response.status_code == 200
    body = response.json()
    assert body["node_errors"] == {
        "4": {
            "errors": [
                {
                    "type": "required_input_missing",
                    "message": "Required input is missing",
                    "details": "filename_prefix",
                    "extra_info": {"input_name": "filename_prefix"},
                }
            ],
            "dependent_outputs": ["4"],
            "class_type": "SaveImage",
        }
    }
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


def test_upload_errors_have_empty_bodies(client: httpx.Client) -> None:
    for response in (
        client.post("/upload/image", data={"overwrite": "true"}, files={"x": ("a.png", b"1")}),
        client.post("/upload/image", json={"image": "a.png"}),
        upload(client, "a.png", b"1", subfolder="../up"),
        upload(client, "a.png", b"1", subfolder="/tmp"),
    ):
        assert (response.status_code, response.content) == (400, b"")
    assert_server_error(upload(client, "a.png", b"1", type="nowhere"))


def test_view_errors_have_empty_bodies(client: httpx.Client) -> None:
    upload(client, "v.png", png(5, 5))
    assert client.get("/view", params={"filename": "v.png", "type": "input"}).status_code == 200
    assert client.get("/view", params={"filename": "v.png [input]"}).status_code == 200
    # A subfolder that leads back into the same folder is still inside it.
    assert (
        client.get("/view", params={"filename": "v.png", "type": "input", "subfolder": "../input"}).status_code == 200
    )
    for params, status in (
        ({"type": "input"}, 404),
        ({"filename": "v.png", "type": "cache"}, 400),
        ({"filename": "../secret.png", "type": "input"}, 400),
        ({"filename": "/etc/passwd", "type": "input"}, 400),
        ({"filename": "a\\b.png", "type": "input"}, 404),
        ({"filename": "v.png", "type": "input", "subfolder": "../output"}, 403),
        ({"filename": "v.png", "type": "input", "subfolder": "/tmp"}, 403),
        ({"filename": "v.png", "type": "output"}, 404),
        ({"filename": "missing.png"}, 404),
    ):
        response = client.get("/view", params=params)
        assert (response.status_code, response.content) == (status, b""), params


def test_view_names_the_file(client: httpx.Client) -> None:
    upload(client, "named.png", png(5, 5))
    response = client.get("/view", params={"filename": "named.png", "type": "input"})
    assert response.headers["content-disposition"] == 'filename="named.png"'


# --------------------------------------------------------------------------------------------------
# Server routes, /api prefix, auth
# --------------------------------------------------------------------------------------------------


def test_system_stats_and_object_info(client: httpx.Client) -> None:
    stats = client.get("/system_stats").json()
    system = stats["system"]
    assert system["comfyui_version"] == "0.3.60" and system["embedded_python"] is False
    assert {
        "os",
        "python_version",
        "ram_total",
        "ram_free",
        "required_frontend_version",
        "installed_templates_version",
        "required_templates_version",
    } <= set(system)
    [device] = stats["devices"]
    assert (device["name"], device["type"], device["index"]) == ("cpu", "cpu", None)
    assert device["vram_total"] == device["torch_vram_total"] == system["ram_total"] > 0  # on a CPU: the RAM
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
    assert client.get("/object_info/Nope").json() == {}


def test_routes_under_api_prefix_and_unknown_routes(emulator: ComfyUIEmulator, client: httpx.Client) -> None:
    prompt_id = client.post("/api/prompt", json={"prompt": sdxl_graph(), "client_id": "api"}).json()["prompt_id"]
    with ws_connect(emulator, "api", path="/api/ws") as websocket:
        assert json.loads(websocket.recv(timeout=5))["type"] == "status"
    assert client.get("/api/history", params={"max_items": 5}).status_code == 200
    wait_history(client, prompt_id)
    assert client.get("/api/queue").json() == {"queue_running": [], "queue_pending": []}
    assert [request.path for request in emulator.recorded("POST")][:1] == ["/api/prompt"]

    # ComfyUI's web app answers every other GET: an empty 404, POST-only routes included.
    for path in ("/nope", "/upload/image", "/interrupt"):
        response = client.get(path)
        assert (response.status_code, response.content) == (404, b""), path
    for method, path in (("PUT", "/prompt"), ("DELETE", "/queue"), ("POST", "/nope")):
        response = client.request(method, path)
        assert response.status_code == 405 and response.headers["content-type"] == "text/plain; charset=utf-8"
        assert response.text == "405: Method Not Allowed"
    not_upgraded = client.get("/ws")
    assert not_upgraded.status_code == 400 and not_upgraded.text.startswith("No WebSocket UPGRADE hdr")


def test_post_answers_without_body(client: httpx.Client) -> None:
    for path, body in (("/interrupt", {}), ("/queue", {"clear": True}), ("/history", {"clear": True}), ("/free", {})):
        response = client.post(path, json=body)
        assert (response.status_code, response.content) == (200, b""), path
    assert client.post("/interrupt", content=b"not json").status_code == 200  # read leniently
    assert_server_error(client.post("/queue", content=b"not json"))
    assert_server_error(client.get("/history", params={"max_items": "many"}))


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


def test_stop_does_not_wait_for_the_running_prompt() -> None:
    # A node that would take minutes, and not a sampler: /interrupt would let it finish, stop() does not.
    emulator = ComfyUIEmulator(task_seconds=600).start()
    with httpx.Client(base_url=emulator.base_url) as http:
        upload(http, "still.png", png(8, 8))
        prompt_id = submit(http, invert_graph("still.png"))
    wait_state(emulator, prompt_id, "running")
    stopper = threading.Thread(target=emulator.stop)
    stopper.start()
    stopper.join(timeout=30)
    assert not stopper.is_alive()
    assert emulator.prompts[prompt_id].interrupted
