"""One contract every local-server adapter passes, each against an emulator of its protocol over real HTTP.

The adapters are driven as the pipeline drives them (``submit``/``poll`` for ComfyUI, ``run`` for the
synchronous A1111 and Kandinsky servers) with request bodies rendered from the shipped presets, so the
presets are checked against each protocol too. Assertions are on what the emulator received and on the
bytes that came back.
"""

import base64
import io
import time
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from PIL import Image

from apps.ai_providers.contract import Failed, ProviderError, Running, Succeeded
from apps.ai_providers.models import AIModel, AIProvider
from apps.ai_providers.providers.a1111.presets import A1111_MODELS
from apps.ai_providers.providers.comfyui.presets import comfyui_template_models
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from apps.ai_providers.registry import get_adapter
from apps.ai_providers.services import provider_install
from sandbox.a1111 import A1111Emulator
from sandbox.comfyui import ComfyUIEmulator
from sandbox.kandinsky import KandinskyEmulator
from tests.support.adapters import body_for, png

pytestmark = pytest.mark.django_db


@dataclass
class Harness:
    """How the contract reaches one provider kind: its emulator, presets and where it puts what it got."""

    kind: str
    emulator_class: type
    models: list[dict]
    txt2img: str
    img2img: str
    auth_argument: dict  # emulator constructor argument that turns auth on
    good_key: str
    bad_field: tuple[str, Any]  # an option the server refuses, and the word its message must name
    envelope_key: str | None = None  # where the rendered body sits in what is sent (ComfyUI: "prompt")

    def emulator(self, **arguments):
        """A new, not yet started, emulator of this protocol."""
        return self.emulator_class(task_seconds=0.2, **arguments)


HARNESSES = {
    "comfyui": Harness(
        kind="comfyui",
        emulator_class=ComfyUIEmulator,
        models=comfyui_template_models(),
        txt2img="Flux txt2img",
        img2img="Flux img2img",
        auth_argument={"api_key": "comfy-token"},
        good_key="comfy-token",
        bad_field=("steps", 0),
        envelope_key="prompt",
    ),
    "a1111": Harness(
        kind="a1111",
        emulator_class=A1111Emulator,
        models=A1111_MODELS,
        txt2img="Stable Diffusion txt2img",
        img2img="Stable Diffusion img2img",
        auth_argument={"auth": ("user", "secret")},
        good_key="user:secret",
        bad_field=("steps", "many"),
    ),
    "kandinsky": Harness(
        kind="kandinsky",
        emulator_class=KandinskyEmulator,
        models=KANDINSKY_MODELS,
        txt2img="Kandinsky 2.2",
        img2img="Kandinsky 2.2 img2img",
        auth_argument={"api_key": "kandinsky-token"},
        good_key="kandinsky-token",
        bad_field=("width", 10),
    ),
}


@pytest.fixture(params=sorted(HARNESSES), scope="module")
def harness(request):
    harness = HARNESSES[request.param]
    emulator = harness.emulator().start()
    yield harness, emulator
    emulator.stop()


def install(harness: Harness, base_url: str, api_key: str | None = None) -> AIProvider:
    provider, _ = provider_install(
        name=f"{harness.kind} under test", kind=harness.kind, base_url=base_url, api_key=api_key, models=harness.models
    )
    return provider


def drive(adapter, model: AIModel, body: dict, timeout: float = 15.0):
    """Run one generation to its end the way the pipeline does; returns Succeeded / Failed (or raises)."""
    if adapter.synchronous:
        return adapter.run(model, body, timeout=timeout)
    task_id = adapter.submit(model, body, callback_url=None).task_id
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = adapter.poll(model, task_id)
        if not isinstance(result, Running):
            return result
        time.sleep(0.1)
    raise AssertionError("the generation did not finish")


def result_image(adapter, result: Succeeded) -> Image.Image:
    content = result.content
    if content is None:
        response = httpx.get(result.result_urls[0], headers=adapter.download_headers())
        assert response.status_code == 200
        content = response.content
    return Image.open(io.BytesIO(content))


def generate(harness_and_emulator, name: str, prompt: str, **arguments):
    harness, emulator = harness_and_emulator
    provider = install(harness, emulator.base_url)
    model = provider.models.get(name=name)
    adapter = get_adapter(provider)
    return adapter, drive(adapter, model, body_for(model, adapter, prompt, **arguments))


