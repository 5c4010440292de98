"""The sandbox newcomers use: registering it, and the demo's quickstart walk against the real worker."""

import io

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.core.management.base import CommandError

import sandbox
from apps.ai_providers.models import AIModel, AIProvider
from apps.ai_providers.providers.a1111.presets import A1111_MODELS
from apps.ai_providers.providers.comfyui.presets import COMFYUI_TEMPLATES
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from apps.ai_providers.providers.kie.presets import KIE_MODELS
from apps.assets.media.samples import sample_png
from apps.assets.models import Asset
from sandbox.comfyui import ComfyUIEmulator
from sandbox.demo import DemoFailed, walk
from sandbox.kie import KieEmulator


def setup_sandbox(*args) -> str:
    out = io.StringIO()
    call_command("setup_sandbox", *args, stdout=out)
    return out.getvalue()


SANDBOX_PROVIDERS = {
    sandbox.KIE_PROVIDER_NAME: ("kie", len(KIE_MODELS)),
    sandbox.COMFYUI_PROVIDER_NAME: ("comfyui", len(COMFYUI_TEMPLATES)),
    sandbox.A1111_PROVIDER_NAME: ("a1111", len(A1111_MODELS)),
    sandbox.KANDINSKY_PROVIDER_NAME: ("kandinsky", len(KANDINSKY_MODELS)),
}


@pytest.mark.django_db
def test_setup_sandbox_registers_labelled_providers_and_is_idempotent():
    first = setup_sandbox("--kie-url", "http://127.0.0.1:9999", "--allow-production")
    before = {m.pk: m.updated_at for m in AIModel.objects.all()}

    second = setup_sandbox("--kie-url", "http://127.0.0.1:9999", "--allow-production")

    providers = {p.name: p for p in AIProvider.objects.all()}
    assert {name: (p.kind, p.models.count()) for name, p in providers.items()} == SANDBOX_PROVIDERS
    assert all(p.is_sandbox for p in providers.values())
    assert providers[sandbox.KIE_PROVIDER_NAME].api_key == "sandbox-key"
    assert providers[sandbox.A1111_PROVIDER_NAME].api_key == ":".join(sandbox.A1111_AUTH)
    assert providers[sandbox.COMFYUI_PROVIDER_NAME].base_url == f"http://127.0.0.1:{sandbox.COMFYUI_DEFAULT_PORT}"
    assert first.count("Created provider") == 4 and "Created" not in second and "Updated" not in second
    assert {m.pk: m.updated_at for m in AIModel.objects.all()} == before


@pytest.mark.django_db
def test_setup_sandbox_refuses_when_debug_is_off(settings):
    settings.DEBUG = False

    with pytest.raises(CommandError, match="DEBUG is off"):
        setup_sandbox()

    assert not AIProvider.objects.exists()


@pytest.mark.django_db
def test_sandbox_models_are_labelled_in_the_api(api):
    setup_sandbox("--allow-production")

    models = api.get("/api/ai-models/", {"page_size": 100}).json()["results"]

    assert models and all(m["sandbox"] for m in models)
    assert {m["provider"] for m in models} == set(SANDBOX_PROVIDERS)


@pytest.fixture
def sandbox_emulator():
    with KieEmulator(api_key=sandbox.KIE_API_KEY, task_seconds=1.0, rate_limit=None) as emulator:
        yield emulator


@pytest.fixture
def comfyui_sandbox():
    with ComfyUIEmulator(task_seconds=0.5) as emulator:
        yield emulator


@pytest.mark.django_db(transaction=True)
def test_the_demo_walk_completes_against_the_real_worker(
    sandbox_emulator, comfyui_sandbox, celery_worker, live_server, bucket
):
    setup_sandbox(
        "--kie-url", sandbox_emulator.base_url, "--comfyui-url", comfyui_sandbox.base_url, "--allow-production"
    )
    get_user_model().objects.create_user("demo", password="demo-password-123")
    lines = []

    assets = walk(
        live_server.url, username="demo", password="demo-password-123", image=sample_png(), out=lines.append, timeout=60
    )

    upload, image, video = (Asset.objects.get(pk=assets[role]["id"]) for role in ("upload", "image", "video"))
    assert (upload.source, image.parent_asset, video.parent_asset) == ("UPLOAD", upload, image)
    assert (image.status, image.mime_type, video.status, video.mime_type) == (
        "COMPLETED",
        "image/png",
        "COMPLETED",
        "video/mp4",
    )
    output = "\n".join(lines)
    assert "curl -X POST" in output and "6. Generate a video from that image" in output
    task = sandbox_emulator.tasks[video.external_task_id]
    assert task.inputs and task.inputs[0].status == 200, "the sandbox fetched the generated image"
    local = Asset.objects.get(pk=assets["local"]["id"])
    assert (local.status, local.parent_asset, local.width, local.height) == ("COMPLETED", upload, 768, 512)
    assert (
        comfyui_sandbox.prompts[local.external_task_id].graph["9"]["inputs"]["seed"] == local.generation_config["seed"]
    )


@pytest.mark.django_db(transaction=True)
def test_the_demo_walk_names_the_failing_step(live_server):
    get_user_model().objects.create_user("demo", password="demo-password-123")

    with pytest.raises(DemoFailed, match="4. List the AI models: no sandbox model"):
        walk(live_server.url, username="demo", password="demo-password-123", image=sample_png(), out=lambda _: None)
