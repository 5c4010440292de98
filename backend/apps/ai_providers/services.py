"""Everything that writes providers and models (generations are written by ``pipeline``)."""

from django.db import transaction

from .kie_catalogue import KIE_MODELS, model_fields
from .models import AIModel, AIProvider


@transaction.atomic
def kie_catalogue_install(
    *,
    name: str,
    base_url: str,
    api_key: str,
    webhook_hmac_key: str | None = None,
    is_sandbox: bool = False,
    extra_settings: dict | None = None,
) -> tuple[AIProvider, list[str]]:
    """Create or update a Kie.ai provider and its preset models; returns it and what changed, in words.

    Idempotent: a second call with the same arguments changes nothing (no row is saved). Models edited by
    hand are put back to the preset. Raises ``ValidationError`` if a preset does not pass the model checks.
    """
    provider = AIProvider.objects.filter(name=name).first()
    settings = dict(provider.settings or {}) if provider else {}
    if webhook_hmac_key is not None:
        settings["webhook_hmac_key"] = webhook_hmac_key
    settings.update(extra_settings or {})
    values = {
        "kind": AIProvider.Kind.KIE,
        "base_url": base_url,
        "api_key": api_key,
        "settings": settings,
        "is_sandbox": is_sandbox,
    }
    report = []
    if provider is None:
        provider = AIProvider(name=name, **values)
        _save(provider)
        report.append(f"Created provider {name} ({base_url})")
    else:
        changed = _apply(provider, values)
        if changed:
            report.append(f"Updated provider {name}: {', '.join(changed)}")
    for entry in KIE_MODELS:
        fields = model_fields(entry)
        model = AIModel.objects.filter(provider=provider, name=entry["name"]).first()
        if model is None:
            _save(AIModel(provider=provider, name=entry["name"], **fields))
            report.append(f"Created model {entry['name']}")
        else:
            changed = _apply(model, fields)
            if changed:
                report.append(f"Updated model {entry['name']}: {', '.join(changed)}")
    return provider, report


def _apply(instance, values: dict) -> list[str]:
    """Set the values that differ and save only then; returns the changed field names."""
    changed = [field for field, value in values.items() if getattr(instance, field) != value]
    if changed:
        for field in changed:
            setattr(instance, field, values[field])
        _save(instance)
    return changed


def _save(instance) -> None:
    instance.full_clean()
    instance.save()