def failure_message(harness_and_emulator, prompt: str) -> tuple[str, bool]:
    """(message, whether it is final) of a generation that must fail."""
    try:
        _, result = generate(harness_and_emulator, harness_and_emulator[0].txt2img, prompt, width=256, height=256)
    except ProviderError as error:
        return error.message, not error.retryable
    assert isinstance(result, Failed), result
    return result.message, True


# --- The contract ----------------------------------------------------------------------------------


def test_txt2img_gives_the_requested_size_and_sends_the_seed(harness):
    adapter, result = generate(harness, harness[0].txt2img, "a red fox", seed=4242, width=320, height=256)

    assert isinstance(result, Succeeded)
    image = result_image(adapter, result)
    assert (image.format, image.size) == ("PNG", (320, 256))
    assert "4242" in repr(harness[1].recorded("POST")[-1].json)  # the seed reached the server


def test_img2img_keeps_the_source_size(harness):
    parent = png(300, 200)

    adapter, result = generate(harness, harness[0].img2img, "in watercolour", parent=parent)

    assert isinstance(result, Succeeded)
    assert result_image(adapter, result).size == (300, 200)


def test_the_same_seed_gives_the_same_request_and_result(harness):
    parent = png(96, 64, color=(10, 120, 200))
    runs = [generate(harness, harness[0].img2img, "again", seed=77, parent=parent) for _ in range(2)]
    key = harness[0].envelope_key
    sent = [r.json[key] if key else r.json for r in harness[1].recorded("POST") if r.json is not None][-2:]

    assert sent[0] == sent[1]
    (adapter, first), (_, second) = runs
    assert result_image(adapter, first).tobytes() == result_image(adapter, second).tobytes()


def test_an_option_the_server_refuses_fails_naming_it(harness):
    harness_spec, emulator = harness
    provider = install(harness_spec, emulator.base_url)
    model = provider.models.get(name=harness_spec.txt2img)
    adapter = get_adapter(provider)
    body = body_for(model, adapter, "a cat", width=256, height=256)
    field, bad_value = harness_spec.bad_field
    _set_everywhere(body, field, bad_value)

    with pytest.raises(ProviderError) as caught:
        drive(adapter, model, body)

    assert not caught.value.retryable
    assert field in caught.value.message


def _set_everywhere(body: Any, key: str, value: Any) -> None:
    """Put ``value`` under every ``key`` of a nested body (a ComfyUI workflow has it inside a node)."""
    if isinstance(body, dict):
        for name, item in body.items():
            if name == key:
                body[name] = value
            else:
                _set_everywhere(item, key, value)


def test_a_crashed_generation_fails_with_the_servers_reason(harness):
    message, final = failure_message(harness, "a dog [[fail]]")

    assert final and "Emulated failure" in message


def test_out_of_memory_fails_with_a_hint(harness):
    message, final = failure_message(harness, "a huge dog [[oom]]")

    assert final
    assert "out of memory" in message.lower() and "smaller" in message


def test_a_malformed_answer_is_an_error_not_a_result(harness):
    with pytest.raises(ProviderError) as caught:
        generate(harness, harness[0].txt2img, "a bird [[malformed]]", width=256, height=256)

    assert "unreadable" in caught.value.message or "not a PNG" in caught.value.message


def test_wrong_credentials_are_refused_clearly(harness):
    harness_spec, _ = harness
    with harness_spec.emulator(**harness_spec.auth_argument) as guarded:
        provider = install(harness_spec, guarded.base_url, api_key="wrong:key")
        model = provider.models.get(name=harness_spec.txt2img)
        adapter = get_adapter(provider)
        body = body_for(model, adapter, "a cow", width=256, height=256)

        with pytest.raises(ProviderError) as caught:
            drive(adapter, model, body)
        provider.api_key = harness_spec.good_key
        result = drive(adapter, model, body)

    assert not caught.value.retryable
    assert "401" in caught.value.message and "credentials" in caught.value.message
    assert "wrong" not in caught.value.message
    assert isinstance(result, Succeeded)


