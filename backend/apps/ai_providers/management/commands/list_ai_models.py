from django.core.management.base import BaseCommand

from apps.ai_providers.cli import all_models, model_table


class Command(BaseCommand):
    help = "List AI models: id, provider, name, type, active, endpoint."

    def handle(self, *args, **options):
        models = list(all_models())
        if not models:
            self.stdout.write("No AI models yet. Add some with: python manage.py setup_kie_ai --api-key KEY")
            return
        self.stdout.write(model_table(models))
