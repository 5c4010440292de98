"""Everything that writes providers and models (generations are written by ``apps.generations``)."""

from django.core.exceptions import ValidationError
from django.db import transaction

from .models import AIModel, AIProvider


@transaction.atomic
def provider_install(
    *,
    name: str,
    kind: str,
    base_url: str,
    api_key: str | None = None,
    settings: dict | None = None,
    is_sandbox: bool = False,
    models: list[dict],
) -> tuple[AIProvider, list[str]]:
    """Create or update a provider and the given models (``{"name", **AIModel fields}``); returns the
    provider and what changed, in words.

    Idempotent: a second call with the same arguments changes nothing (no row is saved). Models edited by
    hand are put back to the preset; other models of the provider are left alone. ``settings`` are merged
    into the provider's; ``api_key`` None keeps the stored key. Raises ``ValidationError`` if a model does
    not pass the model checks.
    """
    provider = AIProvider.objects.filter(name=name).first()
    merged_settings = {**(provider.settings or {} if provider else {}), **(settings or {})}
    values = {"kind": kind, "base_url": base_url, "settings": merged_settings, "is_sandbox": is_sandbox}
    if api_key is not None:
        values["api_key"] = api_key
    report = []
    if provider is None:
        provider = AIProvider(name=name, **values)
        _save(provider)
        report.append(f"Created provider {name} ({base_url})")
    elif provider.kind != kind:
        raise ValidationError(
            {"name": [f"Provider {name!r} is a {provider.get_kind_display()} provider; choose another name."]}
        )
    else:
        changed = _apply(provider, values)
        if changed:
            report.append(f"Updated provider {name}: {', '.join(changed)}")
    for entry in models:
        fields = {key: value for key, value in entry.items() if key != "name"}
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
