"""The img2img rules (docs/providers.md) as ``generations.start`` applies them before anything is queued."""

import pytest
from django.core.exceptions import ValidationError

from apps.ai_providers.providers.a1111.presets import A1111_MODELS
from apps.ai_providers.providers.comfyui.presets import comfyui_template_models
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from apps.ai_providers.services import provider_install
from apps.assets.models import Asset
from apps.generations.lifecycle import redact
from apps.generations.start import generation_options, generation_start
from tests.support.factories import AssetFactory, BoxFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def a1111():
    provider, _ = provider_install(name="A1111", kind="a1111", base_url="http://127.0.0.1:9", models=A1111_MODELS)
    return provider.models


def source(box, **fields) -> Asset:
    values = {
        "status": Asset.Status.COMPLETED,
        "file": "boxes/source.png",
        "mime_type": "image/png",
        "width": 640,
        "height": 480,
        **fields,
    }
    return AssetFactory(box=box, **values)


def test_width_and_height_become_the_sources_and_a_different_request_is_noted(a1111):
    model = a1111.get(name="Stable Diffusion img2img")

    options, ignored = generation_options(model, {"width": 1024, "height": 480}, source_size=(640, 480))

    assert (options["width"], options["height"]) == (640, 480)
    assert ignored == {"width": 1024, "reason": "img2img keeps the source image's size, 640×480"}


def test_a_model_without_size_options_ignores_them_too():
    provider, _ = provider_install(
        name="ComfyUI", kind="comfyui", base_url="http://127.0.0.1:9", models=comfyui_template_models()
    )
    model = provider.models.get(name="Flux img2img")

    options, ignored = generation_options(model, {"width": 1024}, source_size=(640, 480))

    assert "width" not in options and ignored["width"] == 1024


def test_a_resizing_model_keeps_its_own_size_options(a1111):
    model = a1111.get(name="Upscale (extras)")

    options, ignored = generation_options(model, {"scale": 4}, source_size=(640, 480))

    assert options["scale"] == 4 and ignored == {}


def test_denoise_defaults_to_0_65_only_for_img2img_and_only_when_the_model_has_no_default(a1111):
    img2img = a1111.get(name="Stable Diffusion img2img")
    comfy, _ = provider_install(
        name="ComfyUI", kind="comfyui", base_url="http://127.0.0.1:9", models=comfyui_template_models()
    )
    flux = comfy.models.get(name="Flux img2img")
    flux.parameters_schema["denoise"]["default"] = 0.8

    assert generation_options(img2img, {}, source_size=(64, 64))[0]["denoising_strength"] == 0.65
    assert (
        generation_options(img2img, {"denoising_strength": 0.3}, source_size=(64, 64))[0]["denoising_strength"] == 0.3
    )
    assert generation_options(flux, {}, source_size=(64, 64))[0]["denoise"] == 0.8
    assert "denoising_strength" not in generation_options(img2img, {}, source_size=None)[0]  # not img2img


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"mime_type": "image/gif"}, "PNG, JPEG or WEBP"),
        ({"width": 5000, "height": 100}, "At most 4096×4096"),
        ({"status": Asset.Status.PROCESSING}, "not COMPLETED"),
    ],
)
def test_the_source_is_checked_before_anything_is_queued(a1111, fields, message):
    box = BoxFactory()
    parent = source(box, **fields)

    with pytest.raises(ValidationError) as caught:
        generation_start(box=box, model=a1111.get(name="Stable Diffusion img2img"), prompt="x", parent=parent)

    assert message in str(caught.value.message_dict["parent_asset_id"])
    assert not Asset.objects.filter(ai_model__isnull=False).exists()


def test_masks_are_checked(a1111):
    box = BoxFactory()
    parent, mask = source(box), source(box)

    with pytest.raises(ValidationError, match="paints into a mask"):
        generation_start(box=box, model=a1111.get(name="Stable Diffusion inpainting"), prompt="x", parent=parent)
    with pytest.raises(ValidationError, match="takes no mask"):
        generation_start(
            box=box, model=a1111.get(name="Stable Diffusion img2img"), prompt="x", parent=parent, mask=mask
        )
    with pytest.raises(ValidationError, match="must have the source image's size"):
        generation_start(
            box=box,
            model=a1111.get(name="Stable Diffusion inpainting"),
            prompt="x",
            parent=parent,
            mask=source(box, width=64, height=64),
        )

    [asset] = generation_start(
        box=box, model=a1111.get(name="Stable Diffusion inpainting"), prompt="x", parent=parent, mask=mask
    )
    assert asset.metadata == {"mask_asset_id": mask.pk}


