from django.apps import AppConfig


class GenerationsConfig(AppConfig):
    """The generation lifecycle: start, submit, poll, callbacks, store, sweep. It owns no models: it moves assets."""

    name = "apps.generations"
    label = "generations"
