from django.core.management.base import BaseCommand

from apps.ai_providers.cli import install
from apps.ai_providers.providers.kie.services import kie_catalogue_install


class Command(BaseCommand):
    help = "Create or update the Kie.ai provider and its preset models (every endpoint family). Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--api-key", required=True, help="Kie.ai API key (stored write-only).")
        parser.add_argument("--base-url", default="https://api.kie.ai", help="API base URL (an emulator, say).")
        parser.add_argument("--name", default="Kie.ai", help="Provider name (default: Kie.ai).")
        parser.add_argument("--webhook-hmac-key", default=None, help="Verify signed callbacks with this key.")

    def handle(self, *args, **options):
        install(
            self,
            kie_catalogue_install,
            name=options["name"],
            base_url=options["base_url"],
            api_key=options["api_key"],
            webhook_hmac_key=options["webhook_hmac_key"],
        )
