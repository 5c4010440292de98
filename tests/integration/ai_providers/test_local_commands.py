"""setup_comfyui, setup_a1111 and setup_kandinsky as an operator runs them."""

import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from apps.ai_providers.models import AIModel, AIProvider
from apps.ai_providers.providers.a1111.presets import A1111_MODELS
from apps.ai_providers.providers.comfyui.presets import COMFYUI_TEMPLATES
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from sandbox.comfyui import ComfyUIEmulator

pytestmark = pytest.mark.django_db

SCALE_WORKFLOW = {
    "1": {"class_type": "LoadImage", "inputs": {"image": "<<image_name>>"}},
    "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "<<prefix|default('inv')>>"}},
}


def run(*args) -> str:
    out = io.StringIO()
    call_command(*args, stdout=out)
    return out.getvalue()


def write(tmp_path, name: str, value) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(value))
    return str(path)


def test_setup_comfyui_registers_the_templates_and_checks_the_server_once_idempotent():
    with ComfyUIEmulator() as emulator:
        first = run("setup_comfyui", "--base-url", emulator.base_url)
        before = {m.pk: m.updated_at for m in AIModel.objects.all()}
        second = run("setup_comfyui", "--base-url", emulator.base_url)

    provider = AIProvider.objects.get(name="ComfyUI")
    assert provider.kind == "comfyui"
    assert sorted(provider.models.values_list("name", flat=True)) == sorted(name for name, *_ in COMFYUI_TEMPLATES)
    assert "Connection: ComfyUI 0.3.60 reachable" in first
    assert "Nothing to change." in second and {m.pk: m.updated_at for m in AIModel.objects.all()} == before


def test_setup_comfyui_registers_a_workflow_file_with_its_options(tmp_path):
    workflow = write(tmp_path, "invert.json", SCALE_WORKFLOW)

    output = run("setup_comfyui", "--base-url", "http://127.0.0.1:9", "--workflow", workflow, "--name", "Invert")

    model = AIModel.objects.get(name="Invert")
    assert model.request_schema == SCALE_WORKFLOW
    assert model.response_mapping == {"output_node": "3"}
    assert model.parameters_schema == {"prefix": {"type": "string", "default": "inv"}}
    assert "not reachable now" in output  # registered all the same


def test_setup_comfyui_refuses_a_placeholder_nobody_provides(tmp_path):
    broken = {**SCALE_WORKFLOW, "2": {"class_type": "ImageBlur", "inputs": {"image": ["1", 0], "sigma": "<<sigma>>"}}}

    with pytest.raises(CommandError, match=r"<<sigma>> without a default.*--parameters"):
        run("setup_comfyui", "--base-url", "http://x", "--workflow", write(tmp_path, "w.json", broken), "--name", "B")
    parameters = write(tmp_path, "p.json", {"sigma": {"type": "number", "min": 0.1, "max": 10, "default": 1.0}})
    run(
        "setup_comfyui",
        "--base-url",
        "http://x",
        "--workflow",
        write(tmp_path, "w.json", broken),
        "--name",
        "Blur",
        "--parameters",
        parameters,
    )
    assert AIModel.objects.get(name="Blur").parameters_schema["sigma"]["max"] == 10


def test_setup_comfyui_explains_ui_workflows_and_ambiguous_outputs(tmp_path):
    ui_format = write(tmp_path, "ui.json", {"nodes": [], "links": []})
    two_outputs = write(
        tmp_path,
        "two.json",
        {**SCALE_WORKFLOW, "4": {"class_type": "SaveImage", "inputs": {"images": ["1", 0], "filename_prefix": "x"}}},
    )

    with pytest.raises(CommandError, match="export it in API format"):
        run("setup_comfyui", "--base-url", "http://x", "--workflow", ui_format, "--name", "UI")
    with pytest.raises(CommandError, match="pass --output-node"):
        run("setup_comfyui", "--base-url", "http://x", "--workflow", two_outputs, "--name", "Two")
    run("setup_comfyui", "--base-url", "http://x", "--workflow", two_outputs, "--name", "Two", "--output-node", "4")
    assert AIModel.objects.get(name="Two").response_mapping == {"output_node": "4"}
    assert not AIModel.objects.filter(name="UI").exists()


def test_a_comfyui_model_must_name_an_existing_output_node():
    run("setup_comfyui", "--base-url", "http://127.0.0.1:9")
    model = AIModel.objects.get(name="Flux txt2img")
    model.response_mapping = {"output_node": "99"}

    with pytest.raises(Exception, match="not a node of the workflow"):
        model.full_clean()


def test_setup_a1111_and_kandinsky_register_their_presets(settings):
    settings.KANDINSKY_SERVICE_URL = "http://kandinsky.test:8002"

    output = run("setup_a1111", "--base-url", "http://a1111.test:7860", "--auth", "me:pa55word")
    run("setup_kandinsky")

    a1111 = AIProvider.objects.get(name="AUTOMATIC1111")
    kandinsky = AIProvider.objects.get(name="Kandinsky 2.2")
    assert (a1111.kind, a1111.api_key, a1111.models.count()) == ("a1111", "me:pa55word", len(A1111_MODELS))
    assert (kandinsky.base_url, kandinsky.models.count()) == ("http://kandinsky.test:8002", len(KANDINSKY_MODELS))
    assert "pa55word" not in output
    assert a1111.models.get(name="Upscale (extras)").resizes_source


def test_host_names_without_a_dot_are_accepted_and_bad_urls_are_not():
    """Compose service names and LAN machine names: the README's compose commands must work."""
    run(
        "setup_sandbox",
        "--kie-url",
        "http://sandbox:8700",
        "--comfyui-url",
        "http://sandbox:8701",
        "--a1111-url",
        "http://gpu-box:7860",
        "--kandinsky-url",
        "http://kandinsky-service:8002",
        "--allow-production",
    )

    assert AIProvider.objects.filter(base_url="http://kandinsky-service:8002").exists()
    with pytest.raises(CommandError, match="base_url"):
        run("setup_a1111", "--base-url", "ftp://gpu-box")


def test_a_provider_name_keeps_its_kind_and_a1111_auth_needs_a_password():
    run("setup_comfyui", "--base-url", "http://127.0.0.1:9")

    with pytest.raises(CommandError, match="is a ComfyUI provider; choose another name"):
        run("setup_a1111", "--base-url", "http://gpu:7860", "--name", "ComfyUI")
    with pytest.raises(CommandError, match="user:password"):
        run("setup_a1111", "--base-url", "http://gpu:7860", "--auth", "just-a-password")

    assert AIProvider.objects.get(name="ComfyUI").kind == "comfyui"
    assert not AIProvider.objects.filter(kind="a1111").exists()


def test_setup_comfyui_refuses_parameters_that_are_not_an_object(tmp_path):
    workflow = write(tmp_path, "w.json", SCALE_WORKFLOW)

    with pytest.raises(CommandError, match="parameters must be a JSON object"):
        run(
            "setup_comfyui",
            "--base-url",
            "http://x",
            "--workflow",
            workflow,
            "--name",
            "P",
            "--parameters",
            write(tmp_path, "p.json", [1, 2]),
        )
    with pytest.raises(CommandError, match="not an API-format workflow"):
        run("setup_comfyui", "--base-url", "http://x", "--workflow", write(tmp_path, "n.json", 42), "--name", "N")
