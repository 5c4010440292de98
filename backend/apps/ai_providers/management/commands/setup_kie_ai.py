from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction

from apps.ai_providers.kie_catalogue import KIE_MODELS, model_fields
from apps.ai_providers.models import AIModel, AIProvider

from ._output import model_table


class Command(BaseCommand):
    help = "Create or update the Kie.ai provider and its preset models (every endpoint family). Idempotent."

    def add_arguments(self, parser):
        parser.add_argument("--api-key", required=True, help="Kie.ai API key (stored write-only).")
        parser.add_argument("--base-url", default="https://api.kie.ai", help="API base URL (an emulator, say).")
        parser.add_argument("--name", default="Kie.ai", help="Provider name (default: Kie.ai).")
        parser.add_argument("--webhook-hmac-key", default=None, help="Verify signed callbacks with this key.")

    @transaction.atomic
    def handle(self, *args, **options):
        provider, created = AIProvider.objects.get_or_create(
            name=options["name"],
            defaults={"kind": AIProvider.Kind.KIE, "base_url": options["base_url"], "api_key": options["api_key"]},
        )
        wanted_settings = dict(provider.settings or {})
        if options["webhook_hmac_key"] is not None:
            wanted_settings["webhook_hmac_key"] = options["webhook_hmac_key"]
        changes = {
            "kind": AIProvider.Kind.KIE,
            "base_url": options["base_url"],
            "api_key": options["api_key"],
            "settings": wanted_settings,
        }
        provider_changed = _apply(provider, changes)
        if created:
            self.stdout.write(f"Created provider {provider.name} ({provider.base_url})")
        elif provider_changed:
            self.stdout.write(f"Updated provider {provider.name}: {', '.join(provider_changed)}")

        for entry in KIE_MODELS:
            fields = model_fields(entry)
            model = AIModel.objects.filter(provider=provider, name=entry["name"]).first()
            if model is None:
                model = AIModel(provider=provider, name=entry["name"], **fields)
                _save(model)
                self.stdout.write(f"Created model {model.name}")
            else:
                changed = _apply(model, fields)
                if changed:
                    self.stdout.write(f"Updated model {model.name}: {', '.join(changed)}")
        self.stdout.write("")
        self.stdout.write(model_table(provider.models.select_related("provider").order_by("pk")))


def _apply(instance, values: dict) -> list[str]:
    """Set the values that differ and save only then; returns the changed field names."""
    changed = [field for field, value in values.items() if getattr(instance, field) != value]
    if changed:
        for field in changed:
            setattr(instance, field, values[field])
        _save(instance)
    return changed


def _save(instance) -> None:
    try:
        instance.full_clean()
    except ValidationError as exc:
        raise CommandError(f"{instance}: {exc.message_dict}") from exc
    instance.save()
