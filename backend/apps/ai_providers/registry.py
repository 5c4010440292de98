"""Provider kinds: ``AIProvider.kind`` → the adapter that speaks that provider's protocol.

This table is the one list of kinds: the model field's choices (and so the admin's and the API's) are derived
from it, so a kind is offered only when an adapter exists. Each kind lives in ``providers/<kind>/``: its
adapter, presets, setup command and workflow files.
"""

from dataclasses import dataclass
from importlib import import_module

from .contract import Adapter


@dataclass(frozen=True)
class ProviderKind:
    label: str
    adapter: str  # "module:Class", imported on first use so a worker loads only what it needs


KINDS: dict[str, ProviderKind] = {
    "kie": ProviderKind("Kie.ai", "apps.ai_providers.providers.kie.adapter:KieAdapter"),
    "comfyui": ProviderKind("ComfyUI", "apps.ai_providers.providers.comfyui.adapter:ComfyUIAdapter"),
    "a1111": ProviderKind("AUTOMATIC1111 / Forge", "apps.ai_providers.providers.a1111.adapter:A1111Adapter"),
    "kandinsky": ProviderKind(
        "Kandinsky 2.2 service", "apps.ai_providers.providers.kandinsky.adapter:KandinskyAdapter"
    ),
}


def kind_choices() -> list[tuple[str, str]]:
    """``(kind, label)`` pairs for ``AIProvider.kind``."""
    return [(kind, entry.label) for kind, entry in KINDS.items()]


def adapter_class(kind: str) -> type[Adapter]:
    """The adapter class for providers of ``kind``; raises ``LookupError`` naming the kind when none exists."""
    entry = KINDS.get(kind)
    if entry is None:
        raise LookupError(f"No adapter for providers of kind '{kind}'.")
    module_name, class_name = entry.adapter.split(":")
    return getattr(import_module(module_name), class_name)


def get_adapter(provider) -> Adapter:
    """The adapter for ``provider``; raises ``LookupError`` naming the kind when none exists."""
    return adapter_class(provider.kind)(provider)
