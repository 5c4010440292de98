"""The ComfyUI adapter against a real ComfyUI server, with the weights-free workflow (runs on a CPU).

Set ``COMFYUI_TEST_URL`` (e.g. ``http://127.0.0.1:8188``) to run it: ``COMFYUI_TEST_URL=… make test
ARGS=tests/e2e/test_comfyui_real_server.py``. Skipped otherwise; everything else about ComfyUI is covered
against the emulator (test_adapter_contract.py). Besides the adapter end to end, it checks what the adapter
(and the emulator) rely on: the shape of refusals, partly valid workflows, the cache, the WebSocket.

Each test uploads a picture of its own (a random colour), so that what an earlier run left in the server's
cache does not change what a test sees; the tests expect no one else to queue prompts meanwhile.
"""

import io
import json
import os
import random
import threading
import time
import uuid

import httpx
import pytest
from PIL import Image
from websockets.sync.client import connect

from apps.ai_providers.contract import Failed, ProviderError, Running, Succeeded
from apps.ai_providers.providers.comfyui.presets import comfyui_template_models
from apps.ai_providers.registry import get_adapter
from apps.ai_providers.services import provider_install
from tests.support.adapters import body_for, png

COMFYUI_TEST_URL = os.environ.get("COMFYUI_TEST_URL", "")

pytestmark = [
    pytest.mark.django_db,
    pytest.mark.skipif(not COMFYUI_TEST_URL, reason="COMFYUI_TEST_URL is not set (a real ComfyUI server to test)"),
]


def unique_png(width: int, height: int) -> bytes:
    return png(width, height, color=tuple(random.randrange(256) for _ in range(3)))


def finish(adapter, model, task_id: str, timeout: float = 120.0):
    """Poll as the pipeline does until the prompt ends; Succeeded or Failed."""
    deadline = time.monotonic() + timeout
    result = Running()
    while isinstance(result, Running) and time.monotonic() < deadline:
        time.sleep(0.5)
        result = adapter.poll(model, task_id)
    return result


def history(task_id: str) -> dict:
    return httpx.get(f"{COMFYUI_TEST_URL}/history/{task_id}").json()[task_id]


def slow_graph(prefix: str) -> dict:
    """Seconds of work on a CPU without weights: a big blur (a random colour keeps it out of the cache)."""
    return {
        "1": {
            "class_type": "EmptyImage",
            "inputs": {"width": 1024, "height": 1024, "batch_size": 1, "color": random.randrange(0xFFFFFF)},
        },
        "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "blur_radius": 31, "sigma": 5.0}},
        "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": prefix}},
    }