def test_a_prompt_over_the_models_limit_is_refused():
    provider, _ = provider_install(
        name="Kandinsky", kind="kandinsky", base_url="http://127.0.0.1:9", models=KANDINSKY_MODELS
    )

    with pytest.raises(ValidationError) as caught:
        generation_start(box=BoxFactory(), model=provider.models.get(name="Kandinsky 2.2"), prompt="x" * 2001)

    assert "At most 2000 characters" in str(caught.value.message_dict["prompt"])


def test_inline_files_are_stored_as_size_and_digest():
    image = "iVBORw0KGgo" + "A" * 2000

    stored = redact({"init_images": [image], "prompt": "short text stays"}, [])

    assert stored["prompt"] == "short text stays"
    assert stored["init_images"][0].startswith("[base64 file: 1508 bytes, sha256 of the text ")
    assert redact({"init_images": [image]}, []) == {"init_images": stored["init_images"]}


def test_synchronous_providers_submit_on_the_gpu_queue(settings):
    from apps.generations.lifecycle import submit_queue

    settings.GENBOX_GPU_QUEUE = "gpu-default"
    models = {}
    for kind, presets in (("a1111", A1111_MODELS), ("kandinsky", KANDINSKY_MODELS), ("comfyui", None)):
        provider, _ = provider_install(
            name=kind, kind=kind, base_url="http://127.0.0.1:9", models=presets or comfyui_template_models()
        )
        models[kind] = provider.models.first()

    assert submit_queue(models["a1111"]) == submit_queue(models["kandinsky"]) == "gpu-default"
    assert submit_queue(models["comfyui"]) is None  # asynchronous: the default queue
    models["a1111"].provider.settings = {"queue": "gpu-1"}  # a second GPU with its own worker
    assert submit_queue(models["a1111"]) == "gpu-1"


def test_a_source_larger_than_the_models_size_options_is_refused(a1111):
    box = BoxFactory()

    with pytest.raises(ValidationError) as caught:
        generation_start(
            box=box, model=a1111.get(name="Stable Diffusion img2img"), prompt="x", parent=source(box, width=3000)
        )

    assert "up to 2048 pixels width" in str(caught.value.message_dict["parent_asset_id"])


def test_a_size_option_the_model_lacks_must_still_be_a_number():
    provider, _ = provider_install(
        name="ComfyUI", kind="comfyui", base_url="http://127.0.0.1:9", models=comfyui_template_models()
    )

    with pytest.raises(ValidationError) as caught:
        generation_options(provider.models.get(name="Flux img2img"), {"width": {"a": 1}}, source_size=(64, 64))

    assert "generation_config.width" in caught.value.message_dict


def test_data_urls_are_stored_as_digests_and_short_secrets_do_not_mangle_text():
    data_url = "data:image/png;base64," + "A" * 2000

    stored = redact({"image": data_url, "prompt": "a pwny", "key": "x"}, ["pw", "long-secret-value"])

    assert stored["image"].startswith("[base64 file:")
    assert stored["prompt"] == "a pwny"
    assert redact({"prompt": "uses long-secret-value"}, ["long-secret-value"]) == {"prompt": "uses [redacted]"}


def test_provider_urls_keep_credentials_out():
    from apps.ai_providers.models import validate_server_url

    with pytest.raises(ValidationError, match="Leave credentials out"):
        validate_server_url("http://user:secret@gpu:7860")
    validate_server_url("http://stable_diffusion:7860")  # a compose service name


def test_a_gpu_generation_may_wait_for_its_turn_and_says_so_when_it_waited_too_long(a1111, settings):
    from datetime import timedelta

    from django.utils import timezone

    from apps.generations.lifecycle import sweep

    settings.GENBOX_GPU_QUEUE_WAIT_SECONDS = 7200
    box = BoxFactory()
    model = a1111.get(name="Stable Diffusion txt2img")

    [asset] = generation_start(box=box, model=model, prompt="x")

    waiting = (asset.deadline_at - timezone.now()).total_seconds()
    assert 7100 < waiting <= 7200  # not the model's 15 minutes: the run gets those when it starts
    Asset.objects.filter(pk=asset.pk).update(deadline_at=timezone.now() - timedelta(seconds=1))
    sweep()
    asset.refresh_from_db()
    assert asset.status == Asset.Status.FAILED
    assert asset.error_message.startswith("The generation did not start in time: still waiting for the GPU")
    assert "GENBOX_GPU_QUEUE_WAIT_SECONDS is 120 minutes" in asset.error_message
