"""Everything that reads AI models for the API."""

from django.db.models import QuerySet

from .models import AIModel


def ai_model_list_active() -> QuerySet[AIModel]:
    """Models a user may generate with: active, on an active provider."""
    return AIModel.objects.filter(is_active=True, provider__is_active=True).select_related("provider")