def test_an_unreachable_server_is_worth_retrying(harness):
    harness_spec, emulator = harness
    closed = harness_spec.emulator().start()
    closed.stop()
    provider = install(harness_spec, closed.base_url)
    model = provider.models.get(name=harness_spec.txt2img)
    adapter = get_adapter(provider)

    with pytest.raises(ProviderError) as caught:
        drive(adapter, model, {"prompt": "x"})

    assert caught.value.retryable and not caught.value.ambiguous
    assert "cannot connect" in caught.value.message


def test_check_connection(harness):
    harness_spec, emulator = harness
    provider = install(harness_spec, emulator.base_url)

    assert get_adapter(provider).check_connection()

    provider.base_url = "http://127.0.0.1:9"
    with pytest.raises(ProviderError):
        get_adapter(provider).check_connection()


# --- What only some protocols have -----------------------------------------------------------------


@pytest.fixture
def comfyui():
    with ComfyUIEmulator(task_seconds=0.2) as emulator:
        yield emulator


def test_comfyui_workflow_gets_the_name_comfyui_gave_the_upload(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)
    comfyui.inputs["image.png"] = png(8, 8, color=(0, 0, 0))  # a different file already has our name

    body = body_for(model, adapter, "", parent=png(120, 90))
    result = drive(adapter, model, body)

    assert body["1"]["inputs"]["image"] == "image (1).png"
    assert comfyui.inputs["image (1).png"] == png(120, 90)
    assert result_image(adapter, result).size == (120, 90)


def test_comfyui_node_errors_name_node_and_input(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Flux img2img")
    adapter = get_adapter(provider)
    body = body_for(model, adapter, "x", parent=png(64, 64))
    body["1"]["inputs"]["unet_name"] = "missing.safetensors"

    with pytest.raises(ProviderError) as caught:
        adapter.submit(model, body, callback_url=None)

    assert "node 1 (UNETLoader) input 'unet_name'" in caught.value.message
    assert "missing.safetensors" in caught.value.message


def test_comfyui_progress_comes_from_the_websocket(comfyui):
    comfyui.task_seconds = 3.0
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="SDXL txt2img")
    adapter = get_adapter(provider)
    task_id = adapter.submit(model, body_for(model, adapter, "slow", width=256, height=256), callback_url=None).task_id
    time.sleep(1.0)

    result = adapter.poll(model, task_id)

    assert isinstance(result, Running)
    assert result.progress is not None and 0 < result.progress < 1
    assert comfyui.recorded("GET", "/ws")[-1].query["clientId"] == f"genbox-{task_id}"


def test_comfyui_without_websocket_still_finishes_through_history(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    provider.settings = {"progress_window_seconds": 0}
    model = provider.models.get(name="SDXL txt2img")
    adapter = get_adapter(provider)

    result = drive(adapter, model, body_for(model, adapter, "quiet", width=128, height=128))

    assert isinstance(result, Succeeded)
    assert not comfyui.recorded("GET", "/ws")


def test_a1111_reports_progress_while_it_runs_and_keeps_the_info():
    import threading

    with A1111Emulator(task_seconds=2.0) as emulator:
        provider = install(HARNESSES["a1111"], emulator.base_url)
        model = provider.models.get(name="Stable Diffusion txt2img")
        adapter = get_adapter(provider)
        outcome = {}
        runner = threading.Thread(
            target=lambda: outcome.update(result=drive(adapter, model, body_for(model, adapter, "p", seed=99)))
        )
        runner.start()
        time.sleep(1.0)
        progress = adapter.progress()
        runner.join()

    assert progress is not None and 0 < progress < 1
    assert outcome["result"].details["seed"] == 99
    assert outcome["result"].details["infotexts"]


def test_a1111_inpainting_sends_the_mask_and_upscaling_resizes():
    with A1111Emulator(task_seconds=0.1) as emulator:
        provider = install(HARNESSES["a1111"], emulator.base_url)
        adapter = get_adapter(provider)
        inpaint = provider.models.get(name="Stable Diffusion inpainting")
        mask = png(200, 100, color=(255, 255, 255))
        body = body_for(inpaint, adapter, "a hat", parent=png(200, 100), mask=mask)
        painted = drive(adapter, inpaint, body)
        upscale = provider.models.get(name="Upscale (extras)")
        upscaled = drive(adapter, upscale, body_for(upscale, adapter, "", parent=png(96, 64), scale=2))

    assert emulator.recorded("POST", "/sdapi/v1/img2img")[-1].json["mask"] == base64.b64encode(mask).decode()
    assert result_image(adapter, painted).size == (200, 100)
    assert result_image(adapter, upscaled).size == (192, 128)  # A1111 upscalers keep multiples of 8


def test_kandinsky_reports_the_seed_it_used():
    with KandinskyEmulator(task_seconds=0.1) as emulator:
        provider = install(HARNESSES["kandinsky"], emulator.base_url)
        model = provider.models.get(name="Kandinsky 2.2")
        adapter = get_adapter(provider)

        result = drive(adapter, model, body_for(model, adapter, "mountains", seed=31337, width=128, height=128))

    assert result.details == {"seed": 31337}


def test_comfyui_a_prompt_the_server_lost_fails_instead_of_running_forever(comfyui):
    comfyui.task_seconds = 2.0
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="SDXL txt2img")
    adapter = get_adapter(provider)
    body = body_for(model, adapter, "queued", width=128, height=128)
    adapter.submit(model, body, callback_url=None)  # runs first
    waiting = adapter.submit(model, body, callback_url=None).task_id

    assert isinstance(adapter.poll(model, waiting), Running)
    httpx.post(f"{comfyui.base_url}/queue", json={"delete": [waiting]})  # e.g. someone cleared the queue
    result = adapter.poll(model, waiting)

    assert isinstance(result, Failed) and "no longer has this prompt" in result.message


