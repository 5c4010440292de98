from django.apps import AppConfig


class AiProvidersConfig(AppConfig):
    name = "apps.ai_providers"
    label = "ai_providers"
    verbose_name = "AI providers"
