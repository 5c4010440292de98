import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from apps.ai_providers.cli import install
from apps.ai_providers.contract import ProviderError
from apps.ai_providers.models import AIProvider
from apps.ai_providers.providers.comfyui.presets import (
    COMFYUI_WORKFLOWS,
    WorkflowError,
    comfyui_model_fields,
    comfyui_template_models,
    load_workflow,
)
from apps.ai_providers.registry import get_adapter
from apps.ai_providers.services import provider_install


class Command(BaseCommand):
    help = (
        "Register a ComfyUI server and a workflow (API format, with <<var>> placeholders) as a model. "
        "Without --workflow, registers the shipped templates. Idempotent."
    )

    def add_arguments(self, parser):
        parser.add_argument("--base-url", required=True, help="The ComfyUI server, e.g. http://127.0.0.1:8188")
        parser.add_argument("--workflow", help=f"API-format workflow file. Templates: {COMFYUI_WORKFLOWS}")
        parser.add_argument("--name", help="Model name (required with --workflow).")
        parser.add_argument("--type", default="IMAGE", choices=["IMAGE", "VIDEO"], help="What the workflow makes.")
        parser.add_argument("--output-node", help="Id of the node whose output is the result (default: the only one).")
        parser.add_argument("--parameters", help="JSON file describing options (parameters_schema), merged in.")
        parser.add_argument(
            "--resizes", action="store_true", help="img2img output size is set by the workflow, not the source."
        )
        parser.add_argument("--provider-name", default="ComfyUI", help="Provider name (default: ComfyUI).")
        parser.add_argument("--api-key", default=None, help="Bearer token, for a server behind an auth proxy.")

    def handle(self, *args, **options):
        try:
            models = comfyui_template_models() if not options["workflow"] else [self._workflow_model(options)]
        except WorkflowError as exc:
            raise CommandError(str(exc)) from exc
        install(
            self,
            provider_install,
            name=options["provider_name"],
            kind="comfyui",
            base_url=options["base_url"],
            api_key=options["api_key"],
            models=models,
        )
        provider = AIProvider.objects.get(name=options["provider_name"])
        try:
            self.stdout.write(f"\nConnection: {get_adapter(provider).check_connection()}")
        except ProviderError as exc:
            self.stdout.write(self.style.WARNING(f"\nConnection: not reachable now ({exc.message})"))

    def _workflow_model(self, options) -> dict:
        if not options["name"]:
            raise CommandError("--name is required with --workflow")
        declared = None
        if options["parameters"]:
            try:
                declared = json.loads(Path(options["parameters"]).read_text())
            except (OSError, ValueError) as exc:
                raise CommandError(f"--parameters: {exc}") from exc
        workflow = load_workflow(Path(options["workflow"]))
        return {
            "name": options["name"],
            **comfyui_model_fields(
                workflow,
                model_type=options["type"],
                chosen_output=options["output_node"],
                parameters=declared,
                resizes_source=options["resizes"],
            ),
        }
