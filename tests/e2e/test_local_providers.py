"""img2img through every local provider end to end: the API, a real Celery worker (GPU queue included),
PostgreSQL, S3 over HTTP and each server's sandbox over HTTP.

The rules checked (docs/providers.md, "img2img"): the output keeps the source's size and a different requested
size is noted, not applied; the seed is chosen, sent and stored; sending the stored options back
reproduces the request exactly; a missing denoise is 0.65; the source is validated before anything is sent.
"""

import io
import time

import pytest
from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from PIL import Image

from apps.ai_providers.models import AIModel
from apps.ai_providers.providers.a1111.presets import A1111_MODELS
from apps.ai_providers.providers.comfyui.presets import comfyui_template_models
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from apps.ai_providers.services import provider_install
from apps.ai_providers.templating import template_variables
from apps.assets.models import Asset
from apps.generations.start import DENOISE_PARAMETERS
from sandbox.a1111 import A1111Emulator
from sandbox.comfyui import ComfyUIEmulator
from sandbox.kandinsky import KandinskyEmulator
from tests.support import media_samples as samples
from tests.support.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SOURCE_SIZE = (300, 200)
# provider kind → (sandbox server, presets, img2img model, its denoise option, whether its request carries a
# seed: the weights-free workflow has no sampler, so neither a denoise nor a seed to send)
LOCAL = {
    "comfyui": (ComfyUIEmulator, comfyui_template_models, "Flux img2img", "denoise", True),
    "comfyui-no-weights": (ComfyUIEmulator, comfyui_template_models, "Image scale (no weights)", None, False),
    "a1111": (A1111Emulator, lambda: A1111_MODELS, "Stable Diffusion img2img", "denoising_strength", True),
    "kandinsky": (KandinskyEmulator, lambda: KANDINSKY_MODELS, "Kandinsky 2.2 img2img", "strength", True),
}


@pytest.fixture(scope="module")
def emulators():
    started = {}
    for kind, (emulator_class, *_) in LOCAL.items():
        started[kind] = emulator_class(task_seconds=0.3).start()
    yield started
    for emulator in started.values():
        emulator.stop()


def install(kind: str, base_url: str) -> AIModel:
    _, presets, model_name, *_ = LOCAL[kind]
    provider, _ = provider_install(
        name=f"{kind} e2e", kind=kind.split("-")[0], base_url=base_url, models=presets(), is_sandbox=True
    )
    return provider.models.get(name=model_name)


def upload(api, box, content: bytes, name: str = "source.png") -> dict:
    response = api.post(
        f"/api/boxes/{box.id}/upload/",
        {"file": SimpleUploadedFile(name, content), "prompt_text": "source"},
        format="multipart",
    )
    assert response.status_code == 201, response.content
    return response.json()


def generate(api, box, model: AIModel, **body) -> dict:
    response = api.post(
        f"/api/boxes/{box.id}/generate/", {"prompt": "in watercolour", "ai_model_id": model.id, **body}, format="json"
    )
    assert response.status_code == 201, response.content
    return response.json()


def stored_image(bucket, asset: Asset) -> Image.Image:
    stored = bucket.get_object(Bucket=settings.AWS_STORAGE_BUCKET_NAME, Key=asset.file.name)
    return Image.open(io.BytesIO(stored["Body"].read()))


