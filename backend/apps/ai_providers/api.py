"""AI model catalogue: what a client may generate with and which options it takes.

Never exposes a provider's key, base URL, settings or the raw request schema.
"""

from rest_framework import generics, serializers

from .models import AIModel
from .selectors import ai_model_list_active


class AIModelSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.name", read_only=True)
    sandbox = serializers.BooleanField(
        source="provider.is_sandbox", read_only=True, help_text="A local emulator: results are marked SANDBOX."
    )

    class Meta:
        model = AIModel
        fields = ["id", "name", "provider", "sandbox", "model_type", "parameters_schema"]
        read_only_fields = fields


class _ActiveModels:
    serializer_class = AIModelSerializer
    filterset_fields = ["model_type"]

    def get_queryset(self):
        return ai_model_list_active()


class AIModelListView(_ActiveModels, generics.ListAPIView):
    """Active AI models, with the options each accepts in ``generation_config``."""


class AIModelDetailView(_ActiveModels, generics.RetrieveAPIView):
    """One active AI model."""