class TestRealComfyUI:
    @pytest.fixture
    def setup(self):
        provider, _ = provider_install(
            name="ComfyUI real", kind="comfyui", base_url=COMFYUI_TEST_URL, models=comfyui_template_models()
        )
        return get_adapter(provider), provider.models.get(name="Image scale (no weights)")

    def test_check_connection(self, setup):
        adapter, _ = setup

        assert adapter.check_connection().startswith("ComfyUI ")

    def test_the_weights_free_workflow_keeps_the_source_size(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=unique_png(160, 96))

        result = finish(adapter, model, adapter.submit(model, body, callback_url=None).task_id)

        assert isinstance(result, Succeeded), result
        content = httpx.get(result.result_urls[0], headers=adapter.download_headers()).content
        assert Image.open(io.BytesIO(content)).size == (160, 96)

    def test_the_weights_free_workflow_scales_when_asked(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=unique_png(160, 96), width=80, height=30)

        result = finish(adapter, model, adapter.submit(model, body, callback_url=None).task_id)

        assert isinstance(result, Succeeded), result
        content = httpx.get(result.result_urls[0], headers=adapter.download_headers()).content
        assert Image.open(io.BytesIO(content)).size == (80, 30)

    def test_a_bad_input_names_node_and_input(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=unique_png(32, 32))
        body["2"]["inputs"]["upscale_method"] = "no-such-method"

        with pytest.raises(ProviderError) as caught:
            adapter.submit(model, body, callback_url=None)

        assert not caught.value.retryable
        assert "node 2 (ImageScale) input 'upscale_method': Value not in list" in caught.value.message

    def test_a_missing_source_file_names_the_loader(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=unique_png(32, 32))
        body["1"]["inputs"]["image"] = f"genbox-never-uploaded-{uuid.uuid4().hex}.png"

        with pytest.raises(ProviderError) as caught:
            adapter.submit(model, body, callback_url=None)

        assert "node 1 (LoadImage) input 'image': Custom validation failed for node" in caught.value.message
        assert "Invalid image file: genbox-never-uploaded-" in caught.value.message

    def test_a_partly_valid_workflow_is_accepted_and_gives_its_result(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=unique_png(64, 48))
        body["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}  # no filename_prefix

        task_id = adapter.submit(model, body, callback_url=None).task_id
        result = finish(adapter, model, task_id)

        assert isinstance(result, Succeeded), result
        assert history(task_id)["prompt"][4] == ["3"]  # the server ran the valid output only

    def test_a_result_node_left_out_of_the_run_fails_naming_its_errors(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=unique_png(64, 48))
        del body["3"]["inputs"]["filename_prefix"]
        body["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "genbox_other"}}

        with pytest.raises(ProviderError) as caught:
            adapter.submit(model, body, callback_url=None)

        assert not caught.value.retryable
        assert "node 3 (SaveImage) input 'filename_prefix': Required input is missing" in caught.value.message

    def test_an_identical_prompt_is_served_from_the_cache_and_still_completes(self, setup):
        adapter, model = setup
        body = body_for(model, adapter, "", parent=unique_png(64, 48), width=32, height=24)

        first = finish(adapter, model, adapter.submit(model, body, callback_url=None).task_id)
        again = adapter.submit(model, body, callback_url=None).task_id
        second = finish(adapter, model, again)

        assert isinstance(first, Succeeded) and isinstance(second, Succeeded), (first, second)
        assert second.result_urls == first.result_urls  # the earlier file, reported again
        cached = history(again)["status"]["messages"][1]
        assert cached[0] == "execution_cached" and sorted(cached[1]["nodes"]) == ["1", "2", "3"]

    def test_an_execution_error_does_not_show_the_servers_paths(self, setup):
        adapter, model = setup
        name = f"genbox-not-a-picture-{uuid.uuid4().hex}.png"
        uploaded = httpx.post(
            f"{COMFYUI_TEST_URL}/upload/image", files={"image": (name, b"not a picture", "image/png")}
        ).json()
        body = body_for(model, adapter, "", parent=unique_png(32, 32))
        body["1"]["inputs"]["image"] = uploaded["name"]

        task_id = adapter.submit(model, body, callback_url=None).task_id
        result = finish(adapter, model, task_id)

        raw = history(task_id)["status"]["messages"][-1][1]["exception_message"]
        assert f"/input/{name}" in raw  # what the server says: its own path
        assert isinstance(result, Failed), result
        assert f"cannot identify image file '{name}'" in result.message and "/input/" not in result.message

    def test_a_request_the_server_crashes_on_is_a_clear_error(self, setup):
        adapter, model = setup

        with pytest.raises(ProviderError) as caught:
            adapter.submit(model, {"1": 5}, callback_url=None)  # a node that is no object

        assert not caught.value.retryable and not caught.value.ambiguous
        assert "HTTP 500" in caught.value.message and "crashed" in caught.value.message

    def test_events_of_a_prompt_without_client_id_reach_every_socket_and_name_their_prompt(self, setup):
        adapter, model = setup
        socket_url = COMFYUI_TEST_URL.replace("http", "ws", 1) + f"/ws?clientId=bystander-{uuid.uuid4().hex}"
        seen: list[dict] = []
        with connect(socket_url, open_timeout=5) as websocket:
            websocket.recv(timeout=5)  # the status greeting
            other = httpx.post(f"{COMFYUI_TEST_URL}/prompt", json={"prompt": slow_graph("genbox_slow")}).json()
            ours = adapter.submit(model, body_for(model, adapter, "", parent=unique_png(32, 32)), callback_url=None)
            listener = threading.Thread(target=lambda: seen.extend(_receive(websocket, seconds=1.5)))
            listener.start()
            progress_while_queued = adapter.poll(model, ours.task_id)
            listener.join()
        result = finish(adapter, model, ours.task_id)

        foreign = [message for message in seen if message["type"] != "status"]
        assert foreign and {message["data"]["prompt_id"] for message in foreign} == {other["prompt_id"]}
        assert {message["type"] for message in foreign} <= {"progress", "progress_state", "execution_interrupted"}
        assert progress_while_queued == Running(progress=None)
        assert isinstance(result, Succeeded), result

    def test_a_reconnecting_client_is_greeted_without_prompt_id(self, setup):
        client = f"genbox-test-{uuid.uuid4().hex}"
        prompt_id = httpx.post(
            f"{COMFYUI_TEST_URL}/prompt", json={"prompt": slow_graph("genbox_slow"), "client_id": client}
        ).json()["prompt_id"]
        deadline = time.monotonic() + 30
        while not httpx.get(f"{COMFYUI_TEST_URL}/queue").json()["queue_running"]:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # into its first node
        socket_url = COMFYUI_TEST_URL.replace("http", "ws", 1) + f"/ws?clientId={client}"
        with connect(socket_url, open_timeout=5) as websocket:
            hello = json.loads(websocket.recv(timeout=5))
            greeting = json.loads(websocket.recv(timeout=5))
        while not httpx.get(f"{COMFYUI_TEST_URL}/history/{prompt_id}").json():
            assert time.monotonic() < deadline
            time.sleep(0.2)

        assert hello["type"] == "status" and hello["data"]["sid"] == client
        assert greeting["type"] == "executing" and set(greeting["data"]) == {"node"}


def _receive(websocket, *, seconds: float) -> list[dict]:
    """The text messages a socket gets within ``seconds``."""
    messages = []
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = websocket.recv(timeout=left)
        except TimeoutError:
            break
        if isinstance(message, str):
            messages.append(json.loads(message))
    return messages
