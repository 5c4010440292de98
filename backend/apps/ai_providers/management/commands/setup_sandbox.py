from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.ai_providers.cli import install
from apps.ai_providers.providers.a1111.presets import A1111_MODELS
from apps.ai_providers.providers.comfyui.presets import comfyui_template_models
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from apps.ai_providers.providers.kie.services import kie_catalogue_install
from apps.ai_providers.services import provider_install

from ._sandbox import load_sandbox


class Command(BaseCommand):
    help = (
        "Register the sandbox emulators (run_sandbox) as providers with their models: Kie.ai, ComfyUI, "
        "AUTOMATIC1111 and the Kandinsky service. Idempotent."
    )

    def add_arguments(self, parser):
        # Defaults are the ports run_sandbox listens on by default, on this machine.
        parser.add_argument("--kie-url", help="default: http://127.0.0.1:8700")
        parser.add_argument("--comfyui-url", help="default: http://127.0.0.1:8701")
        parser.add_argument("--a1111-url", help="default: http://127.0.0.1:8702")
        parser.add_argument("--kandinsky-url", help="default: http://127.0.0.1:8703")
        parser.add_argument(
            "--upload-inputs",
            action="store_true",
            help="Send source images through the Kie sandbox's upload API (when it cannot reach our storage).",
        )
        parser.add_argument(
            "--allow-production", action="store_true", help="Register even though DEBUG is off (staging, demos)."
        )

    def handle(self, *args, **options):
        if not settings.DEBUG and not options["allow_production"]:
            raise CommandError(
                "The sandbox is for development and DEBUG is off. Pass --allow-production to register it anyway."
            )
        sandbox = load_sandbox()
        for kind, port in sandbox.DEFAULT_PORTS.items():
            options[f"{kind}_url"] = options[f"{kind}_url"] or f"http://127.0.0.1:{port}"
        install(
            self,
            kie_catalogue_install,
            name=sandbox.KIE_PROVIDER_NAME,
            base_url=options["kie_url"],
            api_key=sandbox.KIE_API_KEY,
            is_sandbox=True,
            extra_settings=(
                {"upload_inputs": True, "upload_base_url": options["kie_url"]} if options["upload_inputs"] else {}
            ),
        )
        for name, kind, url, api_key, models in (
            (sandbox.COMFYUI_PROVIDER_NAME, "comfyui", "comfyui_url", None, comfyui_template_models()),
            (
                sandbox.A1111_PROVIDER_NAME,
                "a1111",
                "a1111_url",
                ":".join(sandbox.A1111_AUTH),
                A1111_MODELS,
            ),
            (sandbox.KANDINSKY_PROVIDER_NAME, "kandinsky", "kandinsky_url", None, KANDINSKY_MODELS),
        ):
            self.stdout.write("")
            install(
                self,
                provider_install,
                name=name,
                kind=kind,
                base_url=options[url],
                api_key=api_key,
                is_sandbox=True,
                models=models,
            )
