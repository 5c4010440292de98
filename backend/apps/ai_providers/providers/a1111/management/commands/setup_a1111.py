from django.core.management.base import BaseCommand, CommandError

from apps.ai_providers.cli import install
from apps.ai_providers.providers.a1111.presets import A1111_MODELS
from apps.ai_providers.services import provider_install


class Command(BaseCommand):
    help = "Register an AUTOMATIC1111 / Forge server with txt2img, img2img, inpainting and upscaling. Idempotent."

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-url", required=True, help="The WebUI started with --api, e.g. http://127.0.0.1:7860"
        )
        parser.add_argument("--auth", default=None, help="user:password when the WebUI runs with --api-auth.")
        parser.add_argument("--name", default="AUTOMATIC1111", help="Provider name (default: AUTOMATIC1111).")

    def handle(self, *args, **options):
        if options["auth"] is not None and ":" not in options["auth"]:
            raise CommandError("--auth must be user:password, as given to the WebUI's --api-auth")
        install(
            self,
            provider_install,
            name=options["name"],
            kind="a1111",
            base_url=options["base_url"],
            api_key=options["auth"],
            models=A1111_MODELS,
        )
