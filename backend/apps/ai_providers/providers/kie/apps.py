from django.apps import AppConfig


class KieConfig(AppConfig):
    """The Kie.ai provider: adapter, presets and setup command (an app so that its command is found)."""

    name = "apps.ai_providers.providers.kie"
    label = "provider_kie"
    verbose_name = "Kie.ai"
