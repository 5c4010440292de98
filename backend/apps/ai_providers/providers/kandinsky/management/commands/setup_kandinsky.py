from django.conf import settings
from django.core.management.base import BaseCommand

from apps.ai_providers.cli import install
from apps.ai_providers.providers.kandinsky.presets import KANDINSKY_MODELS
from apps.ai_providers.services import provider_install


class Command(BaseCommand):
    help = "Register the Kandinsky 2.2 service (services/kandinsky/) with txt2img and img2img. Idempotent."

    def add_arguments(self, parser):
        parser.add_argument(
            "--base-url", default=None, help="The service (default: KANDINSKY_SERVICE_URL, http://localhost:8002)."
        )
        parser.add_argument("--api-key", default=None, help="The service's KANDINSKY_API_KEY, if it has one.")
        parser.add_argument("--name", default="Kandinsky 2.2", help="Provider name (default: Kandinsky 2.2).")

    def handle(self, *args, **options):
        install(
            self,
            provider_install,
            name=options["name"],
            kind="kandinsky",
            base_url=options["base_url"] or settings.KANDINSKY_SERVICE_URL,
            api_key=options["api_key"],
            models=KANDINSKY_MODELS,
        )
