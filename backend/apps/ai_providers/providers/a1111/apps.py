from django.apps import AppConfig


class A1111Config(AppConfig):
    """The AUTOMATIC1111 / Forge provider: adapter, presets and setup command (an app so that its command is found)."""

    name = "apps.ai_providers.providers.a1111"
    label = "provider_a1111"
    verbose_name = "AUTOMATIC1111 / Forge"
