from django.apps import AppConfig


class ComfyUIConfig(AppConfig):
    """The ComfyUI provider: adapter, presets and setup command (an app so that its command is found)."""

    name = "apps.ai_providers.providers.comfyui"
    label = "provider_comfyui"
    verbose_name = "ComfyUI"
