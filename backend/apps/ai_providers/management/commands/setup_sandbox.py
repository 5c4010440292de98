from django.conf import settings
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError

from apps.ai_providers import sandbox
from apps.ai_providers.services import kie_catalogue_install

from ._output import model_table


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
        try:
            provider, report = kie_catalogue_install(
                name=sandbox.KIE_PROVIDER_NAME,
                base_url=options["kie_url"],
                api_key=sandbox.KIE_API_KEY,
                is_sandbox=True,
                extra_settings=(
                    {"upload_inputs": True, "upload_base_url": options["kie_url"]} if options["upload_inputs"] else {}
                ),
            )
        except ValidationError as exc:
            raise CommandError(f"a preset failed the model checks: {exc}") from exc
        for line in report:
            self.stdout.write(line)
        self.stdout.write("")
        self.stdout.write(model_table(provider.models.select_related("provider").order_by("pk")))