def test_comfyui_the_weights_free_template_scales_when_asked(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)

    kept = drive(adapter, model, body_for(model, adapter, "", parent=png(120, 90)))
    scaled = drive(adapter, model, body_for(model, adapter, "", parent=png(120, 90), width=60, height=30))

    assert model.resizes_source
    assert result_image(adapter, kept).size == (120, 90)
    assert result_image(adapter, scaled).size == (60, 30)


def test_comfyui_video_outputs_are_fetched_through_view(comfyui):
    from apps.ai_providers.providers.comfyui.presets import comfyui_model_fields

    workflow = {
        "1": {"class_type": "LoadImage", "inputs": {"image": "<<image_name>>"}},
        "2": {
            "class_type": "VHS_VideoCombine",
            "inputs": {"images": ["1", 0], "frame_rate": 8, "filename_prefix": "clip", "format": "video/h264-mp4"},
        },
    }
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = AIModel(provider=provider, name="Clip", **comfyui_model_fields(workflow, model_type="VIDEO"))
    model.full_clean()
    adapter = get_adapter(provider)

    result = drive(adapter, model, body_for(model, adapter, "", parent=png(64, 48)))

    assert isinstance(result, Succeeded) and "/view?filename=clip_" in result.result_urls[0]
    assert httpx.get(result.result_urls[0]).content[4:8] == b"ftyp"  # an MP4


def test_comfyui_a_partly_valid_workflow_is_accepted_and_gives_its_result(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)
    body = body_for(model, adapter, "", parent=png(120, 90))
    body["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}}  # no filename_prefix: invalid

    task_id = adapter.submit(model, body, callback_url=None).task_id
    result = Running()
    deadline = time.monotonic() + 15
    while isinstance(result, Running) and time.monotonic() < deadline:
        time.sleep(0.1)
        result = adapter.poll(model, task_id)

    assert comfyui.prompts[task_id].node_errors["4"]["errors"][0]["type"] == "required_input_missing"
    assert isinstance(result, Succeeded) and result_image(adapter, result).size == (120, 90)


def test_comfyui_a_result_node_left_out_of_the_run_fails_naming_its_errors(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)
    body = body_for(model, adapter, "", parent=png(120, 90))
    del body["3"]["inputs"]["filename_prefix"]  # the result node fails validation...
    body["4"] = {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "other"}}  # ...not this

    with pytest.raises(ProviderError) as caught:
        adapter.submit(model, body, callback_url=None)

    assert not caught.value.retryable and not caught.value.ambiguous
    assert "will not run node 3" in caught.value.message
    assert "node 3 (SaveImage) input 'filename_prefix': Required input is missing" in caught.value.message


