"""Installing the Kie.ai provider with its catalogue of preset models."""

from apps.ai_providers.models import AIProvider
from apps.ai_providers.services import provider_install

from .presets import KIE_MODELS, model_fields


def kie_catalogue_install(
    *,
    name: str,
    base_url: str,
    api_key: str,
    webhook_hmac_key: str | None = None,
    is_sandbox: bool = False,
    extra_settings: dict | None = None,
) -> tuple[AIProvider, list[str]]:
    """Create or update a Kie.ai provider and its preset models; see ``provider_install``."""
    settings = dict(extra_settings or {})
    if webhook_hmac_key is not None:
        settings["webhook_hmac_key"] = webhook_hmac_key
    return provider_install(
        name=name,
        kind="kie",
        base_url=base_url,
        api_key=api_key,
        settings=settings,
        is_sandbox=is_sandbox,
        models=[{"name": entry["name"], **model_fields(entry)} for entry in KIE_MODELS],
    )
