"""Everything that reads assets for the API. A user only ever sees assets in their own boxes."""

from django.db.models import QuerySet

from .models import Asset


def asset_list_for_user(*, user) -> QuerySet[Asset]:
    return Asset.objects.filter(box__owner=user).select_related("box", "ai_model")


def asset_list_for_box(*, box) -> QuerySet[Asset]:
    return Asset.objects.filter(box=box).select_related("ai_model")
