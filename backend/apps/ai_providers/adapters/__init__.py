"""Provider adapters: ``AIProvider.kind`` → the class that speaks that provider's protocol."""

from importlib import import_module

from .base import Adapter

# kind → "module:Class", imported on first use so a worker loads only what it needs.
REGISTRY = {
    "kie": "apps.ai_providers.adapters.kie:KieAdapter",
}


def get_adapter(provider) -> Adapter:
    """The adapter for ``provider``; raises ``LookupError`` naming the kind when none exists yet."""
    target = REGISTRY.get(provider.kind)
    if target is None:
        raise LookupError(f"No adapter for providers of kind '{provider.kind}' yet.")
    module_name, class_name = target.split(":")
    return getattr(import_module(module_name), class_name)(provider)
