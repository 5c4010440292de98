"""Provider adapters: ``AIProvider.kind`` → the class that speaks that provider's protocol."""

from importlib import import_module

from .base import Adapter

# kind → "module:Class", imported on first use so a worker loads only what it needs.
REGISTRY = {
    "kie": "apps.ai_providers.adapters.kie:KieAdapter",
    "comfyui": "apps.ai_providers.adapters.comfyui:ComfyUIAdapter",
    "a1111": "apps.ai_providers.adapters.a1111:A1111Adapter",
    "kandinsky": "apps.ai_providers.adapters.kandinsky:KandinskyAdapter",
}


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class for providers of ``kind``; raises ``LookupError`` naming the kind when none exists yet."""
    target = REGISTRY.get(kind)
    if target is None:
        raise LookupError(f"No adapter for providers of kind '{kind}' yet.")
    module_name, class_name = target.split(":")
    return getattr(import_module(module_name), class_name)


def get_adapter(provider) -> Adapter:
    """The adapter for ``provider``; raises ``LookupError`` naming the kind when none exists yet."""
    return adapter_class(provider.kind)(provider)
