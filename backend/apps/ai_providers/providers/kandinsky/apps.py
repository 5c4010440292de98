from django.apps import AppConfig


class KandinskyConfig(AppConfig):
    """The Kandinsky 2.2 service provider: adapter, presets and setup command (an app so that its command is found)."""

    name = "apps.ai_providers.providers.kandinsky"
    label = "provider_kandinsky"
    verbose_name = "Kandinsky 2.2 service"
