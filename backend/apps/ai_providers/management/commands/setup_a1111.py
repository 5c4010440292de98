from django.core.management.base import BaseCommand, CommandError

from apps.ai_providers.local_catalogue import A1111_MODELS
from apps.ai_providers.models import AIProvider
from apps.ai_providers.services import provider_install

from ._output import install


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
            kind=AIProvider.Kind.A1111,
            base_url=options["base_url"],
            api_key=options["auth"],
            models=A1111_MODELS,
        )