@pytest.mark.parametrize("kind", sorted(LOCAL))
def test_img2img_keeps_the_source_size_and_its_seed_reproduces_the_request(
    kind, api, box, emulators, celery_worker, bucket
):
    model = install(kind, emulators[kind].base_url)
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))

    first = wait_for(generate(api, box, model, parent_asset_id=parent["id"], generation_config={})["id"])
    # Sending the stored options back — seed included — must send the very same request.
    again = wait_for(
        generate(api, box, model, parent_asset_id=parent["id"], generation_config=first.generation_config)["id"]
    )

    assert first.status == again.status == Asset.Status.COMPLETED, (first.error_message, again.error_message)
    assert (first.width, first.height) == SOURCE_SIZE
    assert stored_image(bucket, first).size == SOURCE_SIZE
    assert isinstance(first.generation_config["seed"], int)
    *_, denoise, sends_seed = LOCAL[kind]
    assert ("seed" in template_variables(model.request_schema)[0]) == sends_seed
    assert (str(first.generation_config["seed"]) in str(first.request_payload)) == sends_seed
    assert again.request_payload == first.request_payload
    assert again.generation_config == first.generation_config
    applied_denoise = {
        key: first.generation_config[key] for key in DENOISE_PARAMETERS if key in first.generation_config
    }
    assert applied_denoise == ({denoise: 0.65} if denoise else {})
    assert first.parent_asset_id == parent["id"]


@pytest.mark.parametrize(
    ("kind", "has_size_options"), [("a1111", True), ("kandinsky", True), ("comfyui", False)]
)  # ComfyUI's img2img template has no size options: a requested size is still ignored and noted
def test_a_requested_size_is_ignored_for_img2img_and_noted(
    kind, has_size_options, api, box, emulators, celery_worker, bucket
):
    model = install(kind, emulators[kind].base_url)
    assert ("width" in model.parameters_schema) == has_size_options
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))
    config = {"width": 1024, "height": 768}

    asset = wait_for(generate(api, box, model, parent_asset_id=parent["id"], generation_config=config)["id"])

    assert asset.status == Asset.Status.COMPLETED, asset.error_message
    assert (asset.width, asset.height) == SOURCE_SIZE
    sizes = {key: asset.generation_config[key] for key in ("width", "height") if key in asset.generation_config}
    assert sizes == ({"width": SOURCE_SIZE[0], "height": SOURCE_SIZE[1]} if has_size_options else {})
    assert asset.metadata["ignored_options"] == {
        "width": 1024,
        "height": 768,
        "reason": "img2img keeps the source image's size, 300×200",
    }


def test_a1111_seed_and_info_are_stored_on_the_asset(api, box, emulators, celery_worker, bucket):
    model = install("a1111", emulators["a1111"].base_url)
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))

    asset = wait_for(generate(api, box, model, parent_asset_id=parent["id"], generation_config={"seed": 5})["id"])

    assert asset.status == Asset.Status.COMPLETED, asset.error_message
    info = asset.metadata["provider_info"]
    assert info["seed"] == 5 and info["denoising_strength"] == 0.65
    assert "Seed: 5" in info["infotexts"][0]
    assert "[base64 file:" in asset.request_payload["init_images"][0]  # not megabytes of base64 in the row


def test_a1111_inpainting_with_a_mask_asset(api, box, emulators, celery_worker, bucket):
    provider_model = install("a1111", emulators["a1111"].base_url)
    inpaint = provider_model.provider.models.get(name="Stable Diffusion inpainting")
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))
    mask = upload(api, box, samples.png_bytes(*SOURCE_SIZE), name="mask.png")

    asset = wait_for(generate(api, box, inpaint, parent_asset_id=parent["id"], mask_asset_id=mask["id"])["id"])

    assert asset.status == Asset.Status.COMPLETED, asset.error_message
    assert asset.metadata["mask_asset_id"] == mask["id"]
    sent = emulators["a1111"].recorded("POST", "/sdapi/v1/img2img")[-1].json
    assert sent["mask"] and sent["init_images"][0]


def test_a_mask_of_another_size_is_refused(api, box, emulators):
    inpaint = install("a1111", emulators["a1111"].base_url).provider.models.get(name="Stable Diffusion inpainting")
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))
    mask = upload(api, box, samples.png_bytes(64, 64), name="mask.png")

    response = api.post(
        f"/api/boxes/{box.id}/generate/",
        {"prompt": "x", "ai_model_id": inpaint.id, "parent_asset_id": parent["id"], "mask_asset_id": mask["id"]},
        format="json",
    )

    assert response.status_code == 400
    assert "mask_asset_id" in response.json()["error"]["details"]


