from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from apps.ai_providers import sandbox

from ._output import install_kie_catalogue


class Command(BaseCommand):
    help = "Register the sandbox emulators (run_sandbox) as providers with their models. Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--kie-url", default=f"http://127.0.0.1:{sandbox.KIE_DEFAULT_PORT}")
        parser.add_argument(
            "--upload-inputs",
            action="store_true",
            help="Send source images through the sandbox's upload API (when it cannot reach our storage).",
        )
        parser.add_argument(
            "--allow-production", action="store_true", help="Register even though DEBUG is off (staging, demos)."
        )

    def handle(self, *args, **options):
        if not settings.DEBUG and not options["allow_production"]:
            raise CommandError(
                "The sandbox is for development and DEBUG is off. Pass --allow-production to register it anyway."
            )
        install_kie_catalogue(
            self,
            name=sandbox.KIE_PROVIDER_NAME,
            base_url=options["kie_url"],
            api_key=sandbox.KIE_API_KEY,
            is_sandbox=True,
            extra_settings=(
                {"upload_inputs": True, "upload_base_url": options["kie_url"]} if options["upload_inputs"] else {}
            ),
        )