def test_comfyui_an_identical_prompt_served_from_the_cache_still_completes(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)
    body = body_for(model, adapter, "", parent=png(120, 90), width=60, height=45)

    first = drive(adapter, model, body)
    second = drive(adapter, model, body)

    cached = comfyui.history[list(comfyui.history)[-1]]["status"]["messages"][1][1]["nodes"]
    assert cached == ["1", "2", "3"]  # nothing ran the second time
    assert isinstance(second, Succeeded) and second.result_urls == first.result_urls
    assert result_image(adapter, second).size == (60, 45)


def test_comfyui_progress_counts_only_events_naming_the_prompt(comfyui):
    import threading

    from apps.ai_providers.providers.comfyui.adapter import client_id

    comfyui.task_seconds = 3.0  # the weights-free workflow reports no progress of its own
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)
    task_id = adapter.submit(model, body_for(model, adapter, "", parent=png(40, 30)), callback_url=None).task_id
    deadline = time.monotonic() + 5
    while comfyui.prompts[task_id].state != "running":
        assert time.monotonic() < deadline
        time.sleep(0.01)

    def stray_events():
        """What else reaches the poll's socket: another prompt's progress, and progress naming no prompt."""
        until = time.monotonic() + 5
        while client_id(task_id) not in comfyui._sockets and time.monotonic() < until:
            time.sleep(0.01)
        socket = comfyui._sockets[client_id(task_id)]
        socket.send_json({"type": "progress", "data": {"value": 5, "max": 10, "prompt_id": "another", "node": "3"}})
        socket.send_json({"type": "progress", "data": {"value": 9, "max": 10}})

    sender = threading.Thread(target=stray_events)
    sender.start()
    result = adapter.poll(model, task_id)
    sender.join()

    assert result == Running(progress=None)


def test_comfyui_a_crash_of_the_server_is_a_clear_error(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)

    with pytest.raises(ProviderError) as caught:
        adapter.submit(model, {"1": 5}, callback_url=None)  # a node that is no object: ComfyUI answers 500

    assert not caught.value.retryable and not caught.value.ambiguous
    assert "HTTP 500" in caught.value.message and "crashed" in caught.value.message


def test_comfyui_execution_errors_do_not_show_the_servers_paths(comfyui):
    from sandbox.comfyui import SERVER_ROOT

    provider = install(HARNESSES["comfyui"], comfyui.base_url)
    model = provider.models.get(name="Image scale (no weights)")
    adapter = get_adapter(provider)
    body = body_for(model, adapter, "", parent=png(40, 30))
    comfyui.inputs[body["1"]["inputs"]["image"]] = b"not a picture"  # spoilt on the server after the upload

    result = drive(adapter, model, body)

    assert isinstance(result, Failed)
    assert "node 1 (LoadImage) failed" in result.message and "cannot identify image file 'image.png'" in result.message
    assert SERVER_ROOT not in result.message and "/input/" not in result.message


def test_comfyui_check_connection_says_a_cpu_is_no_gpu(comfyui):
    provider = install(HARNESSES["comfyui"], comfyui.base_url)

    assert "cpu (no GPU)" in get_adapter(provider).check_connection()


def test_kandinsky_waits_for_models_that_are_loading_but_not_for_a_failed_load():
    # The start-up load runs until released; then it fails, as a load from a missing folder does.
    with KandinskyEmulator(task_seconds=0.1, load_seconds=60) as emulator:
        provider = install(HARNESSES["kandinsky"], emulator.base_url)
        model = provider.models.get(name="Kandinsky 2.2")
        adapter = get_adapter(provider)
        body = body_for(model, adapter, "x", width=64, height=64)
        with pytest.raises(ProviderError) as loading:
            adapter.run(model, body, timeout=10)
        emulator.engine.load_error = "KANDINSKY_PRIOR=/models/prior: no such directory"
        emulator.engine.release()
        deadline = time.monotonic() + 5
        while emulator.engine.state == "loading" and time.monotonic() < deadline:
            time.sleep(0.01)
        with pytest.raises(ProviderError) as failed:
            adapter.run(model, body, timeout=10)

    assert loading.value.retryable
    assert not failed.value.retryable and "no such directory" in failed.value.message
    assert "POST /reload" in failed.value.message