def test_a_source_over_4096_pixels_is_refused_before_anything_is_sent(api, box, emulators, settings):
    settings.GENBOX_IMAGE_MAX_SIDE = 8192  # uploads stop at 4096 by default; a generated result may be larger
    model = install("kandinsky", emulators["kandinsky"].base_url)
    parent = upload(api, box, samples.png_bytes(4100, 16))
    before = len(emulators["kandinsky"].requests)

    response = api.post(
        f"/api/boxes/{box.id}/generate/",
        {"prompt": "x", "ai_model_id": model.id, "parent_asset_id": parent["id"]},
        format="json",
    )

    assert response.status_code == 400
    assert "4096" in str(response.json()["error"]["details"]["parent_asset_id"])
    assert len(emulators["kandinsky"].requests) == before


def test_an_out_of_memory_generation_fails_with_a_readable_reason(api, box, emulators, celery_worker):
    model = install("a1111", emulators["a1111"].base_url)
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))

    asset = wait_for(
        api.post(
            f"/api/boxes/{box.id}/generate/",
            {"prompt": "huge [[oom]]", "ai_model_id": model.id, "parent_asset_id": parent["id"]},
            format="json",
        ).json()["id"]
    )

    assert asset.status == Asset.Status.FAILED
    assert "CUDA out of memory" in asset.error_message and "smaller" in asset.error_message
    assert asset.submit_attempts == 1  # a crash is not retried


def test_variants_through_comfyui_have_distinct_seeds(api, box, emulators, celery_worker, bucket):
    model = install("comfyui", emulators["comfyui"].base_url)
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))

    answer = generate(api, box, model, parent_asset_id=parent["id"], variants=3)

    assets = [wait_for(item["id"]) for item in answer["assets"]]
    assert all(asset.status == Asset.Status.COMPLETED for asset in assets)
    seeds = {asset.generation_config["seed"] for asset in assets}
    assert len(seeds) == 3
    graphs = [emulators["comfyui"].prompts[asset.external_task_id].graph for asset in assets]
    assert {graph["9"]["inputs"]["seed"] for graph in graphs} == seeds


def test_a_comfyui_run_longer_than_the_first_poll_is_followed_to_the_end(api, box, emulators, celery_worker, bucket):
    """The first poll (2 s) finds it running: progress is recorded and the next poll is scheduled."""
    model = install("comfyui", emulators["comfyui"].base_url)
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))
    emulators["comfyui"].task_seconds = 4.0
    try:
        asset = wait_for(generate(api, box, model, parent_asset_id=parent["id"])["id"])
    finally:
        emulators["comfyui"].task_seconds = 0.3

    assert asset.status == Asset.Status.COMPLETED, asset.error_message
    assert asset.polls_sent >= 2 and (asset.width, asset.height) == SOURCE_SIZE


def test_a1111_progress_is_copied_onto_the_asset_while_it_generates(api, box, emulators, celery_worker, bucket):
    model = install("a1111", emulators["a1111"].base_url)
    parent = upload(api, box, samples.png_bytes(*SOURCE_SIZE))
    emulators["a1111"].task_seconds = 6.0
    try:
        asset_id = generate(api, box, model, parent_asset_id=parent["id"])["id"]
        seen = set()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            asset = Asset.objects.get(pk=asset_id)
            if asset.stage == Asset.Stage.SUBMITTING:
                seen.add(asset.progress)
            if asset.status in (Asset.Status.COMPLETED, Asset.Status.FAILED):
                break
            time.sleep(0.2)
    finally:
        emulators["a1111"].task_seconds = 0.3

    assert asset.status == Asset.Status.COMPLETED, asset.error_message
    assert any(value is not None and 0 < value < 1 for value in seen), seen
    assert asset.progress == 1.0
